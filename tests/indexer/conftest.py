"""Catalogue URLs for both supported databases: SQLite, and a throwaway PostgreSQL on loopback.

The PostgreSQL server is started once per test session from Debian's server binaries
(``.ci/run`` installs them). Without them the PostgreSQL cases are skipped with the reason,
unless ``IMGSIM_REQUIRE_POSTGRES=1`` (as in CI), where their absence is an error.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from pathlib import Path

import pytest


def _pg_bin() -> Path | None:
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(candidates[-1]).parent if candidates else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(argv: list[str]) -> None:
    r = subprocess.run(argv, capture_output=True, text=True)
    if r.returncode:
        raise RuntimeError(f"{' '.join(argv)} failed ({r.returncode}): {r.stderr or r.stdout}")


def _as_user(user: str | None, argv: list[str]) -> list[str]:
    return ["runuser", "-u", user, "--", *argv] if user else argv


@pytest.fixture(scope="session")
def postgres_server():
    """(host, port, user) of a PostgreSQL server for this session, stopped afterwards."""
    bin_dir = _pg_bin()
    if bin_dir is None:
        msg = ("PostgreSQL server binaries (initdb, pg_ctl) not found: "
               "`apt-get install postgresql` to run the catalogue tests against PostgreSQL")
        if os.environ.get("IMGSIM_REQUIRE_POSTGRES") == "1":
            pytest.fail(msg)
        pytest.skip(msg)
    try:
        import psycopg  # noqa: F401
    except ImportError:
        pytest.fail("psycopg is not installed (it is a project dependency)")
    # the server refuses to run as root: run it as the 'postgres' system user then
    user = None
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no 'postgres' user to run the server as")
        user = "postgres"
    # not under pytest's basetemp: that is private to root (0700), and the server runs as postgres
    root = Path(tempfile.mkdtemp(prefix="imgsim-pg-"))
    data, sock = root / "data", root / "sock"
    sock.mkdir()
    if user:
        os.chmod(root, 0o755)
        shutil.chown(root, user)
        shutil.chown(sock, user)
    port = _free_port()
    _run(_as_user(user, [str(bin_dir / "initdb"), "-D", str(data), "-U", "imgsim",
                         "--auth=trust", "-E", "UTF8", "--no-sync"]))
    opts = f"-h 127.0.0.1 -p {port} -k {sock} -F -c fsync=off -c full_page_writes=off"
    _run(_as_user(user, [str(bin_dir / "pg_ctl"), "-D", str(data), "-o", opts,
                         "-l", str(root / "log"), "-w", "-t", "60", "start"]))
    try:
        yield "127.0.0.1", port, "imgsim"
    finally:
        subprocess.run(_as_user(user, [str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast",
                                       "-w", "stop"]), capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


def _new_pg_database(server) -> str:
    import psycopg

    host, port, user = server
    name = "t_" + uuid.uuid4().hex[:12]
    with psycopg.connect(host=host, port=port, user=user, dbname="postgres",
                         autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return f"postgresql+psycopg://{user}@{host}:{port}/{name}"


@pytest.fixture(params=["sqlite", "postgresql"])
def catalog_url(request, tmp_path) -> str:
    """A fresh, empty catalogue database of each supported kind."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'catalog.db'}"
    return _new_pg_database(request.getfixturevalue("postgres_server"))


@pytest.fixture(autouse=True, scope="session")
def _one_faiss_thread():
    """One OpenMP thread: on a busy 2-core machine a team of two spin-waits for its second
    thread and runs several times slower; results do not depend on the thread count."""
    import faiss

    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)
