"""What every HTTP route needs from the server: its core, API keys, jobs, limits; who calls."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import Request

from service.auth import Authenticator, Principal, key_from_metadata
from service.browse import Catalogue
from service.core import SimilarityCore
from service.errors import InvalidInput, Unavailable
from service.jobs.core import JobsCore
from service.jobs.inputs import DEFAULT_MAX_AGE_SECONDS, inputs_root
from service.servicer import Caller

# the header a client sets to bound a call, like a gRPC deadline (seconds)
TIMEOUT_HEADER = "x-request-timeout"
MAX_TIMEOUT_SECONDS = 3600.0


@dataclass
class WebContext:
    """The server's objects as the HTTP routes see them. ``core`` is called per request (None
    while the model and index load), as the gRPC servicer's provider is."""

    core: Callable[[], SimilarityCore | None]
    authenticator: Authenticator | None = None
    jobs: JobsCore | None = None
    artifacts_root: str = "var/jobs"
    max_body_bytes: int = 16 * 1024 * 1024      # a request's body (the gRPC message limit)
    max_upsert_bytes: int = 256 * 1024 * 1024   # an upsert's body (the Upsert stream limit)
    metrics: object | None = None
    max_threads: int = 64  # routes running at once (they block on batches), as gRPC's workers
    # images uploaded for jobs and named by no unfinished job are removed after this long
    inputs_max_age_seconds: float = DEFAULT_MAX_AGE_SECONDS
    _catalogues: dict[int, Catalogue] = field(default_factory=dict)

    def require_core(self) -> SimilarityCore:
        core = self.core()
        if core is None:
            raise Unavailable("model and index are still loading")
        return core

    def catalogue(self, core: SimilarityCore) -> Catalogue:
        """One Catalogue (and thumbnail cache) per core: a reload keeps the core, a restart
        makes a new one."""
        cat = self._catalogues.get(id(core))
        if cat is None or cat.core is not core:
            self._catalogues.clear()
            cat = self._catalogues[id(core)] = Catalogue(core)
        return cat

    def principal(self, request: Request) -> Principal | None:
        if self.authenticator is None:
            return None
        return self.authenticator.authenticate(key_from_metadata(request.headers.items()))

    def caller(self, request: Request) -> tuple[SimilarityCore, Caller]:
        """The core and the caller (API key, deadline) of a similarity or catalogue call."""
        core = self.require_core()
        return core, Caller(core, self.principal(request), deadline_of(request))

    def require_jobs(self, request: Request, access: str) -> JobsCore:
        """Jobs need a write key to submit or cancel, any valid key to read (as over gRPC)."""
        if self.jobs is None:
            raise Unavailable("this server runs no JobService")
        p = self.principal(request)
        if p is not None:
            p.require(access, [])
        return self.jobs

    @property
    def inputs_dir(self) -> Path:
        return inputs_root(self.artifacts_root)


def deadline_of(request: Request) -> float | None:
    raw = request.headers.get(TIMEOUT_HEADER)
    if raw is None:
        return None
    try:
        seconds = float(raw)
    except ValueError:
        raise InvalidInput(f"{TIMEOUT_HEADER} must be a number of seconds, got {raw[:40]!r}") \
            from None
    if not 0 < seconds <= MAX_TIMEOUT_SECONDS:
        raise InvalidInput(f"{TIMEOUT_HEADER} must be in (0, {MAX_TIMEOUT_SECONDS:g}] seconds")
    return time.monotonic() + seconds
