"""`imgsim serve` with a folder it must write that it cannot (a bind-mounted var/ owned by root,
the Docker image running as uid 10001): one line naming the folder and the fix, exit 2. As root
nothing stops a write, so os.access is made to say no for that folder."""

import os
from pathlib import Path

import pytest

import service.writable
from imgsim.cli import main
from service.writable import sqlite_folder


def _deny(monkeypatch, folder: Path) -> None:
    real = os.access
    monkeypatch.setattr(service.writable.os, "access",
                        lambda p, mode: False if Path(p) == folder else real(p, mode))


@pytest.mark.parametrize("denied", ["var", "var/index"])
def test_serve_with_an_unwritable_var_names_the_folder_and_the_fix(tmp_path, monkeypatch,
                                                                   capsys, denied):
    var = tmp_path / "var"
    (var / "index").mkdir(parents=True)
    _deny(monkeypatch, tmp_path / denied)
    rc = main(["serve", "--checkpoint", str(var / "model.pt"), "--index-root", str(var / "index"),
               "--catalog", f"sqlite:///{var / 'catalog.db'}", "--port", "0"])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.startswith(f"imgsim serve: error: {tmp_path / denied} is not writable by this user")
    assert "chown -R 10001 var" in err and "--user" in err and err.count("\n") == 1


def test_sqlite_folder_of_catalogue_urls(tmp_path):
    assert sqlite_folder(f"sqlite:///{tmp_path}/var/catalog.db") == tmp_path / "var"
    assert sqlite_folder("sqlite:///var/catalog.db") == Path("var")
    assert sqlite_folder("sqlite://") is None and sqlite_folder("sqlite:///:memory:") is None
    assert sqlite_folder("postgresql+psycopg://u@db/imgsim") is None
