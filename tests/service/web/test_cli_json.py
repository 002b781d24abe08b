"""`--json` on the client commands: one JSON object a script can read, the server's reply."""

from __future__ import annotations

import json

import pytest

from imgsim.cli import main
from tests.service.conftest import digit
from tests.service.web.test_api import key_of

pytestmark = pytest.mark.slow


def run_json(capsys, *argv) -> dict:
    assert main(list(argv)) == 0
    return json.loads(capsys.readouterr().out)


def test_search_verify_describe_upsert_print_json(web, digits_dir, capsys, tmp_path):
    server = ["--server", web.grpc_target, "--json"]
    q = digit(digits_dir, "8", 2)
    r = run_json(capsys, "search", str(q), "-k", "3", *server)
    assert [h["rank"] for h in r["hits"]] == [1, 2, 3] and r["hits"][0]["key"] == key_of(q)
    assert r["hits"][0]["label"] == "8" and r["hits"][0]["metadata"] == {}
    v = run_json(capsys, "verify", str(q), key_of(q), *server)
    assert v["same"] is True and v["distance"] == pytest.approx(0, abs=1e-3)
    d = run_json(capsys, "describe", *server)
    assert d["count"] == 400 and d["collections"] == ["default"] and "recall_at_10" in d
    img = tmp_path / "cli8.png"
    img.write_bytes(q.read_bytes())
    u = run_json(capsys, "upsert", str(img), "--label", "8", *server)
    assert (u["inserted"], u["count"]) == (1, 401)
    assert u["images"] == [{"key": "cli8", "label": "8", "file": str(img)}]
    assert main(["delete", "cli8", "--server", web.grpc_target]) == 0


def test_serve_takes_http_port_from_flag_env_or_file_and_defaults_to_8080(monkeypatch, tmp_path):
    import service.cli
    from service.config import load_serve_config

    base = dict(checkpoint="c.pt", index_root="idx", catalog_url="sqlite:///x.db")
    assert load_serve_config(env={}, **base).http_port == 0  # built in code: off unless asked
    assert load_serve_config(env={"IMGSIM_SERVE_HTTP_PORT": "9090"}, **base).http_port == 9090
    with pytest.raises(ValueError, match="http_port"):
        load_serve_config(env={"IMGSIM_SERVE_HTTP_PORT": "70000"}, **base)
    seen = []
    monkeypatch.setattr(service.cli, "_serve_until_stopped", lambda cfg: seen.append(cfg) or 0)
    monkeypatch.setattr("service.writable.require_serving_writable", lambda cfg: None)
    monkeypatch.delenv("IMGSIM_SERVE_HTTP_PORT", raising=False)
    for flags, want in (([], 8080), (["--http-port", "0"], 0), (["--http-port", "8181"], 8181)):
        assert main(["serve", "--checkpoint", "c.pt", *flags]) == 0
        assert seen[-1].http_port == want
    monkeypatch.setenv("IMGSIM_SERVE_HTTP_PORT", "0")
    assert main(["serve", "--checkpoint", "c.pt"]) == 0 and seen[-1].http_port == 0
