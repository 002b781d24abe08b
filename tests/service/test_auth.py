"""API keys: stored hashed, scoped to collections and access, revocable; `imgsim keys` CLI."""

import pytest
from sqlalchemy import select
from sqlalchemy.orm import sessionmaker

from indexer.catalog import make_engine
from service.auth import (
    ApiKeyRow,
    Authenticator,
    create_api_key,
    key_from_metadata,
    revoke_api_key,
)
from service.errors import PermissionDenied, Unauthenticated


@pytest.fixture()
def sessions(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'keys.db'}")
    ApiKeyRow.metadata.create_all(engine, tables=[ApiKeyRow.__table__])
    return sessionmaker(engine, expire_on_commit=False)


def test_only_the_hash_is_stored_and_the_key_authenticates(sessions):
    with sessions.begin() as s:
        key, row = create_api_key(s, name="app", access="read", collections=["faces"])
    secret = key.split("_", 2)[2]
    with sessions() as s:
        stored = s.scalars(select(ApiKeyRow)).one()
    assert secret not in (stored.secret_sha256, stored.key_id, stored.name)
    assert len(stored.secret_sha256) == 64
    p = Authenticator(sessions, cache_seconds=0).authenticate(key)
    assert (p.key_id, p.access, p.collections) == (row.key_id, "read", frozenset({"faces"}))


def test_missing_wrong_and_revoked_keys_are_unauthenticated(sessions):
    auth = Authenticator(sessions, cache_seconds=0)
    with sessions.begin() as s:
        key, row = create_api_key(s, name="app", access="write", collections=["*"])
    with pytest.raises(Unauthenticated, match="missing"):
        auth.authenticate(None)
    with pytest.raises(Unauthenticated, match="malformed"):
        auth.authenticate("hello")
    with pytest.raises(Unauthenticated, match="unknown or revoked"):
        auth.authenticate(key[:-2] + ("AA" if not key.endswith("AA") else "BB"))
    assert auth.authenticate(key).collections is None  # '*' = every collection
    with sessions.begin() as s:
        revoke_api_key(s, row.key_id)
    with pytest.raises(Unauthenticated, match="unknown or revoked"):
        auth.authenticate(key)


def test_revocation_waits_for_the_cache(sessions):
    auth = Authenticator(sessions, cache_seconds=3600)
    with sessions.begin() as s:
        key, row = create_api_key(s, name="app", access="read", collections=["a"])
    auth.authenticate(key)
    with sessions.begin() as s:
        revoke_api_key(s, row.key_id)
    assert auth.authenticate(key).key_id == row.key_id  # cached answer
    with pytest.raises(Unauthenticated):
        Authenticator(sessions, cache_seconds=0).authenticate(key)


def test_scopes(sessions):
    with sessions.begin() as s:
        rkey, _ = create_api_key(s, name="r", access="read", collections=["a", "b"])
        wkey, _ = create_api_key(s, name="w", access="write", collections=["a"])
    auth = Authenticator(sessions, cache_seconds=0)
    reader, writer = auth.authenticate(rkey), auth.authenticate(wkey)
    reader.require("read", ["a", "b"])
    with pytest.raises(PermissionDenied, match="read-only"):
        reader.require("write", ["a"])
    with pytest.raises(PermissionDenied, match="'c'"):
        reader.require("read", ["a", "c"])
    writer.require("write", ["a"])
    writer.require("read", ["a"])  # write includes read
    with pytest.raises(PermissionDenied, match="'b'"):
        writer.require("read", ["b"])


def test_bad_key_definitions(sessions):
    with sessions.begin() as s:
        with pytest.raises(ValueError, match="access"):
            create_api_key(s, name="x", access="admin", collections=["a"])
        with pytest.raises(ValueError, match="at least one collection"):
            create_api_key(s, name="x", access="read", collections=[" "])
        with pytest.raises(ValueError, match="no API key"):
            revoke_api_key(s, "nope")


def test_key_from_metadata_accepts_bearer_and_x_api_key():
    assert key_from_metadata([("authorization", "Bearer isk_a_b")]) == "isk_a_b"
    assert key_from_metadata([("x-api-key", b"isk_c_d")]) == "isk_c_d"
    assert key_from_metadata([("user-agent", "x")]) is None


def test_keys_cli_create_list_revoke(tmp_path, capsys):
    from imgsim.cli import main

    url = f"sqlite:///{tmp_path / 'var' / 'cat.db'}"
    assert main(["keys", "create", "--name", "locust", "--access", "write",
                 "--collections", "faces,cars", "--catalog", url]) == 0
    out = capsys.readouterr().out
    key = out.strip().splitlines()[-1]
    key_id = key.split("_")[1]
    assert key.startswith("isk_") and f"created key {key_id}" in out
    assert main(["keys", "list", "--catalog", url]) == 0
    listed = capsys.readouterr().out
    assert key_id in listed and "cars,faces" in listed and key.split("_", 2)[2] not in listed
    assert main(["keys", "revoke", key_id, "--catalog", url]) == 0
    assert main(["keys", "list", "--catalog", url]) == 0
    row = next(ln for ln in capsys.readouterr().out.splitlines() if ln.startswith(key_id))
    assert row.split()[-2] != "-"  # revoked time shown
    assert main(["keys", "revoke", "nope", "--catalog", url]) == 2
    assert "no API key" in capsys.readouterr().err
