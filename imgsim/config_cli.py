"""`imgsim config show`: the effective settings of this shell and where each came from."""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

SECRETS = ("api_key",)


def register(sub: argparse._SubParsersAction) -> None:
    c = sub.add_parser("config", help="the effective settings and where each came from",
                       description="Settings come from flags, then IMGSIM_* environment "
                                   "variables, then the TOML file (--config), then defaults.")
    csub = c.add_subparsers(dest="config_command", required=True, metavar="COMMAND")
    s = csub.add_parser("show", help="print the effective settings and their sources",
                        description="Print every setting as TOML (copy it into a --config "
                                    "file), each with where its value came from: a flag, an "
                                    "environment variable, the file, or the default. Secrets "
                                    "and database passwords are hidden.")
    s.add_argument("--config", default=os.environ.get("IMGSIM_SERVE_CONFIG"),
                   help="the server's TOML settings file (env IMGSIM_SERVE_CONFIG)")
    s.add_argument("--json", action="store_true",
                   help="print {section: {name: {value, source}}} as JSON")
    s.set_defaults(func=_show)


def effective_settings(config: str | None = None) -> dict[str, dict[str, tuple[Any, str]]]:
    """{section: {name: (value, source)}} for the common, client and server settings."""
    from service.config import DEFAULT_HTTP_PORT, ServeConfig, resolve_serve_config
    from training.settings import (
        DEFAULT,
        DEFAULT_CATALOG,
        DEFAULT_INDEX_ROOT,
        client_settings,
        common_settings,
        defaults_of,
    )

    common, common_src = common_settings(config)
    client, client_src = client_settings(config)
    # the defaults of `imgsim serve` (its HTTP console on; no checkpoint until one is given)
    values, sources = resolve_serve_config(
        config, defaults={"checkpoint": "", "index_root": DEFAULT_INDEX_ROOT,
                          "catalog_url": DEFAULT_CATALOG, "http_port": DEFAULT_HTTP_PORT})
    serve = {**defaults_of(ServeConfig), **values}
    out = {"common": {k: (getattr(common, k), common_src[k]) for k in common_src},
           "client": {k: (getattr(client, k), client_src[k]) for k in client_src},
           "serve": {k: (serve[k], sources.get(k, DEFAULT)) for k in
                     [f for f in ServeConfig.__dataclass_fields__]}}
    for section in out.values():
        for name, (value, source) in section.items():
            section[name] = (_hidden(name, value), source)
    return out


def _hidden(name: str, value: Any) -> Any:
    if name in SECRETS and value:
        return "***"
    if name == "catalog_url" and "@" in str(value):
        from service.config import safe_url

        return safe_url(str(value))
    return value


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return json.dumps(str(value))


def _show(args: argparse.Namespace) -> int:
    settings = effective_settings(args.config)
    if args.json:
        print(json.dumps({s: {k: {"value": v, "source": src} for k, (v, src) in items.items()}
                          for s, items in settings.items()}, indent=2))
        return 0
    for i, (section, items) in enumerate(settings.items()):
        print(("\n" if i else "") + f"[{section}]")
        lines = [(f"{name} = {_toml(value)}", source) for name, (value, source) in items.items()]
        width = max(len(text) for text, _ in lines)
        for text, source in lines:
            print(f"{text:<{width}}  # {source}")
    return 0
