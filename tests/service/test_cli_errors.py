"""The command line on bad input: one clear line and exit 2, never a traceback, and commands
beside a server use the server's settings and create no database."""

from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from imgsim.cli import build_parser, main
from service.client import image_ref
from service.core import MAX_K

REPO = Path(__file__).resolve().parents[2]
CHECKPOINT_OPTIONS = {"--checkpoint", "--init", "--pretrained", "--init-from-autoencoder"}


@pytest.fixture(autouse=True)
def _no_server_env(monkeypatch):
    for name in list(os.environ):
        if name.startswith("IMGSIM_SERVE_") or name in ("IMGSIM_CATALOG_URL", "IMGSIM_SERVER"):
            monkeypatch.delenv(name)


# -- bad checkpoints, from every command that takes one ---------------------------------------
def _truncated(p: Path) -> Path:
    torch.save({"format": "imgsim.checkpoint/1", "w": torch.zeros(1000)}, p)
    p.write_bytes(p.read_bytes()[:600])
    return p


BAD = {
    "missing": lambda p: p,
    "directory": lambda p: (p.mkdir(), p)[1],
    "text": lambda p: (p.write_text("not weights\n"), p)[1],
    "truncated": _truncated,
    "another torch file": lambda p: (torch.save({"w": torch.zeros(2)}, p), p)[1],
}


@pytest.fixture(scope="module")
def tiny_lfw(tmp_path_factory, digits_dir) -> Path:
    """An LFW-shaped folder of two digit 'people', one fold of one genuine + one impostor pair."""
    root = tmp_path_factory.mktemp("lfw")
    for d in ("0", "1"):
        person = root / "lfw-deepfunneled" / f"D{d}"
        person.mkdir(parents=True)
        for i, src in enumerate(sorted((digits_dir / d).glob("*.png"))[:2], start=1):
            Image.open(src).convert("RGB").save(person / f"D{d}_{i:04d}.jpg")
    (root / "pairs.txt").write_text("1\t1\nD0\t1\t2\nD0\t1\tD1\t1\n")
    return root


def _argv(cmd: str, bad: str, tmp: Path, digits: Path, lfw: Path, golden: Path) -> list[str]:
    image = str(sorted((digits / "3").iterdir())[0])
    listing = tmp / "list.txt"
    listing.write_text(image + "\n")
    cat = f"sqlite:///{golden / 'cat.db'}"
    train = ["train", "--format", "folder", "--data", str(digits), "--out", str(tmp / "run"),
             "--epochs", "1", "--num-workers", "0", "--no-tensorboard"]
    return {
        "train --init": [*train, "--init", bad],
        "train --pretrained": [*train, "--pretrained", bad],
        "train --init-from-autoencoder": [*train, "--init-from-autoencoder", bad],
        "embed": ["embed", "--checkpoint", bad, "--list", str(listing), "--output",
                  str(tmp / "e.npy")],
        "eval lfw": ["eval", "lfw", "--checkpoint", bad, "--data", str(lfw)],
        "eval retrieval": ["eval", "retrieval", "--checkpoint", bad, "--format", "folder",
                           "--data", str(digits)],
        "index build": ["index", "build", "--checkpoint", bad, "--images", str(digits),
                        "--catalog", f"sqlite:///{tmp / 'new.db'}", "--index-root",
                        str(tmp / "idx"), "--num-workers", "0"],
        "reindex": ["reindex", "--checkpoint", bad, "--catalog", cat, "--index-root",
                    str(tmp / "idx-copy"), "--num-workers", "0"],
        "jobs run": ["jobs", "run", "verify", "-p", f"a={image}", "-p", f"b={image}",
                     "--checkpoint", bad, "--out", str(tmp / "job")],
        "jobs worker": ["jobs", "worker", "--checkpoint", bad, "--catalog",
                        f"sqlite:///{tmp / 'jobs.db'}", "--once"],
        "segment predict": ["segment", "predict", image, "--checkpoint", bad, "--out",
                            str(tmp / "seg")],
        "segment eval": ["segment", "eval", "--checkpoint", bad, "--data", str(tmp)],
        "store check": ["store", "check", "--repair", "--checkpoint", bad, "--catalog", cat,
                        "--index-root", str(tmp / "idx-copy")],
    }[cmd]


# serve loads its checkpoint in a background thread: test_serve_* below run it for real
IN_PROCESS = ["train --init", "train --pretrained", "train --init-from-autoencoder", "embed",
              "eval lfw", "eval retrieval", "index build", "reindex", "jobs run", "jobs worker",
              "segment predict", "segment eval", "store check"]


def _walk(parser, prefix=()):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield prefix + (name,), sub
                yield from _walk(sub, prefix + (name,))


def test_the_table_covers_every_command_that_takes_a_checkpoint():
    taking = {" ".join(cmd) + ("" if opt == "--checkpoint" else f" {opt}")
              for cmd, sub in _walk(build_parser())
              for a in sub._actions for opt in a.option_strings if opt in CHECKPOINT_OPTIONS}
    assert taking == {*IN_PROCESS, "serve"}


