"""Images uploaded for a job's parameters (HTTP ``POST /v1/jobs/inputs``), stored by content
under ``<artifacts root>/inputs/<sha256[:16]>/<name>``, and their removal: by the worker when
the job that named them ends, and by an age-based sweep for the rest (a job cancelled while
queued, a worker that died, an upload no job ever named).

An input folder is kept while a queued or running job names a file in it. One uploaded again
(its folder's time refreshed) after a job was created may be meant for another job still to be
submitted: that job's end leaves it to the sweep."""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from service.jobs.store import JobRow, JobState

log = logging.getLogger(__name__)

INPUTS_DIR = "inputs"
DEFAULT_MAX_AGE_SECONDS = 24 * 3600.0


def inputs_root(artifacts_root: str | Path) -> Path:
    return Path(artifacts_root) / INPUTS_DIR


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list | tuple):
        for v in value:
            yield from _strings(v)


def input_folders(params: dict[str, Any], root: Path) -> set[Path]:
    """The input folders under ``root`` that a job's parameters name files in."""
    base = root.resolve()
    found = set()
    for s in _strings(params):
        if not s or "\x00" in s:
            continue
        try:
            rel = Path(s).resolve().relative_to(base)
        except (ValueError, OSError):
            continue
        if len(rel.parts) >= 2:  # <folder>/<file>, not the root or a folder itself
            found.add(base / rel.parts[0])
    return found


def _in_use(session: Session, root: Path) -> set[Path]:
    rows = session.scalars(select(JobRow.params).where(
        JobRow.state.in_([JobState.QUEUED.value, JobState.RUNNING.value])))
    used: set[Path] = set()
    for params in rows:
        used |= input_folders(dict(params or {}), root)
    return used


def _remove(folders: Iterable[Path]) -> int:
    n = 0
    for f in folders:
        try:
            shutil.rmtree(f)
            n += 1
        except FileNotFoundError:
            pass
        except OSError as e:
            log.warning("could not remove job input %s: %s", f, e)
    return n


def release_inputs(sessions: sessionmaker[Session], root: Path, params: dict[str, Any], *,
                   created_at: datetime | None) -> int:
    """After a job ended: remove the input folders it named, except those another unfinished
    job names and those uploaded again since the job was created. Returns how many."""
    mine = {f for f in input_folders(params, root) if f.is_dir()}
    if not mine:
        return 0
    with sessions() as s:
        mine -= _in_use(s, root)
    if created_at is not None:  # SQLite gives naive times; every stored time is UTC
        since = (created_at if created_at.tzinfo else created_at.replace(tzinfo=UTC)).timestamp()
        mine = {f for f in mine if f.stat().st_mtime <= since}
    return _remove(mine)


def sweep_inputs(sessions: sessionmaker[Session], root: Path, *,
                 max_age_seconds: float = DEFAULT_MAX_AGE_SECONDS,
                 now: float | None = None) -> int:
    """Remove the input folders untouched for ``max_age_seconds`` that no queued or running
    job names. Returns how many."""
    if not root.is_dir():
        return 0
    cutoff = (time.time() if now is None else now) - max_age_seconds
    old = set()
    for f in root.iterdir():
        try:
            if f.is_dir() and not f.is_symlink() and f.stat().st_mtime < cutoff:
                old.add(f.resolve())
        except FileNotFoundError:
            continue
    if not old:
        return 0
    with sessions() as s:
        old -= _in_use(s, root)
    n = _remove(old)
    if n:
        log.info("removed %d job input folder(s) older than %.0f s", n, max_age_seconds)
    return n


def touch(folder: Path) -> None:
    """Mark an input folder as uploaded now (the sweep's age, and ``release_inputs``)."""
    os.utime(folder)
