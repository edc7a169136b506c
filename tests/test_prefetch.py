"""The background prefetcher: order, bounded look-ahead, producer errors, and shutdown."""

import threading
import time
import traceback

import pytest

from jaxbert.prefetch import prefetch


def test_items_arrive_in_order():
    assert list(prefetch(iter(range(100)), size=3)) == list(range(100))
    assert list(prefetch([], size=1)) == []


def test_producer_runs_ahead_but_at_most_size_plus_one_items():
    """With nothing consumed, the thread makes `size` items for the queue and one more that waits for room."""
    made, limit_reached = [], threading.Event()
    size = 3

    def source():
        for i in range(20):
            made.append(i)
            if len(made) == size + 1:
                limit_reached.set()
            yield i

    items = prefetch(source(), size=size)
    assert next(items) == 0  # starts the thread; item 0 is consumed, so size + 2 may now exist
    assert limit_reached.wait(timeout=30), f"the producer did not run ahead: made {made}"
    time.sleep(0.5)  # time for an unbounded producer to overrun (a bounded one is blocked and cannot)
    assert size + 1 <= len(made) <= size + 2, made
    assert [next(items) for _ in range(5)] == [1, 2, 3, 4, 5]
    assert list(items) == list(range(6, 20))


def test_producer_exception_reaches_the_consumer_with_its_traceback():
    def source():
        yield "first"
        yield "second"
        raise_in_producer()

    def raise_in_producer():
        raise KeyError("row 7 is broken")

    items = prefetch(source(), size=2)
    assert next(items) == "first" and next(items) == "second"  # items made before the error still arrive
    with pytest.raises(KeyError, match="row 7 is broken") as info:
        next(items)
    frames = [frame.name for frame in traceback.extract_tb(info.value.__traceback__)]
    assert "raise_in_producer" in frames and "source" in frames, frames


def test_closing_stops_the_thread():
    made = []

    def endless():
        while True:
            made.append(1)
            yield len(made)

    before = set(threading.enumerate())
    items = prefetch(endless(), size=2)
    assert next(items) == 1
    (thread,) = set(threading.enumerate()) - before
    items.close()
    assert not thread.is_alive()
    assert len(made) <= 1 + 2 + 1  # the consumed item, a full queue, and the one the thread held when stopped


def test_size_must_be_positive():
    with pytest.raises(ValueError, match="prefetch size must be at least 1, got 0"):
        prefetch([1], size=0)
