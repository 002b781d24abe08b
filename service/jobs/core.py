"""The jobs API in plain Python (submit, get, list, cancel), used by gRPC JobService and the CLI."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from service.errors import FailedPrecondition, InvalidInput, NotFound
from service.jobs.params import params_to_json, parse_params
from service.jobs.registry import get_kind
from service.jobs.store import (
    InvalidTransition,
    JobRow,
    JobState,
    create_job,
    get_job,
    list_jobs,
    request_cancel,
)

MAX_LIST = 500


@dataclass(frozen=True)
class Artifact:
    name: str
    path: str
    media_type: str
    caption: str


@dataclass(frozen=True)
class JobInfo:
    id: int
    kind: str
    state: JobState
    progress: float
    message: str
    params: dict[str, Any]
    error: str
    artifacts: tuple[Artifact, ...]
    cancel_requested: bool
    created_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None

    @classmethod
    def from_row(cls, row: JobRow) -> JobInfo:
        return cls(row.id, row.kind, JobState(row.state), float(row.progress), row.message,
                   dict(row.params or {}), row.error or "",
                   tuple(Artifact(a.get("name", ""), a.get("path", ""), a.get("media_type", ""),
                                  a.get("caption", "")) for a in row.artifacts or []),
                   bool(row.cancel_requested), _utc(row.created_at), _utc(row.started_at),
                   _utc(row.finished_at))

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "kind": self.kind, "state": self.state.value,
                "progress": self.progress, "message": self.message, "params": self.params,
                "error": self.error, "cancel_requested": self.cancel_requested,
                "artifacts": [a.__dict__ for a in self.artifacts],
                "created_at": _iso(self.created_at), "started_at": _iso(self.started_at),
                "finished_at": _iso(self.finished_at)}


def _utc(t: datetime | None) -> datetime | None:
    """SQLite returns naive datetimes; every stored time is UTC."""
    return t.replace(tzinfo=UTC) if t is not None and t.tzinfo is None else t


def _iso(t: datetime | None) -> str:
    return t.isoformat() if t else ""


class JobsCore:
    """Validates requests and records them; the worker (not this class) runs the jobs."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self.sessions = sessions

    def submit(self, kind: str, params: dict[str, Any] | str | None = None) -> JobInfo:
        """Queue a job; params (a dict or a JSON object string) are checked against the kind."""
        if isinstance(params, str):
            try:
                params = json.loads(params) if params.strip() else {}
            except json.JSONDecodeError as e:
                raise InvalidInput(f"params are not valid JSON: {e}") from e
        try:
            k = get_kind(kind)
            # an empty string or None means "no parameters"; any other non-object ([] too) is
            # refused by parse_params rather than silently read as {}
            parsed = parse_params(k, {} if params is None else params)
        except ValueError as e:
            raise InvalidInput(str(e)) from e
        with self.sessions.begin() as s:
            return JobInfo.from_row(create_job(s, kind, params_to_json(parsed)))

    def get(self, job_id: int) -> JobInfo:
        with self.sessions() as s:
            row = get_job(s, job_id)
            if row is None:
                raise NotFound(f"no job with id {job_id}")
            return JobInfo.from_row(row)

    def list(self, *, state: str | JobState | None = None, kind: str = "",
             limit: int = 50) -> list[JobInfo]:
        if not 0 <= limit <= MAX_LIST:
            raise InvalidInput(f"limit must be between 1 and {MAX_LIST}, got {limit}")
        try:
            st = JobState(state) if state else None
        except ValueError as e:
            raise InvalidInput(f"unknown state {state!r}; valid: "
                               f"{', '.join(s.value for s in JobState)}") from e
        with self.sessions() as s:
            return [JobInfo.from_row(r) for r in list_jobs(s, state=st, kind=kind or None,
                                                           limit=limit or 50)]

    def cancel(self, job_id: int) -> JobInfo:
        with self.sessions.begin() as s:
            try:
                row = request_cancel(s, job_id)
            except InvalidTransition as e:
                raise FailedPrecondition(str(e)) from e
            if row is None:
                raise NotFound(f"no job with id {job_id}")
            return JobInfo.from_row(row)
