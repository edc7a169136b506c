"""Stopping a run cleanly when asked: SIGTERM (a spot VM's or a TPU maintenance event's notice) or Ctrl-C.

The first signal lets the step in flight finish; the loop then checkpoints its exact position and ends the
run with `RunStopped`, so `--resume` continues it as if nothing happened. A second SIGINT aborts at once. On
several hosts, JAX's preemption sync point (`jax.distributed`'s preemption service, which receives SIGTERM
there) makes every process stop at the same step.
"""

from __future__ import annotations

import signal
import threading

import jax
from jax.experimental import multihost_utils

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopRequests:
    """Catches `SIGNALS` while open (`with StopRequests() as stop:`) and tells the loop when to stop."""

    def __init__(self):
        self.received: int | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopRequests:
        # Only the main thread may set handlers. On several hosts SIGTERM stays JAX's, whose preemption service
        # brings every process to the same sync point; a Ctrl-C there interrupts at once, as it always did.
        if threading.current_thread() is threading.main_thread() and jax.process_count() == 1:
            self._previous = {s: signal.signal(s, self._handle) for s in SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}

    def _handle(self, signum: int, frame) -> None:
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # the second Ctrl-C: the user will not wait for the checkpoint
        self.received = signum

    @property
    def name(self) -> str:
        return signal.Signals(self.received).name if self.received is not None else "a preemption notice"

    def requested(self, step: int) -> bool:
        """Whether the run should stop after `step`; every process agrees on it."""
        if jax.process_count() > 1:
            return multihost_utils.reached_preemption_sync_point(step)
        return self.received is not None
