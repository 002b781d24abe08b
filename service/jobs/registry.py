"""The registry of job kinds: name -> typed parameters (a frozen dataclass) and a run function.

The built-in kinds are listed by the modules of ``service.jobs.kinds`` (``KINDS``), which know
nothing of this registry; it imports them on first use (their heavy imports are lazy)."""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable
from typing import Any

from service.jobs.params import JobKind

if typing.TYPE_CHECKING:
    from service.jobs.context import JobContext

JOB_KINDS: dict[str, JobKind] = {}


def register_job(name: str, params: type, help: str) -> Callable:
    """Decorator: ``@register_job("test-loop", LoopParams, "...")`` on ``def run(params, ctx)``
    (the built-in kinds are listed in their modules' ``KINDS`` instead)."""
    if not dataclasses.is_dataclass(params):
        raise TypeError(f"params of job kind {name!r} must be a dataclass")

    def deco(fn: Callable[[Any, JobContext], None]) -> Callable[[Any, JobContext], None]:
        if name in JOB_KINDS and JOB_KINDS[name].run is not fn:
            raise ValueError(f"job kind {name!r} is already registered")
        JOB_KINDS[name] = JobKind(name, params, fn, help)
        return fn

    return deco


def get_kind(name: str) -> JobKind:
    load_builtin_kinds()
    if name not in JOB_KINDS:
        raise ValueError(f"unknown job kind {name!r}; valid: {', '.join(sorted(JOB_KINDS))}")
    return JOB_KINDS[name]


def load_builtin_kinds() -> dict[str, JobKind]:
    """Import the modules of the built-in kinds and register their ``KINDS``."""
    from service.jobs.kinds import clustering, segmentation, visualization

    for module in (clustering, segmentation, visualization):
        for kind in module.KINDS:
            JOB_KINDS.setdefault(kind.name, kind)
    return JOB_KINDS
