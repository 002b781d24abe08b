"""The jobs table in the catalogue DB and its repository functions (the caller owns the session)."""

from __future__ import annotations

from collections.abc import Callable, Collection
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, Boolean, DateTime, Float, Integer, String, Text, select, update
from sqlalchemy.orm import Mapped, Session, mapped_column, sessionmaker

from imgsim.db.schema import Base
from indexer.catalog import open_catalog


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


TERMINAL = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED})
# queued -> running -> succeeded | failed | cancelled; a queued job can also be cancelled directly
TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    JobState.QUEUED: frozenset({JobState.RUNNING, JobState.CANCELLED}),
    JobState.RUNNING: frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED}),
    **{s: frozenset() for s in TERMINAL},
}


class InvalidTransition(ValueError):
    """A job state change the state machine does not allow (e.g. cancelling a finished job)."""


def _now() -> datetime:
    return datetime.now(UTC)


class JobRow(Base):
    """An offline job: what to run (kind + JSON params), where it stands, what it produced."""

    __tablename__ = "jobs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(64), index=True)
    state: Mapped[str] = mapped_column(String(16), index=True, default=JobState.QUEUED.value)
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    message: Mapped[str] = mapped_column(String(1024), default="")
    error: Mapped[str] = mapped_column(Text, default="")
    # [{"name", "path", "media_type", "caption"}, ...]; paths are absolute
    artifacts: Mapped[list[dict[str, str]]] = mapped_column(JSON, default=list)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    worker: Mapped[str] = mapped_column(String(128), default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    # refreshed by the running worker (claim, progress, a heartbeat thread); a running job whose
    # heartbeat is older than the lease belongs to a dead worker (see fail_orphaned_jobs)
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


def open_job_store(url: str) -> sessionmaker[Session]:
    """Connect to the catalogue, migrated to the latest revision: its Alembic migrations own the
    ``jobs`` table too (imgsim/db/migrations/versions/0003_jobs.py)."""
    return open_catalog(url)


def create_job(session: Session, kind: str, params: dict[str, Any]) -> JobRow:
    row = JobRow(kind=kind, params=dict(params), state=JobState.QUEUED.value, progress=0.0,
                 message="queued", error="", artifacts=[], cancel_requested=False,
                 created_at=_now())
    session.add(row)
    session.flush()
    return row


def get_job(session: Session, job_id: int) -> JobRow | None:
    return session.get(JobRow, int(job_id))


def list_jobs(session: Session, *, state: JobState | None = None, kind: str | None = None,
              limit: int = 50) -> list[JobRow]:
    """Newest first."""
    q = select(JobRow).order_by(JobRow.id.desc()).limit(limit)
    if state is not None:
        q = q.where(JobRow.state == JobState(state).value)
    if kind:
        q = q.where(JobRow.kind == kind)
    return list(session.scalars(q))


def claim_next(session: Session, worker: str, *, kinds: set[str] | None = None) -> JobRow | None:
    """Atomically move the oldest queued job (of ``kinds``) to running for ``worker``.

    The conditional UPDATE (``WHERE state = 'queued'``) makes two workers, in threads or in
    processes, never run the same job: only one of them sees a row count of 1.
    """
    q = select(JobRow.id).where(JobRow.state == JobState.QUEUED.value).order_by(JobRow.id)
    if kinds is not None:
        q = q.where(JobRow.kind.in_(sorted(kinds)))
    for job_id in session.scalars(q.limit(20)).all():
        res = session.execute(
            update(JobRow).where(JobRow.id == job_id, JobRow.state == JobState.QUEUED.value)
            .values(state=JobState.RUNNING.value, worker=worker, started_at=_now(),
                    heartbeat_at=_now(), message="running").execution_options(synchronize_session=False))
        if res.rowcount == 1:
            row = session.get(JobRow, job_id)
            session.refresh(row)
            return row
    return None


def set_progress(session: Session, job_id: int, progress: float, message: str,
                 artifacts: list[dict[str, str]] | None = None) -> bool:
    """Record progress of a running job; returns whether it should stop: a cancel was requested,
    or it is no longer running (failed meanwhile as orphaned, its lease having expired)."""
    values: dict[str, Any] = {"progress": max(0.0, min(1.0, float(progress))),
                              "message": message[:1024], "heartbeat_at": _now()}
    if artifacts is not None:
        values["artifacts"] = artifacts
    session.execute(update(JobRow).where(JobRow.id == job_id,
                                         JobRow.state == JobState.RUNNING.value)
                    .values(**values).execution_options(synchronize_session=False))
    row = session.execute(select(JobRow.cancel_requested, JobRow.state)
                          .where(JobRow.id == job_id)).one_or_none()
    return row is None or bool(row.cancel_requested) or row.state != JobState.RUNNING.value


def heartbeat(session: Session, worker: str, job_ids: Collection[int]) -> int:
    """Refresh the heartbeat of ``worker``'s running jobs among ``job_ids``; how many."""
    if not job_ids:
        return 0
    res = session.execute(update(JobRow).where(JobRow.id.in_(sorted(job_ids)),
                                               JobRow.worker == worker,
                                               JobRow.state == JobState.RUNNING.value)
                          .values(heartbeat_at=_now()).execution_options(synchronize_session=False))
    return res.rowcount


def transition(row: JobRow, new: JobState) -> None:
    """Change ``row.state`` if the state machine allows it, else raise InvalidTransition."""
    old = JobState(row.state)
    if new not in TRANSITIONS[old]:
        raise InvalidTransition(f"job {row.id} is {old.value}; it cannot become {new.value}")
    row.state = new.value
    if new in TERMINAL:
        row.finished_at = _now()


def finish_job(session: Session, job_id: int, state: JobState, *, message: str = "",
               error: str = "", artifacts: list[dict[str, str]] | None = None) -> JobRow:
    row = session.get(JobRow, job_id, with_for_update=True)
    if row is None:
        raise KeyError(job_id)
    session.refresh(row)
    transition(row, state)
    row.message = message or state.value
    row.error = error
    if state == JobState.SUCCEEDED:
        row.progress = 1.0
    if artifacts is not None:
        row.artifacts = artifacts
    return row


def request_cancel(session: Session, job_id: int) -> JobRow | None:
    """Cancel a queued job at once; flag a running one (its worker stops at the next progress
    report). Raises InvalidTransition for a finished job; returns None for an unknown id."""
    row = session.get(JobRow, job_id, with_for_update=True)
    if row is None:
        return None
    session.refresh(row)
    state = JobState(row.state)
    if state == JobState.QUEUED:
        # conditional, so that a worker claiming it at this moment wins or loses cleanly
        res = session.execute(update(JobRow).where(JobRow.id == job_id,
                                                   JobRow.state == JobState.QUEUED.value)
                              .values(state=JobState.CANCELLED.value, finished_at=_now(),
                                      message="cancelled before it started",
                                      cancel_requested=True)
                              .execution_options(synchronize_session=False))
        if res.rowcount == 1:
            session.refresh(row)
            return row
        session.refresh(row)  # a worker took it first: fall through to the running case
        state = JobState(row.state)
    if state == JobState.RUNNING:
        row.cancel_requested = True
        row.message = "cancel requested"
        return row
    raise InvalidTransition(f"job {job_id} already {state.value}; nothing to cancel")


def parse_worker_name(name: str) -> tuple[str, int] | None:
    """(host, pid) of a worker named ``host:pid`` or ``host:pid:token``; None for other names."""
    parts = name.split(":")
    if len(parts) in (2, 3) and parts[1].isdigit():
        return parts[0], int(parts[1])
    return None


def orphan_reason(worker: str, heartbeat_at: datetime | None, *, host: str, pid: int,
                  is_alive: Callable[[int], bool], live_workers: Collection[str],
                  stale_before: datetime) -> str | None:
    """Why a running job of ``worker`` has no live worker any more, or None when it may have.

    - its process, on this host, is gone (known at once);
    - its pid is this very process's but it is none of this process's live workers: an earlier
      process had that pid (a restarted container's server is pid 1 again);
    - no heartbeat since ``stale_before`` (another host, another container, a reused pid)."""
    owner = parse_worker_name(worker)
    if owner is not None and owner[0] == host:
        if owner[1] == pid and worker not in live_workers:
            return f"worker {worker} is gone (this process has its pid now)"
        if owner[1] != pid and not is_alive(owner[1]):
            return f"worker {worker} exited while the job was running"
    beat = heartbeat_at.replace(tzinfo=UTC) if heartbeat_at and not heartbeat_at.tzinfo \
        else heartbeat_at
    if beat is None or beat < stale_before:
        seen = beat.isoformat(timespec="seconds") if beat else "never"
        return f"worker {worker or '?'} stopped sending heartbeats (last: {seen})"
    return None


def fail_orphaned_jobs(session: Session, *, host: str, pid: int, is_alive: Callable[[int], bool],
                       live_workers: Collection[str] = (), lease_seconds: float = 300.0,
                       now: datetime | None = None) -> list[int]:
    """Mark failed the running jobs whose worker died (see :func:`orphan_reason`): they would
    otherwise stay running forever. Their artifacts are whatever the worker had finished; the
    error says they are partial. Returns the ids."""
    stale_before = (now or _now()) - timedelta(seconds=lease_seconds)
    rows = session.scalars(select(JobRow).where(JobRow.state == JobState.RUNNING.value)
                           .with_for_update())
    failed = []
    for row in rows:
        reason = orphan_reason(row.worker, row.heartbeat_at, host=host, pid=pid,
                               is_alive=is_alive, live_workers=live_workers,
                               stale_before=stale_before)
        if reason is None:
            continue
        transition(row, JobState.FAILED)
        n = len(row.artifacts or [])
        row.error = (f"{reason}; the job did not finish"
                     + (f" and its {n} artifact(s) are partial results" if n else ""))
        row.message = "failed: its worker died"
        failed.append(row.id)
    return failed
