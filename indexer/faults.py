"""Fault injection for crash tests: ``IMGSIM_FAULT_INJECT=<point>`` SIGKILLs the process there.

Random kills rarely land in the few milliseconds between publishing an index version and
committing the catalogue transaction that goes with it; the crash tests and
``benchmarks/crash_trials.py`` name that point instead. Points:

- ``after-index-publish``: CURRENT names the new version, the catalogue has not committed
  (Upsert and Delete in :mod:`service.mutations`, ``imgsim reindex``'s publish).

The variable is read only when a point is reached, so an unset one costs a dict lookup.
"""

from __future__ import annotations

import logging
import os
import signal

FAULT_ENV = "IMGSIM_FAULT_INJECT"
AFTER_INDEX_PUBLISH = "after-index-publish"

log = logging.getLogger(__name__)


def fault_point(name: str) -> None:
    """Die here, as ``kill -9`` would (no cleanup, no ``finally``), if ``$IMGSIM_FAULT_INJECT``
    names this point."""
    if os.environ.get(FAULT_ENV) == name:
        log.warning("fault injection: SIGKILL at %s", name)
        os.kill(os.getpid(), signal.SIGKILL)
