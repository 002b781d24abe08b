"""`imgsim health`: exit 0 only when the server reports SERVING (a container's HEALTHCHECK).

Light on purpose (stdlib and grpc only, no torch: ~0.1 s, not seconds, every few seconds
under a HEALTHCHECK): it reads the server's settings with ``service.config`` (the one TOML
loader and precedence of ``training.settings``; no torch), the TOML file (top level or a
``[serve]`` table), then ``IMGSIM_SERVE_<NAME>`` environment variables.
Run it as ``imgsim health`` or ``python -m service.health_check``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

DEFAULT_PORT = 50051
_LOCAL = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "[::1]", "[::]": "[::1]"}


@dataclass(frozen=True)
class Probe:
    """Where and how to reach the server."""

    target: str
    tls_ca: str = ""  # PEM roots; "" -> plaintext
    tls_name: str = ""  # certificate host name, when not the target's


def server_probe(config: str | Path | None = None, *, env: Mapping[str, str] | None = None,
                 server: str | None = None, tls_ca: str | None = None,
                 tls_name: str | None = None) -> Probe:
    """The server's address on this host and its TLS, from its settings (file, then env);
    ``server``/``tls_ca`` given by flag win. With ``tls_cert`` set and no ``tls_ca``, the
    server's own certificate is trusted (right for a self-signed one)."""
    from service.config import resolve_serve_config

    values, _ = resolve_serve_config(config, env=env)
    host = str(values.get("host", "127.0.0.1"))
    port = int(values.get("port", DEFAULT_PORT))
    return Probe(server or f"{_LOCAL.get(host, host)}:{port}",
                 tls_ca or str(values.get("tls_cert") or ""), tls_name or "")


def check(probe: Probe, *, service: str = "", timeout: float = 5.0) -> tuple[bool, str]:
    """(serving, what the server said or why it could not be asked)."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    if probe.tls_ca:
        opts = [("grpc.ssl_target_name_override", probe.tls_name)] if probe.tls_name else []
        creds = grpc.ssl_channel_credentials(Path(probe.tls_ca).read_bytes())
        channel = grpc.secure_channel(probe.target, creds, opts)
    else:
        channel = grpc.insecure_channel(probe.target)
    with channel:
        try:
            r = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        except grpc.RpcError as e:
            return False, f"{e.code().name}: {e.details()}"
    return (r.status == health_pb2.HealthCheckResponse.SERVING,
            health_pb2.HealthCheckResponse.ServingStatus.Name(r.status))


def positive_seconds(text: str) -> float:
    """An argparse type: a duration in seconds > 0 (0 or less would expire every call)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value > 0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be > 0 seconds, got {text}")
    return value


def add_config_argument(p: argparse.ArgumentParser) -> None:
    """``--config``: the server's settings file, for commands that act beside a server."""
    p.add_argument("--config", default=os.environ.get("IMGSIM_SERVE_CONFIG"),
                   help="the server's TOML settings file (env IMGSIM_SERVE_CONFIG)")


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_config_argument(p)
    p.add_argument("--server", help="HOST:PORT (default: this host, the server's port)")
    p.add_argument("--tls-ca", default=os.environ.get("IMGSIM_TLS_CA"),
                   help="PEM file of the CA that signed the server's certificate (env "
                        "IMGSIM_TLS_CA; default when the server has tls_cert: that certificate)")
    p.add_argument("--tls-name", default=os.environ.get("IMGSIM_TLS_NAME"),
                   help="host name the server's certificate is for, when it is not the "
                        "address connected to (env IMGSIM_TLS_NAME)")
    p.add_argument("--service", default="", help="a service name (default: the whole server)")
    p.add_argument("--timeout", type=positive_seconds, default=5.0,
                   help="seconds (default %(default)s)")


DESCRIPTION = ("Ask a server's standard gRPC health service whether it is SERVING (model and "
               "index loaded, not stopping); exit 0 if so, 1 otherwise (NOT_SERVING, "
               "unreachable, TLS refused). It reads the server's own settings (--config FILE, "
               "IMGSIM_SERVE_HOST/PORT/TLS_CERT), so it connects to the server's port and uses "
               "TLS when the server does. For a container HEALTHCHECK.")


def run(args: argparse.Namespace) -> int:
    probe = server_probe(args.config, server=args.server, tls_ca=args.tls_ca,
                         tls_name=args.tls_name)
    ok, status = check(probe, service=args.service, timeout=args.timeout)
    where = f"{probe.target}{' (TLS)' if probe.tls_ca else ''}"
    print(f"{where}: {status}", file=sys.stdout if ok else sys.stderr)
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="imgsim health", description=DESCRIPTION)
    add_arguments(p)
    args = p.parse_args(argv)
    try:
        return run(args)
    except (OSError, ValueError, tomllib.TOMLDecodeError) as e:
        print(f"imgsim health: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
