"""The jobs table in the catalogue DB and its repository functions (the caller owns the session)."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, Boolean, DateTime, Float, Integer, String, Text, select, update
from sqlalchemy.orm import Mapped, Session, mapped_column, sessionmaker

from indexer.catalog import Base, open_catalog


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


def open_job_store(url: str) -> sessionmaker[Session]:
    """Connect to the catalogue (migrated by the indexer) and create the ``jobs`` table if it is
    missing: the catalogue's migrations own only its own tables, other packages create theirs."""
    sessions = open_catalog(url)
    engine = sessions.kw["bind"]
    Base.metadata.create_all(engine, tables=[JobRow.__table__])
    return sessions


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
                    message="running").execution_options(synchronize_session=False))
        if res.rowcount == 1:
            row = session.get(JobRow, job_id)
            session.refresh(row)
            return row
    return None


def set_progress(session: Session, job_id: int, progress: float, message: str,
                 artifacts: list[dict[str, str]] | None = None) -> bool:
    """Record progress of a running job; returns whether a cancel has been requested."""
    values: dict[str, Any] = {"progress": max(0.0, min(1.0, float(progress))),
                              "message": message[:1024]}
    if artifacts is not None:
        values["artifacts"] = artifacts
    session.execute(update(JobRow).where(JobRow.id == job_id,
                                         JobRow.state == JobState.RUNNING.value)
                    .values(**values).execution_options(synchronize_session=False))
    flag = session.scalar(select(JobRow.cancel_requested).where(JobRow.id == job_id))
    return bool(flag)


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


def fail_orphaned_jobs(session: Session, host: str, is_alive) -> list[int]:
    """Mark failed the running jobs of dead worker processes on ``host`` (workers are named
    ``host:pid``; ``is_alive(pid)`` tells). Returns their ids."""
    rows = session.scalars(select(JobRow).where(JobRow.state == JobState.RUNNING.value,
                                                JobRow.worker.like(f"{host}:%")))
    failed = []
    for row in rows:
        pid = row.worker.rsplit(":", 1)[1]
        if pid.isdigit() and not is_alive(int(pid)):
            transition(row, JobState.FAILED)
            row.error = f"worker {row.worker} exited while the job was running"
            row.message = "failed"
            failed.append(row.id)
    return failed
