"""ServeConfig sources: defaults < file < environment < flags; bad values are clear errors."""

import pytest

from service.config import ServeConfig, load_serve_config


def test_precedence_file_env_flags(tmp_path):
    f = tmp_path / "serve.toml"
    f.write_text('[serve]\ncheckpoint = "file.pt"\nindex_root = "idx"\ncatalog_url = "sqlite://"\n'
                 'port = 1111\nmax_batch = 8\nformats = ["PNG"]\n')
    env = {"IMGSIM_SERVE_PORT": "2222", "IMGSIM_SERVE_MAX_WAIT_MS": "7.5",
           "IMGSIM_SERVE_REQUIRE_API_KEY": "true", "IMGSIM_SERVE_EXTRA_INDEX_ROOTS": "a, b"}
    cfg = load_serve_config(f, env=env, port=3333, max_batch=None)
    assert cfg.checkpoint == "file.pt" and cfg.port == 3333  # flag beats env beats file
    assert cfg.max_batch == 8  # flag not given (None): the file's value stays
    assert cfg.max_wait_ms == 7.5 and cfg.require_api_key is True
    assert cfg.extra_index_roots == ("a", "b") and cfg.formats == ("PNG",)
    assert cfg.grace_seconds == ServeConfig.grace_seconds  # untouched default
    opts = cfg.core_options()
    assert opts.max_batch == 8 and opts.max_wait_ms == 7.5 and opts.formats == ("PNG",)


def test_defaults_fill_required_fields_under_everything_else():
    cfg = load_serve_config(env={"IMGSIM_SERVE_CHECKPOINT": "m.pt"},
                            defaults={"index_root": "var/index", "catalog_url": "sqlite://"},
                            catalog_url="postgresql://db")
    assert (cfg.checkpoint, cfg.index_root, cfg.catalog_url) == ("m.pt", "var/index",
                                                                 "postgresql://db")


def test_bad_settings_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="missing checkpoint"):
        load_serve_config(env={}, index_root="i", catalog_url="c")
    with pytest.raises(ValueError, match="port must be int"):
        load_serve_config(env={"IMGSIM_SERVE_PORT": "http"}, checkpoint="m", index_root="i",
                          catalog_url="c")
    f = tmp_path / "bad.toml"
    f.write_text('checkpoint = "m"\nmax_bach = 3\n')
    with pytest.raises(ValueError, match="unknown settings .*max_bach"):
        load_serve_config(f, env={})
    with pytest.raises(ValueError, match="both tls_cert and tls_key"):
        load_serve_config(env={}, checkpoint="m", index_root="i", catalog_url="c",
                          tls_cert="c.pem")
