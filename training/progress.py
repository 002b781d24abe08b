"""Progress of long work: a tqdm bar on a terminal, periodic plain log lines everywhere else.

tqdm with ``disable=None`` is silent when its stream is not a terminal, so a log file, CI or
``docker logs`` saw nothing for a whole epoch. :func:`progress` keeps the bar for people at a
terminal and, elsewhere, logs one line every ``interval`` seconds (done/total, rate, ETA and the
postfix, e.g. the loss), plus a closing line when it logged any. Both kinds offer the part of
tqdm's interface the code uses: iteration, ``update``, ``set_postfix``, ``close`` and ``with``.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import IO, Any, Protocol

from tqdm import tqdm

log = logging.getLogger(__name__)

DEFAULT_INTERVAL = 10.0  # seconds between two plain progress lines
CLOCK: Callable[[], float] = time.monotonic  # read when a LogProgress starts (tests replace it)


class ProgressBar(Protocol):
    """What callers may do with the object :func:`progress` returns."""

    def update(self, n: int = 1) -> Any: ...
    def set_postfix(self, **kwargs: Any) -> Any: ...
    def close(self) -> Any: ...


def progress(iterable: Iterable | None = None, *, total: int | None = None, desc: str = "",
             unit: str = "it", enabled: bool = True, initial: int = 0, leave: bool = True,
             stream: IO[str] | None = None, interval: float = DEFAULT_INTERVAL,
             clock: Callable[[], float] | None = None, **bar_kwargs: Any):
    """A tqdm bar when ``stream`` (default: stderr, where tqdm and the logs go) is a terminal,
    else a :class:`LogProgress` that logs a line every ``interval`` seconds; nothing at all
    when not ``enabled``. Iterate over it, or ``update(n)`` it; ``set_postfix(loss=...)``
    adds to the next line."""
    stream = sys.stderr if stream is None else stream
    if enabled and _is_terminal(stream):
        return tqdm(iterable, total=total, desc=desc, unit=unit, initial=initial, leave=leave,
                    file=stream, **bar_kwargs)
    return LogProgress(iterable, total=total, desc=desc, unit=unit, initial=initial,
                       interval=interval if enabled else float("inf"), clock=clock)


def _is_terminal(stream: IO[str]) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


class LogProgress:
    """Progress as plain log lines: ``<desc>: 120/400 img (30%), 35.2 img/s, ETA 0:08, loss=0.02``
    at most every ``interval`` seconds (measured by ``clock``), and a last line on ``close``
    when any was logged (short work stays silent)."""

    def __init__(self, iterable: Iterable | None = None, *, total: int | None = None,
                 desc: str = "", unit: str = "it", initial: int = 0,
                 interval: float = DEFAULT_INTERVAL,
                 clock: Callable[[], float] | None = None) -> None:
        if total is None and iterable is not None:
            try:
                total = len(iterable)  # type: ignore[arg-type]
            except TypeError:
                total = None
        self.iterable, self.total, self.desc, self.unit = iterable, total, desc, unit
        self.n, self._start_n = initial, initial
        self.interval, self.clock = interval, clock or CLOCK
        self.t0 = self._last = self.clock()
        self.postfix: dict[str, Any] = {}
        self.lines = 0  # lines logged so far
        self.closed = False

    def __iter__(self) -> Iterator:
        if self.iterable is None:
            raise TypeError("LogProgress without an iterable: call update() instead")
        try:
            for item in self.iterable:
                yield item
                self.update(1)
        finally:
            self.close()

    def __enter__(self) -> LogProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def update(self, n: int = 1) -> None:
        self.n += n
        now = self.clock()
        if now - self._last >= self.interval:
            self._last = now
            self._log(now)

    def set_postfix(self, ordered_dict: dict[str, Any] | None = None, **kwargs: Any) -> None:
        self.postfix = {**(ordered_dict or {}), **kwargs}

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.lines:
            self._log(self.clock(), done=True)

    def line(self, now: float, *, done: bool = False) -> str:
        """The text of one progress line at time ``now``."""
        elapsed = max(now - self.t0, 0.0)
        rate = (self.n - self._start_n) / elapsed if elapsed > 0 else 0.0
        count = f"{self.n}/{self.total}" if self.total else f"{self.n}"
        parts = [f"{count} {self.unit}" + (f" ({100 * self.n / self.total:.0f}%)"
                                           if self.total else "")]
        parts.append(f"{rate:.1f} {self.unit}/s")
        if done:
            parts.append(f"done in {_clock(elapsed)}")
        elif self.total and rate > 0:
            parts.append(f"ETA {_clock(max(self.total - self.n, 0) / rate)}")
        parts += [f"{k}={v}" for k, v in self.postfix.items()]
        return f"{self.desc or 'progress'}: " + ", ".join(parts)

    def _log(self, now: float, *, done: bool = False) -> None:
        self.lines += 1
        log.info("%s", self.line(now, done=done))


def _clock(seconds: float) -> str:
    s = int(round(seconds))
    h, rest = divmod(s, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"
