"""The job worker: claims queued jobs from the catalogue DB and runs them outside the request
path, in background threads of the server or in its own process (`imgsim jobs worker`)."""

from __future__ import annotations

import logging
import os
import socket
import threading
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from service.jobs.context import JobCancelled, JobContext, JobDefaults
from service.jobs.registry import get_kind, load_builtin_kinds, parse_params
from service.jobs.store import (
    JobRow,
    JobState,
    claim_next,
    fail_orphaned_jobs,
    finish_job,
    open_job_store,
    set_progress,
)

log = logging.getLogger(__name__)

DEFAULT_ARTIFACTS_ROOT = "var/jobs"


def default_artifacts_root() -> str:
    """$IMGSIM_JOBS_ROOT, read when asked (not at import), else var/jobs."""
    return os.environ.get("IMGSIM_JOBS_ROOT") or DEFAULT_ARTIFACTS_ROOT


@dataclass(frozen=True)
class WorkerConfig:
    catalog_url: str
    artifacts_root: str = field(default_factory=default_artifacts_root)
    concurrency: int = 1          # jobs run at the same time (threads)
    poll_seconds: float = 1.0
    kinds: frozenset[str] | None = None  # None: every registered kind
    defaults: JobDefaults = field(default_factory=JobDefaults)
    name: str = ""                # worker id stored on claimed jobs (default host:pid)
    progress_interval: float = 0.5


class JobWorker:
    """Runs jobs from the queue. ``run_one`` is synchronous (tests, `--once`); ``start``
    launches ``concurrency`` polling threads that ``stop`` ends after their current job."""

    def __init__(self, cfg: WorkerConfig, *, sessions: sessionmaker[Session] | None = None) -> None:
        self.cfg = cfg
        self.sessions = sessions or open_job_store(cfg.catalog_url)
        self.name = cfg.name or f"{socket.gethostname()}:{os.getpid()}"
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        load_builtin_kinds()
        self.recover()

    def recover(self) -> list[int]:
        """Fail the jobs left running by dead workers of this host (a killed server)."""
        with self.sessions.begin() as s:
            ids = fail_orphaned_jobs(s, socket.gethostname(), _pid_alive)
        if ids:
            log.warning("marked %d orphaned job(s) failed: %s", len(ids), ids)
        return ids

    # -- running ----------------------------------------------------------------------------
    def run_one(self) -> int | None:
        """Claim the oldest queued job and run it to a terminal state; its id, or None."""
        with self.sessions.begin() as s:
            row = claim_next(s, self.name, kinds=set(self.cfg.kinds) if self.cfg.kinds else None)
            if row is None:
                return None
            job_id, kind_name, raw = row.id, row.kind, dict(row.params or {})
        log.info("job %d (%s) started", job_id, kind_name)
        out_dir = Path(self.cfg.artifacts_root) / str(job_id)
        ctx = JobContext(job_id, kind_name, out_dir, defaults=self.cfg.defaults,
                         sink=self._sink(job_id), min_interval=self.cfg.progress_interval)
        try:
            kind = get_kind(kind_name)
            kind.run(parse_params(kind, raw), ctx)
            ctx.check_cancelled()  # a cancel that arrived during the last stretch still counts
            ctx.write_report()
            self._finish(job_id, JobState.SUCCEEDED, ctx, message="done")
            log.info("job %d (%s) succeeded with %d artifacts", job_id, kind_name,
                     len(ctx.artifacts))
        except JobCancelled:
            self._finish(job_id, JobState.CANCELLED, ctx, message="cancelled")
            log.info("job %d (%s) cancelled", job_id, kind_name)
        except Exception as e:  # a failing job must never take the worker down
            log.exception("job %d (%s) failed", job_id, kind_name)
            err = f"{type(e).__name__}: {e}"
            self._finish(job_id, JobState.FAILED, ctx, message="failed",
                         error=err + "\n" + traceback.format_exc(limit=8))
        return job_id

    def run_until_empty(self) -> list[int]:
        done = []
        while (job_id := self.run_one()) is not None:
            done.append(job_id)
        return done

    def _sink(self, job_id: int):
        def sink(progress: float, message: str, artifacts: list[dict[str, str]]) -> bool:
            with self.sessions.begin() as s:
                return set_progress(s, job_id, progress, message, artifacts)
        return sink

    def _finish(self, job_id: int, state: JobState, ctx: JobContext, *, message: str,
                error: str = "") -> None:
        try:
            if state != JobState.SUCCEEDED and ctx.artifacts:
                ctx.write_report()  # partial results stay browsable
        except OSError:
            log.warning("could not write the report of job %d", job_id)
        with self.sessions.begin() as s:
            finish_job(s, job_id, state, message=message, error=error, artifacts=ctx.artifacts)

    # -- background threads -------------------------------------------------------------------
    def start(self) -> JobWorker:
        self._stop.clear()
        for i in range(self.cfg.concurrency):
            t = threading.Thread(target=self._loop, name=f"job-worker-{i}", daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                ran = self.run_one()
            except Exception:  # DB unavailable etc.: keep polling
                log.exception("job worker loop error")
                ran = None
            if ran is None:
                self._stop.wait(self.cfg.poll_seconds)

    def stop(self, *, wait: bool = True, timeout: float | None = None) -> None:
        """Stop polling; running jobs finish first when ``wait``."""
        self._stop.set()
        if wait:
            for t in self._threads:
                t.join(timeout)
        self._threads.clear()

    def run_forever(self) -> None:
        self.start()
        try:
            while not self._stop.wait(0.5):
                pass
        finally:
            self.stop()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def job_row_summary(row: JobRow) -> str:
    return f"{row.id} {row.kind} {row.state} {row.progress:.0%} {row.message}"
