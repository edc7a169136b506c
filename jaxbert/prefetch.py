"""Host-side prefetching: the next steps' batches are built and placed on the devices while the current step runs.

JAX dispatches a step asynchronously, so the Python loop is free again long before the devices finish; a
background thread spends that time gathering, padding and transferring the batches of the following steps.
"""

from __future__ import annotations

import queue
import threading
from typing import Iterable, Iterator, TypeVar

T = TypeVar("T")

_DONE = object()


def prefetch(items: Iterable[T], size: int = 2) -> Iterator[T]:
    """Yields `items` in order, computing them in a background thread at most `size` ahead of the consumer.

    The thread holds at most `size` finished items plus the one it is making, so a bounded number of batches
    is ever resident. An exception raised while making an item is raised here, in the consumer, when it asks
    for that item; its traceback still shows where in the producer it happened. Closing the generator stops
    the thread once the item it is making is done. The thread starts at the first `next`.
    """
    if size < 1:
        raise ValueError(f"prefetch size must be at least 1, got {size}")
    return _prefetch(items, size)


def _prefetch(items: Iterable[T], size: int) -> Iterator[T]:
    ready: queue.Queue = queue.Queue(maxsize=size)
    stop = threading.Event()

    def produce():
        try:
            for item in items:
                ready.put((item, None))
                if stop.is_set():
                    return
            ready.put((_DONE, None))
        except BaseException as error:  # noqa: BLE001 - handed to the consumer, which decides
            ready.put((None, error))

    thread = threading.Thread(target=produce, name="prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item, error = ready.get()
            if error is not None:
                raise error
            if item is _DONE:
                return
            yield item
    finally:
        stop.set()
        # Emptying the queue leaves room for the one `put` the thread may still make before it sees `stop`.
        while not ready.empty():
            ready.get_nowait()
        thread.join()
