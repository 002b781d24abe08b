"""The job worker: claims queued jobs from the catalogue DB and runs them outside the request
path, in background threads of the server or in its own process (`imgsim jobs worker`)."""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
import time
import traceback
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from service.jobs.context import JobCancelled, JobContext, JobDefaults
from service.jobs.inputs import inputs_root, release_inputs
from service.jobs.params import parse_params
from service.jobs.registry import get_kind, load_builtin_kinds
from service.jobs.report import HtmlReport, job_title
from service.jobs.store import (
    InvalidTransition,
    JobRow,
    JobState,
    claim_next,
    fail_orphaned_jobs,
    finish_job,
    get_job,
    heartbeat,
    open_job_store,
    set_progress,
)
from training.settings import DEFAULT_JOBS_ROOT, common_settings

log = logging.getLogger(__name__)

DEFAULT_ARTIFACTS_ROOT = DEFAULT_JOBS_ROOT


def default_artifacts_root() -> str:
    """$IMGSIM_JOBS_ROOT, read when asked (not at import), else var/jobs."""
    return common_settings()[0].jobs_root or DEFAULT_ARTIFACTS_ROOT


@dataclass(frozen=True)
class WorkerConfig:
    catalog_url: str
    artifacts_root: str = field(default_factory=default_artifacts_root)
    concurrency: int = 1          # jobs run at the same time (threads)
    poll_seconds: float = 1.0
    kinds: frozenset[str] | None = None  # None: every registered kind
    defaults: JobDefaults = field(default_factory=JobDefaults)
    name: str = ""                # worker id stored on claimed jobs (default host:pid:token)
    progress_interval: float = 0.5
    heartbeat_seconds: float = 15.0  # a running job's heartbeat, from a thread of its own
    lease_seconds: float = 120.0     # no heartbeat for this long: the job's worker is dead

    def __post_init__(self) -> None:
        if not self.lease_seconds > 2 * self.heartbeat_seconds > 0:
            raise ValueError(f"lease_seconds ({self.lease_seconds}) must exceed twice "
                             f"heartbeat_seconds ({self.heartbeat_seconds}), which must be > 0")


# The workers alive in this process, by name: a running job named after this process's pid but
# owned by none of them was left by an earlier process that had the same pid.
_LIVE_WORKERS: weakref.WeakValueDictionary[str, JobWorker] = weakref.WeakValueDictionary()