@pytest.mark.parametrize("kind", list(BAD))
@pytest.mark.parametrize("cmd", IN_PROCESS)
def test_a_bad_checkpoint_is_one_line_and_exit_2(cmd, kind, tmp_path, digits_dir, tiny_lfw,
                                                 golden, capsys):
    if cmd in ("reindex", "store check"):
        shutil.copytree(golden / "idx", tmp_path / "idx-copy")
    bad = BAD[kind](tmp_path / "bad.pt")
    rc = main(_argv(cmd, str(bad), tmp_path, digits_dir, tiny_lfw, golden))
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    assert err[0].startswith(f"imgsim {cmd.split(' --')[0]}: error: ") and str(bad) in err[0]
    assert not (tmp_path / "new.db").exists()  # refused before the catalogue is touched


# -- the server ---------------------------------------------------------------------------------
def _imgsim(args: list[str], cwd: Path, timeout: float = 120):
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items()
           if not k.startswith("IMGSIM_SERVE_") and k != "IMGSIM_CATALOG_URL"}
    env.update(OMP_WAIT_POLICY="PASSIVE", IMGSIM_SERVE_JOB_THREADS="0",
               PYTHONPATH=str(REPO) + os.pathsep + env.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "imgsim.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_serve_without_a_catalogue_names_the_url_and_how_to_set_it(tmp_path, tiny_checkpoint):
    r = _imgsim(["serve", "--checkpoint", str(tiny_checkpoint), "--port", "0"], tmp_path)
    last = r.stderr.strip().splitlines()[-1]
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert "sqlite:///var/catalog.db" in last and str(tmp_path) in last
    assert "--catalog" in last and "IMGSIM_SERVE_CATALOG_URL" in last and "--config" in last
    assert not (tmp_path / "var").exists()  # no empty catalogue left behind


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["missing", "text"])
def test_serve_that_cannot_load_its_model_exits(kind, tmp_path, golden):
    """It used to log a traceback and answer NOT_SERVING forever (here: until the timeout)."""
    bad = BAD[kind](tmp_path / "bad.pt")
    r = _imgsim(["serve", "--checkpoint", str(bad), "--port", "0", "--index-root",
                 str(golden / "idx"), "--catalog", f"sqlite:///{golden / 'cat.db'}"], tmp_path)
    last = r.stderr.strip().splitlines()[-1]
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert last.startswith("imgsim serve: error: cannot serve: ") and str(bad) in last


# -- search -k, query paths ---------------------------------------------------------------------
@pytest.mark.parametrize("k", ["0", "-3", str(MAX_K + 1), "ten"])
def test_search_k_outside_its_bounds_is_a_usage_error_stating_them(k, capsys):
    with pytest.raises(SystemExit) as e:
        main(["search", "q.png", "-k", k])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "argument -k" in err
    assert f"1..{MAX_K}" in err or "not an integer" in err


def test_search_k_at_its_bounds_parses():
    for k in (1, MAX_K):
        assert build_parser().parse_args(["search", "q.png", "-k", str(k)]).k == k


