"""The one settings root (training.settings): precedence, sources, the one TOML loader."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from training import settings


@dataclass(frozen=True)
class Example:
    name: str = "a"
    count: int = 1
    ratio: float = 0.5
    on: bool = False
    tags: tuple[str, ...] = ()


def _resolve(tmp_path, *, file_text=None, env=None, **flags):
    file = None
    if file_text is not None:
        file = tmp_path / "s.toml"
        file.write_text(file_text)
    return settings.resolve(Example, file=file, table="example", env=env or {},
                            env_names=settings.prefixed("EX_"), flags=flags), file


def test_flags_beat_environment_beat_file_beat_defaults(tmp_path):
    (values, sources), file = _resolve(
        tmp_path, file_text='count = 2\nratio = 0.25\nname = "file"\n',
        env={"IMGSIM_EX_COUNT": "3", "IMGSIM_EX_NAME": "env"}, name="flag", on=None)
    assert values == {"name": "flag", "count": 3, "ratio": 0.25}
    assert sources == {"name": "flag", "count": "env IMGSIM_EX_COUNT", "ratio": f"file {file}"}
    obj, all_sources = settings.build(Example, values, sources)
    assert obj == Example(name="flag", count=3, ratio=0.25)
    assert all_sources["on"] == all_sources["tags"] == "default"


def test_environment_strings_become_the_field_types(tmp_path):
    (values, _), _ = _resolve(tmp_path, env={"IMGSIM_EX_ON": "yes", "IMGSIM_EX_TAGS": "x, y"})
    assert values == {"on": True, "tags": ("x", "y")}
    with pytest.raises(ValueError, match="count must be int, got 'many'"):
        _resolve(tmp_path, env={"IMGSIM_EX_COUNT": "many"})


def test_one_toml_loader_table_dashes_unknown_and_bad_files(tmp_path):
    f = tmp_path / "s.toml"
    f.write_text('[common]\nmax-count = 1\n[serve]\nport = 1\n')
    assert settings.read_toml(f, table="common", valid=["max_count"]) == {"max_count": 1}
    # another section's table is not this one's settings
    assert settings.read_toml(f, table="train", valid=["x"]) == {}
    f.write_text("count = 1\nbogus = 2\n")
    with pytest.raises(ValueError, match=r"unknown settings \['bogus'\]; valid: count"):
        settings.read_toml(f, table="example", valid=["count"])
    f.write_text("count = = 1\n")
    with pytest.raises(ValueError, match="invalid TOML"):
        settings.read_toml(f, table="example", valid=["count"])
    with pytest.raises(FileNotFoundError, match="config file not found"):
        settings.read_toml(tmp_path / "missing.toml", table="example", valid=["count"])


def test_the_data_root_is_read_when_asked():
    assert str(settings.data_root(env={})) == settings.DEFAULT_DATA_ROOT
    assert str(settings.data_root(env={"IMGSIM_DATA": "/d"})) == "/d"


def test_client_server_has_one_default_and_its_source():
    client, sources = settings.client_settings(env={})
    assert client.server == settings.DEFAULT_SERVER and sources["server"] == "default"
    client, sources = settings.client_settings(env={"IMGSIM_SERVER": "h:1"})
    assert client.server == "h:1" and sources["server"] == "env IMGSIM_SERVER"


def test_serve_settings_keep_their_documented_names(monkeypatch):
    from service.config import load_serve_config, resolve_serve_config

    env = {"IMGSIM_SERVE_JOB_THREADS": "0", "IMGSIM_CATALOG_URL": "sqlite:///common.db"}
    cfg = load_serve_config(env=env, checkpoint="c.pt", index_root="i")
    assert cfg.job_threads == 0 and cfg.catalog_url == "sqlite:///common.db"
    # the serve name wins over the common one
    _, sources = resolve_serve_config(env={**env, "IMGSIM_SERVE_CATALOG_URL": "sqlite:///s.db"})
    assert sources["catalog_url"] == "env IMGSIM_SERVE_CATALOG_URL"


def test_config_show_prints_each_setting_and_its_source(tmp_path, monkeypatch, capsys):
    from imgsim.cli import main

    for var in ("IMGSIM_SERVE_CONFIG", "IMGSIM_SERVE_PORT", "IMGSIM_SERVE_MAX_BATCH",
                "IMGSIM_DATA", "IMGSIM_SERVER", "IMGSIM_CATALOG_URL", "IMGSIM_SERVE_CATALOG_URL"):
        monkeypatch.delenv(var, raising=False)
    cfg = tmp_path / "serve.toml"
    cfg.write_text('[serve]\nport = 6000\nmax_batch = 8\n[common]\ndata_root = "/data"\n')
    monkeypatch.setenv("IMGSIM_SERVE_MAX_BATCH", "4")
    monkeypatch.setenv("IMGSIM_API_KEY", "sekrit")
    monkeypatch.setenv("IMGSIM_CATALOG_URL", "postgresql+psycopg://u:pw@db/cat")
    assert main(["config", "show", "--config", str(cfg)]) == 0
    out = capsys.readouterr().out
    lines = {ln.split("#")[0].strip(): ln.split("#")[-1].strip() for ln in out.splitlines()
             if "=" in ln}
    assert lines["port = 6000"] == f"file {cfg}"
    assert lines["max_batch = 4"] == "env IMGSIM_SERVE_MAX_BATCH"
    assert lines['data_root = "/data"'] == f"file {cfg}"
    assert lines['server = "localhost:50051"'] == "default"
    assert lines["http_port = 8080"] == "default"  # as `imgsim serve`
    assert lines['api_key = "***"'] == "env IMGSIM_API_KEY"
    assert "sekrit" not in out and "pw" not in out
    assert main(["config", "show", "--json", "--config", str(cfg)]) == 0
    import json

    shown = json.loads(capsys.readouterr().out)
    assert shown["serve"]["port"] == {"value": 6000, "source": f"file {cfg}"}
