"""Dynamic batching: items submitted by many request threads run together in micro-batches.

Like Triton's dynamic batcher (or clip-as-service): a worker thread takes the oldest queued
item, waits until ``max_batch`` items are queued or the oldest has waited ``max_wait_ms``,
and runs the batch function once for all of them. Under load the queue fills while a batch
runs, so the next batch starts full and nobody waits on the timer.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from service.errors import DeadlineExceeded, Overloaded, Unavailable

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

# (batcher name, batch size, queue depth after taking the batch)
BatchObserver = Callable[[str, int, int], None]


@dataclass
class _Item(Generic[T, R]):
    value: T
    deadline: float | None  # time.monotonic() seconds
    enqueued: float = field(default_factory=time.monotonic)
    future: Future = field(default_factory=Future)


_STOP = object()


class MicroBatcher(Generic[T, R]):
    """Runs ``fn(list of items) -> results (same order)`` on micro-batches in one thread.

    ``submit`` never blocks: a full queue raises :class:`Overloaded`; a deadline that passes
    while an item is queued fails it with :class:`DeadlineExceeded` without running it.
    If a batch fails, its items are retried one by one so a bad item fails only its caller.
    """

    def __init__(self, fn: Callable[[list[T]], Sequence[R]], *, name: str, max_batch: int = 32,
                 max_wait_ms: float = 2.0, max_queue: int = 1024,
                 observer: BatchObserver | None = None) -> None:
        if max_batch < 1 or max_queue < 1 or max_wait_ms < 0:
            raise ValueError("max_batch and max_queue must be >= 1 and max_wait_ms >= 0")
        self.fn, self.name = fn, name
        self.max_batch, self.max_wait = max_batch, max_wait_ms / 1000.0
        self._queue: queue.Queue = queue.Queue(maxsize=max_queue)
        self._observer = observer
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name=f"batcher-{name}", daemon=True)
        self._thread.start()

    @property
    def depth(self) -> int:
        return self._queue.qsize()

    def submit(self, value: T, *, deadline: float | None = None) -> Future:
        if self._closed:
            raise Unavailable(f"{self.name} batcher is shut down")
        item: _Item = _Item(value, deadline)
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            raise Overloaded(f"server overloaded: the {self.name} queue is full "
                             f"({self._queue.maxsize} waiting); retry later") from None
        return item.future

    def run_many(self, values: Sequence[T], *, deadline: float | None = None) -> list[R]:
        """Submit all, wait for all (they share batches with other callers' items)."""
        futures = [self.submit(v, deadline=deadline) for v in values]
        return [wait_result(f, deadline, what=self.name) for f in futures]

    def run(self, value: T, *, deadline: float | None = None) -> R:
        return self.run_many([value], deadline=deadline)[0]

    def close(self, timeout: float = 5.0) -> None:
        """Finish what is queued, then stop the worker."""
        if self._closed:
            return
        self._closed = True
        self._queue.put(_STOP)
        self._thread.join(timeout)

    # -- worker ---------------------------------------------------------------------------
    def _take_batch(self) -> list[_Item] | None:
        first = self._queue.get()
        if first is _STOP:
            return None
        batch = [first]
        until = first.enqueued + self.max_wait
        while len(batch) < self.max_batch:
            left = until - time.monotonic()
            try:
                item = self._queue.get(timeout=left) if left > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if item is _STOP:
                self._queue.put(_STOP)  # stop after this batch
                break
            batch.append(item)
        return batch

    def _loop(self) -> None:
        while (batch := self._take_batch()) is not None:
            now = time.monotonic()
            live = []
            for it in batch:
                if not it.future.set_running_or_notify_cancel():
                    continue  # the caller gave up
                if it.deadline is not None and now > it.deadline:
                    it.future.set_exception(DeadlineExceeded(
                        f"deadline exceeded while queued for {self.name}"))
                    continue
                live.append(it)
            if self._observer is not None:
                self._observer(self.name, len(live), self._queue.qsize())
            if live:
                self._run(live)

    def _run(self, items: list[_Item]) -> None:
        try:
            results = self.fn([it.value for it in items])
            if len(results) != len(items):
                raise RuntimeError(f"{self.name}: batch function returned {len(results)} "
                                   f"results for {len(items)} items")
        except BaseException as e:
            if len(items) > 1:  # isolate the bad item: others must not fail with it
                for it in items:
                    self._run_one(it)
                return
            items[0].future.set_exception(e)
            return
        for it, r in zip(items, results, strict=True):
            it.future.set_result(r)

    def _run_one(self, it: _Item) -> None:
        try:
            it.future.set_result(self.fn([it.value])[0])
        except BaseException as e:
            it.future.set_exception(e)


def wait_result(future: Future, deadline: float | None, *, what: str = "work"):
    """The future's result, or :class:`DeadlineExceeded` once ``deadline`` has passed."""
    timeout = None if deadline is None else max(deadline - time.monotonic(), 0.0)
    try:
        return future.result(timeout=timeout)
    except FutureTimeout:
        future.cancel()
        raise DeadlineExceeded(f"deadline exceeded waiting for {what}") from None