def test_k_zero_means_the_default_in_the_proto_and_the_help(capsys):
    proto = (REPO / "protos/imgsim/v1/similarity.proto").read_text()
    k_line = next(ln for ln in proto.splitlines() if ln.strip().startswith("int32 k = "))
    assert "0" in k_line and "default" in k_line
    with pytest.raises(SystemExit):
        main(["search", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "k = 0" in out and f"1..{MAX_K}" in out


def test_a_query_path_that_names_no_file_says_so(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for query in ["/nope.png", "nope.jpg", "./nope", str(tmp_path / "missing")]:
        with pytest.raises(FileNotFoundError, match="no such image file: " + query.replace(".", r"\.")):
            image_ref(query)
    (tmp_path / "folder").mkdir()
    with pytest.raises(IsADirectoryError, match="folder is a directory"):
        image_ref("folder")
    with pytest.raises(IsADirectoryError):
        image_ref(Path(tmp_path))
    # catalogue keys look like <label>/<name>: still keys
    assert image_ref("3/0123").key == "3/0123" and image_ref("cat").key == "cat"


def test_search_cli_reports_the_missing_file_not_a_missing_key(capsys):
    assert main(["search", "/nope.png", "--server", "127.0.0.1:1", "--timeout", "1"]) == 2
    err = capsys.readouterr().err
    assert "no such image file: /nope.png" in err and "key" not in err


# -- commands beside a server: its settings, and no new database ------------------------------
@pytest.mark.parametrize("argv", [["keys", "list"], ["keys", "revoke", "abc"],
                                  ["blobs", "gc", "--dry-run"], ["jobs", "list"],
                                  ["jobs", "get", "1"], ["jobs", "cancel", "1"]])
def test_commands_beside_a_server_create_no_catalogue(argv, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "sqlite:///var/catalog.db" in err[0] and "does not exist" in err[0]
    assert not (tmp_path / "var").exists()


def test_keys_use_the_servers_catalogue_from_its_env_and_config(workspace, tmp_path,
                                                                monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    url = f"sqlite:///{workspace / 'cat.db'}"
    monkeypatch.setenv("IMGSIM_SERVE_CATALOG_URL", url)
    assert main(["keys", "create", "--name", "by-env"]) == 0
    assert f"in {url}" in capsys.readouterr().out  # says which catalogue holds the key
    monkeypatch.delenv("IMGSIM_SERVE_CATALOG_URL")
    conf = tmp_path / "serve.toml"
    conf.write_text(f'[serve]\ncatalog_url = "{url}"\n')
    capsys.readouterr()
    assert main(["keys", "list", "--config", str(conf)]) == 0
    assert "by-env" in capsys.readouterr().out
    assert not (tmp_path / "var").exists()


def test_jobs_submit_may_still_create_a_queue_for_a_standalone_worker(tmp_path, monkeypatch,
                                                                      capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["jobs", "submit", "classifier", "-p", "epochs=1"]) == 0
    assert "submitted job 1" in capsys.readouterr().out
    assert main(["jobs", "list"]) == 0 and "classifier" in capsys.readouterr().out


# -- upsert and delete: what a key is -----------------------------------------------------------
def _upsert_images(paths, **kw):
    from service.cli import _upsert_images as images

    return list(images(argparse.Namespace(paths=[str(p) for p in paths], label=kw.get("label", ""),
                                          meta=None, collection="")))


def test_upsert_keys_are_file_names_without_extension(digits_dir, tmp_path):
    one = tmp_path / "photos" / "cat.png"
    one.parent.mkdir()
    shutil.copy(sorted((digits_dir / "1").iterdir())[0], one)
    keys = {im.key: im.label for im in _upsert_images([digits_dir, one], label="pet")}
    first = sorted((digits_dir / "3").iterdir())[0]
    assert keys[f"3/{first.stem}"] == "3" and keys["cat"] == "pet"


def test_upsert_refuses_two_files_that_would_share_a_key(tmp_path, digits_dir):
    src = sorted((digits_dir / "1").iterdir())[0]
    (tmp_path / "a").mkdir()
    shutil.copy(src, tmp_path / "a" / "x.png")
    Image.open(src).save(tmp_path / "a" / "x.jpg")
    with pytest.raises(ValueError, match="would both get key 'a/x'"):
        _upsert_images([tmp_path])


@pytest.mark.slow
def test_upsert_prints_the_key_of_every_image(workspace, tiny_checkpoint, digits_dir, tmp_path,
                                              capsys):
    from service.server import ServeConfig, Server
    from tests.service.conftest import make_core

    cfg = ServeConfig(checkpoint=str(tiny_checkpoint), index_root=str(workspace / "idx"),
                      catalog_url=f"sqlite:///{workspace / 'cat.db'}", port=0, watch_seconds=0)
    server = Server(cfg, core=make_core(workspace, tiny_checkpoint))
    try:
        new = tmp_path / "new.png"
        shutil.copy(sorted((digits_dir / "7").iterdir())[0], new)
        old = sorted((digits_dir / "2").iterdir())[0]
        assert main(["upsert", str(new), str(old), "--label", "x", "--server",
                     f"127.0.0.1:{server.port}"]) == 0
    finally:
        server.stop(0)
    out = capsys.readouterr().out
    assert "2 image(s) sent" in out
    rows = {ln.split()[0]: ln.split()[1] for ln in out.splitlines()[2:]}
    assert rows == {"new": "x", old.stem: "x"}


def test_delete_help_says_what_a_key_is(capsys):
    with pytest.raises(SystemExit):
        main(["delete", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "<label>/<name>" in out and "without the extension" in out and "3/0123" in out


# -- more of the same class: values the code would misread --------------------------------------
@pytest.mark.parametrize("argv, words", [
    (["serve", "--port", "99999"], "argument --port: must be 0..65535"),
    (["serve", "--port", "-5"], "argument --port: must be 0..65535"),
    (["search", "q.png", "--timeout", "0"], "argument --timeout: must be > 0"),
    (["health", "--timeout", "-1"], "argument --timeout: must be > 0"),
    (["jobs", "worker", "--concurrency", "0"], "argument --concurrency: must be >= 1"),
])
def test_out_of_range_flags_are_usage_errors(argv, words, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2 and words in capsys.readouterr().err


def test_a_port_from_the_environment_is_checked_too():
    from service.config import load_serve_config

    # grpc would bind 99999 % 65536 = 34463 and serve there without a word
    with pytest.raises(ValueError, match="port must be 0..65535"):
        load_serve_config(env={"IMGSIM_SERVE_PORT": "99999"}, checkpoint="m", index_root="i",
                          catalog_url="sqlite://")


def test_a_catalogue_that_is_not_a_url_is_one_line(tmp_path, capsys):
    assert main(["index", "migrate", "--catalog", "not a url"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--catalog" in err[0] and "URL" in err[0]
