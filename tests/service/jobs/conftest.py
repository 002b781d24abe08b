"""Fixtures of the jobs tests: a fresh job store, and test-only job kinds."""

from __future__ import annotations

import time
from dataclasses import dataclass

import pytest

from service.jobs.context import JobContext
from service.jobs.registry import JOB_KINDS, register_job


@dataclass(frozen=True)
class LoopParams:
    seconds: float = 10.0
    fail: bool = False


def _loop(p: LoopParams, ctx: JobContext) -> None:
    """Writes an artifact, then reports progress until `seconds` pass (or it is cancelled)."""
    f = ctx.path("note.txt")
    f.write_text("hello")
    ctx.add_artifact(f, "a note")
    if p.fail:
        raise RuntimeError("asked to fail")
    t0 = time.monotonic()
    while time.monotonic() - t0 < p.seconds:
        ctx.progress((time.monotonic() - t0) / p.seconds, "looping", force=True)
        time.sleep(0.02)


# package scope: the kind is gone again before other packages' tests list the kinds (the
# web API's test checks that every listed parameter has help, which this one has not)
@pytest.fixture(scope="package", autouse=True)
def loop_kind():
    if "test-loop" not in JOB_KINDS:
        register_job("test-loop", LoopParams, "test only: loop until cancelled")(_loop)
    yield
    JOB_KINDS.pop("test-loop", None)


@pytest.fixture
def store(tmp_path):
    from service.jobs.store import open_job_store

    url = f"sqlite:///{tmp_path / 'cat.db'}"
    return url, open_job_store(url)
