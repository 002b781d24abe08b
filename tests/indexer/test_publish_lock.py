"""publish_lock (flock per index root) and lock_collection (PostgreSQL advisory lock)."""

import os
import signal
import subprocess
import sys
import threading

import pytest
from sqlalchemy import create_engine
from sqlalchemy.orm import sessionmaker

from indexer.incremental import lock_collection
from indexer.versions import LOCK_FILE, publish_lock

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HOLDER = ("import sys\nfrom indexer.versions import publish_lock\n"
          "with publish_lock(sys.argv[1]):\n    print('held', flush=True)\n    sys.stdin.read()\n")


def _holder(root):
    """A process that holds the lock until its stdin closes (or it is killed)."""
    p = subprocess.Popen([sys.executable, "-c", HOLDER, str(root)], cwd=REPO, text=True,
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert p.stdout.readline().strip() == "held"
    return p


def _in_thread(fn):
    out = {}

    def run():
        try:
            out["r"] = fn()
        except Exception as e:  # noqa: BLE001  (inspected by the test)
            out["r"] = e
    t = threading.Thread(target=run)
    t.start()
    t.join()
    return out["r"]


def _try(root, timeout=0.1):
    with publish_lock(root, timeout=timeout):
        return "got it"


def test_another_process_holding_the_lock_excludes_us_until_it_exits(tmp_path):
    p = _holder(tmp_path)
    try:
        with pytest.raises(TimeoutError, match="publishing into"):
            _try(tmp_path)
    finally:
        p.stdin.close()
        p.wait(30)
    assert _try(tmp_path, timeout=30) == "got it"
    assert (tmp_path / LOCK_FILE).is_file()


def test_a_killed_holder_leaves_the_root_unlocked(tmp_path):
    p = _holder(tmp_path)
    os.kill(p.pid, signal.SIGKILL)
    p.wait(30)
    assert _try(tmp_path, timeout=30) == "got it"


def test_reentrant_in_one_thread_exclusive_between_threads(tmp_path):
    with publish_lock(tmp_path):
        with publish_lock(tmp_path, timeout=0):  # nested: no self-deadlock
            assert isinstance(_in_thread(lambda: _try(tmp_path)), TimeoutError)
        assert isinstance(_in_thread(lambda: _try(tmp_path)), TimeoutError)  # still held
    assert _in_thread(lambda: _try(tmp_path)) == "got it"


def test_lock_collection_excludes_other_transactions_on_postgresql(catalog_url):
    sessions = sessionmaker(create_engine(catalog_url))
    with sessions.begin() as first:
        lock_collection(first, "c")
        with sessions.begin() as second:
            if catalog_url.startswith("sqlite"):
                lock_collection(second, "c", timeout=0)  # one host's file: flock's job
                return
            with pytest.raises(TimeoutError, match="'c'"):
                lock_collection(second, "c", timeout=0.2)
        with sessions.begin() as third:
            lock_collection(third, "other", timeout=0)  # another collection is not blocked
    with sessions.begin() as fourth:  # released by the first transaction's commit
        lock_collection(fourth, "c", timeout=0)
