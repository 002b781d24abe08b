"""`imgsim health` against real servers, plaintext and TLS, configured like the server."""

import pytest

from imgsim.cli import main as imgsim
from service.config import load_serve_config
from service.health_check import main, server_probe
from service.server import ServeConfig, Server
from tests.service.conftest import make_core
from tests.service.test_server_api import self_signed

pytestmark = pytest.mark.slow


@pytest.fixture()
def serve(workspace, tiny_checkpoint):
    servers = []

    def start(**kw):
        loads = "checkpoint" in kw  # else a ready core: SERVING at once
        cfg = ServeConfig(**{"checkpoint": str(tiny_checkpoint),
                             "index_root": str(workspace / "idx"),
                             "catalog_url": f"sqlite:///{workspace / 'cat.db'}", "port": 0,
                             "watch_seconds": 0, **kw})
        servers.append(Server(cfg, core=None if loads else make_core(workspace, tiny_checkpoint)))
        return servers[-1]

    yield start
    for s in servers:
        s.stop(0)


@pytest.fixture(autouse=True)
def _no_server_env(monkeypatch):
    for name in ("IMGSIM_SERVE_CONFIG", "IMGSIM_SERVE_PORT", "IMGSIM_SERVE_HOST",
                 "IMGSIM_SERVE_TLS_CERT", "IMGSIM_TLS_CA", "IMGSIM_TLS_NAME"):
        monkeypatch.delenv(name, raising=False)


def test_plaintext_server_is_healthy_by_flag_and_by_its_env(serve, monkeypatch, capsys):
    server = serve()
    assert main(["--server", f"127.0.0.1:{server.port}"]) == 0
    assert "SERVING" in capsys.readouterr().out
    monkeypatch.setenv("IMGSIM_SERVE_PORT", str(server.port))
    assert main([]) == 0
    assert imgsim(["health"]) == 0  # the same command under the imgsim entry point


def test_tls_server_is_healthy_when_the_check_reads_its_settings(serve, tmp_path, monkeypatch,
                                                                 capsys):
    cert, key = self_signed(tmp_path)
    server = serve(tls_cert=str(cert), tls_key=str(key))
    # what the old HEALTHCHECK did (plaintext to the port): unhealthy
    assert main(["--server", f"127.0.0.1:{server.port}", "--timeout", "3"]) == 1
    assert "UNAVAILABLE" in capsys.readouterr().err
    # the server's environment, as a container passes it: TLS with the server's certificate
    monkeypatch.setenv("IMGSIM_SERVE_PORT", str(server.port))
    monkeypatch.setenv("IMGSIM_SERVE_TLS_CERT", str(cert))
    monkeypatch.setenv("IMGSIM_SERVE_TLS_KEY", str(key))
    assert main([]) == 0
    assert "(TLS): SERVING" in capsys.readouterr().out
    monkeypatch.delenv("IMGSIM_SERVE_PORT")
    monkeypatch.delenv("IMGSIM_SERVE_TLS_CERT")
    conf = tmp_path / "serve.toml"  # or its settings file
    conf.write_text(f'[serve]\nport = {server.port}\ntls_cert = "{cert}"\ntls_key = "{key}"\n')
    assert main(["--config", str(conf)]) == 0
    (tmp_path / "other").mkdir()
    other, _ = self_signed(tmp_path / "other")  # a CA that did not sign the server's certificate
    assert main(["--config", str(conf), "--tls-ca", str(other), "--timeout", "3"]) == 1


def test_a_server_that_is_not_serving_is_unhealthy(serve, tmp_path, capsys):
    server = serve(checkpoint=str(tmp_path / "missing.pt"))  # loading fails: NOT_SERVING
    assert server.ready.wait(60) and server.load_error is not None
    assert main(["--server", f"127.0.0.1:{server.port}"]) == 1
    assert "NOT_SERVING" in capsys.readouterr().err


def test_the_probe_reads_settings_as_the_server_does(tmp_path):
    conf = tmp_path / "s.toml"
    conf.write_text('host = "0.0.0.0"\nport = 7001\ntls_cert = "file.pem"\n'
                    'tls_key = "k.pem"\ncheckpoint = "c"\nindex_root = "i"\ncatalog_url = "u"\n')
    for env in ({}, {"IMGSIM_SERVE_PORT": "7002"}, {"IMGSIM_SERVE_TLS_CERT": "env.pem",
                                                    "IMGSIM_SERVE_HOST": "10.1.2.3"}):
        cfg = load_serve_config(conf, env=env)
        probe = server_probe(conf, env=env)
        host = "127.0.0.1" if cfg.host == "0.0.0.0" else cfg.host
        assert (probe.target, probe.tls_ca) == (f"{host}:{cfg.port}", cfg.tls_cert)
    assert server_probe(None, env={}).target == "127.0.0.1:50051"
    assert server_probe(None, env={}, server="h:1", tls_ca="ca.pem").tls_ca == "ca.pem"
    assert main(["--config", str(tmp_path / "absent.toml")]) == 2
