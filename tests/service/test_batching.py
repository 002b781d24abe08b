"""MicroBatcher: concurrent items share batches, bounds hold, deadlines and bad items are isolated."""

import threading
import time

import pytest

from service.batching import MicroBatcher
from service.errors import DeadlineExceeded, Overloaded


class Gate:
    """A batch function that blocks on its first call until released, recording batches."""

    def __init__(self, fn=lambda xs: [x * 10 for x in xs]):
        self.fn, self.batches = fn, []
        self.entered, self.release = threading.Event(), threading.Event()

    def __call__(self, xs):
        self.batches.append(list(xs))
        if not self.entered.is_set():
            self.entered.set()
            assert self.release.wait(10)
        return self.fn(xs)


def test_items_queued_during_a_batch_run_together_in_the_next():
    gate = Gate()
    b = MicroBatcher(gate, name="t", max_batch=4, max_wait_ms=0)
    first = b.submit(0)
    assert gate.entered.wait(5)
    queued = [b.submit(i) for i in range(1, 8)]  # 7 items wait while batch [0] runs
    gate.release.set()
    assert first.result(5) == 0
    assert [f.result(5) for f in queued] == [i * 10 for i in range(1, 8)]
    assert gate.batches == [[0], [1, 2, 3, 4], [5, 6, 7]]  # full batches, capped at max_batch
    b.close()


def test_concurrent_callers_get_their_own_results():
    b = MicroBatcher(lambda xs: [x * x for x in xs], name="t", max_batch=8, max_wait_ms=5)
    out = {}

    def call(i):
        out[i] = b.run(i)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert out == {i: i * i for i in range(40)}
    b.close()


def test_max_wait_collects_a_later_item_into_the_same_batch():
    batches = []
    b = MicroBatcher(lambda xs: batches.append(list(xs)) or xs, name="t", max_batch=8,
                     max_wait_ms=1000)
    f1 = b.submit(1)
    time.sleep(0.05)
    f2 = b.submit(2)  # arrives well within the oldest item's wait
    assert (f1.result(5), f2.result(5)) == (1, 2)
    assert batches == [[1, 2]]
    b.close()


def test_full_queue_is_overloaded():
    gate = Gate()
    b = MicroBatcher(gate, name="t", max_batch=1, max_wait_ms=0, max_queue=2)
    b.submit(0)
    assert gate.entered.wait(5)
    b.submit(1)
    b.submit(2)
    with pytest.raises(Overloaded, match="queue is full"):
        b.submit(3)
    gate.release.set()
    b.close()


def test_expired_items_are_dropped_unrun():
    gate = Gate()
    b = MicroBatcher(gate, name="t", max_batch=8, max_wait_ms=0)
    b.submit(0)
    assert gate.entered.wait(5)
    late = b.submit(1, deadline=time.monotonic() - 1)
    ok = b.submit(2)
    gate.release.set()
    with pytest.raises(DeadlineExceeded):
        late.result(5)
    assert ok.result(5) == 20
    assert [1] not in gate.batches and all(1 not in bt for bt in gate.batches)
    b.close()


def test_run_waits_no_longer_than_the_deadline():
    gate = Gate()
    b = MicroBatcher(gate, name="t", max_batch=8, max_wait_ms=0)
    b.submit(0)
    assert gate.entered.wait(5)
    t0 = time.monotonic()
    with pytest.raises(DeadlineExceeded):
        b.run(1, deadline=t0 + 0.2)
    assert time.monotonic() - t0 < 2
    gate.release.set()
    b.close()


def test_a_bad_item_fails_only_its_caller():
    def fn(xs):
        if "bad" in xs:
            raise ValueError("bad item")
        return [x.upper() for x in xs]

    gate = Gate(fn)
    b = MicroBatcher(gate, name="t", max_batch=8, max_wait_ms=0)
    b.submit("first")
    assert gate.entered.wait(5)
    fs = [b.submit(x) for x in ["a", "bad", "c"]]
    gate.release.set()
    assert fs[0].result(5) == "A" and fs[2].result(5) == "C"
    with pytest.raises(ValueError, match="bad item"):
        fs[1].result(5)
    b.close()


def test_observer_sees_batch_sizes_and_close_finishes_queued_work():
    seen = []
    gate = Gate()
    b = MicroBatcher(gate, name="emb", max_batch=3, max_wait_ms=0,
                     observer=lambda name, size, depth: seen.append((name, size)))
    b.submit(0)
    assert gate.entered.wait(5)
    fs = [b.submit(i) for i in range(1, 5)]
    gate.release.set()
    b.close()
    assert [f.result(0) for f in fs] == [10, 20, 30, 40]
    assert seen == [("emb", 1), ("emb", 3), ("emb", 1)]