class JobWorker:
    """Runs jobs from the queue. ``run_one`` is synchronous (tests, `--once`); ``start``
    launches ``concurrency`` polling threads that ``stop`` ends after their current job."""

    def __init__(self, cfg: WorkerConfig, *, sessions: sessionmaker[Session] | None = None) -> None:
        self.cfg = cfg
        self.sessions = sessions or open_job_store(cfg.catalog_url)
        self.name = cfg.name or f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        _LIVE_WORKERS[self.name] = self
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._last_recovery = 0.0
        load_builtin_kinds()
        self.recover()

    def recover(self) -> list[int]:
        """Fail the jobs left running by dead workers (a killed server or worker process, here
        or, once their heartbeat is older than the lease, anywhere); rewrite their reports so
        that their partial results are marked as such. Returns their ids."""
        self._last_recovery = time.monotonic()
        with self.sessions.begin() as s:
            ids = fail_orphaned_jobs(s, host=socket.gethostname(), pid=os.getpid(),
                                     is_alive=_pid_alive, live_workers=set(_LIVE_WORKERS),
                                     lease_seconds=self.cfg.lease_seconds)
        if ids:
            log.warning("marked %d orphaned job(s) failed: %s", len(ids), ids)
        for job_id in ids:
            try:
                with self.sessions.begin() as s:
                    row = get_job(s, job_id)
                    row.artifacts = orphan_report(row)
            except OSError:
                log.warning("could not write the report of orphaned job %d", job_id)
        return ids

    # -- running ----------------------------------------------------------------------------
    def run_one(self) -> int | None:
        """Claim the oldest queued job and run it to a terminal state; its id, or None."""
        with self.sessions.begin() as s:
            row = claim_next(s, self.name, kinds=set(self.cfg.kinds) if self.cfg.kinds else None)
            if row is None:
                return None
            job_id, kind_name, raw = row.id, row.kind, dict(row.params or {})
            created_at = row.created_at
        log.info("job %d (%s) started", job_id, kind_name)
        out_dir = Path(self.cfg.artifacts_root) / str(job_id)
        ctx = JobContext(job_id, kind_name, out_dir, defaults=self.cfg.defaults,
                         sink=self._sink(job_id), min_interval=self.cfg.progress_interval)
        try:
            kind = get_kind(kind_name)
            with self._heartbeat(job_id):
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
        try:  # images uploaded for this job only (service.jobs.inputs)
            release_inputs(self.sessions, inputs_root(self.cfg.artifacts_root), raw,
                           created_at=created_at)
        except Exception:
            log.warning("job %d: could not release its uploaded inputs", job_id, exc_info=True)
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

    @contextmanager
    def _heartbeat(self, job_id: int) -> Iterator[None]:
        """Refresh the job's heartbeat from a thread while it runs, so that a long stretch
        without progress reports does not look like a dead worker."""
        done = threading.Event()

        def beat() -> None:
            while not done.wait(self.cfg.heartbeat_seconds):
                try:
                    with self.sessions.begin() as s:
                        heartbeat(s, self.name, [job_id])
                except Exception:  # the DB may be away for a moment; the lease allows for it
                    log.warning("heartbeat of job %d failed", job_id, exc_info=True)

        t = threading.Thread(target=beat, name=f"job-{job_id}-heartbeat", daemon=True)
        t.start()
        try:
            yield
        finally:
            done.set()
            t.join()

    def _finish(self, job_id: int, state: JobState, ctx: JobContext, *, message: str,
                error: str = "") -> None:
        try:
            if state != JobState.SUCCEEDED and ctx.artifacts:
                ctx.report.status = f"This job {state.value}: its results are partial."
                ctx.write_report()  # partial results stay browsable
        except OSError:
            log.warning("could not write the report of job %d", job_id)
        try:
            with self.sessions.begin() as s:
                finish_job(s, job_id, state, message=message, error=error,
                           artifacts=ctx.artifacts)
        except InvalidTransition as e:  # failed meanwhile as orphaned (our lease ran out)
            log.warning("job %d: result dropped: %s", job_id, e)

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
                if time.monotonic() - self._last_recovery > self.cfg.heartbeat_seconds:
                    try:  # jobs of workers that died elsewhere: their lease runs out
                        self.recover()
                    except Exception:
                        log.exception("job recovery failed")
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


def orphan_report(row: JobRow) -> list[dict[str, str]]:
    """Write (over any earlier one) the report of a job whose worker died: a banner saying it
    failed, then the artifacts it had finished, if its folder is on this machine. Returns the
    job's artifacts with this report in place of an old one."""
    kept = [a for a in row.artifacts or [] if a.get("name") != "report.html"]
    local = [a for a in kept if Path(a.get("path", "")).is_file()]
    if not local:
        return list(row.artifacts or [])
    out_dir = Path(local[0]["path"]).parent
    report = HtmlReport(job_title(row.id, row.kind),
                        status=f"This job failed: {row.error}")
    for a in local:
        if a.get("media_type", "").startswith("image/"):
            report.image(a["path"], a.get("caption") or a["name"], base=out_dir)
    path = report.write(out_dir / "report.html").resolve()
    return [*kept, {"name": path.name, "path": str(path), "media_type": "text/html",
                    "caption": "HTML report of this job (failed: partial results)"}]


def job_row_summary(row: JobRow) -> str:
    return f"{row.id} {row.kind} {row.state} {row.progress:.0%} {row.message}"
