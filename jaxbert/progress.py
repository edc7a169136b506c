"""The progress line's speed: examples per second over a sliding window of recent steps, and the ETA from it.

The host learns how long steps took only where it waits for the device, at the loop's log steps; the time
between two of them is an interval. An interval that holds a stall (a step's compilation, an evaluation, a
checkpoint) says nothing about the steps to come and is left out, so the rate right after an evaluation is the
training's, not the few examples since divided by the few seconds since.
"""

from __future__ import annotations

import collections
import time
from typing import Callable, Hashable

WINDOW = 50  # steps the rate is measured over (at least the latest interval's)


class StepRate:
    """Examples/s and seconds per step over the latest `window` steps of the intervals without a stall; until
    one interval ran without, over every step since the start, stalls included.

    Feed it each step (`step`), each stall between steps (`stall`: an evaluation, a checkpoint) and each log
    step once the host has waited for the device there (`mark`). A step of shapes it has not seen before
    compiled, so it is a stall too.
    """

    def __init__(self, window: int = WINDOW, clock: Callable[[], float] = time.perf_counter):
        self.window, self.clock = window, clock
        self.intervals: collections.deque[tuple[int, int, float]] = collections.deque()  # (steps, examples, s)
        self.seen: set[Hashable] = set()
        self.start = self.since = clock()
        self.steps = self.examples = 0  # of the interval in progress
        self.stalled = False
        self.all_steps = self.all_examples = 0  # since the start, every interval's

    def step(self, examples: int, shapes: Hashable) -> None:
        """One step of `examples` examples whose batches have `shapes` (what decides its compiled program)."""
        self.steps, self.examples = self.steps + 1, self.examples + examples
        if shapes not in self.seen:
            self.seen.add(shapes)
            self.stalled = True

    def stall(self) -> None:
        """The interval in progress holds something other than steps: it does not enter the rate."""
        self.stalled = True

    def mark(self) -> None:
        """A log step: the steps since the previous one are done, and the interval in progress ends now."""
        now = self.clock()
        if self.steps and not self.stalled:
            self.intervals.append((self.steps, self.examples, now - self.since))
            while sum(steps for steps, _, _ in self.intervals) - self.intervals[0][0] >= self.window:
                self.intervals.popleft()
        self.all_steps, self.all_examples = self.all_steps + self.steps, self.all_examples + self.examples
        self.since, self.steps, self.examples, self.stalled = now, 0, 0, False

    @property
    def steady(self) -> bool:
        """Whether the figures come from intervals without a stall."""
        return bool(self.intervals)

    @property
    def measured(self) -> tuple[int, int, float]:
        """(steps, examples, seconds) the figures come from."""
        if self.steady:
            steps, examples, seconds = map(sum, zip(*self.intervals))
            return steps, examples, seconds
        return self.all_steps, self.all_examples, self.since - self.start

    @property
    def rate(self) -> float:
        """Examples per second (0 before the first mark)."""
        _, examples, seconds = self.measured
        return examples / seconds if seconds > 0 else 0.0

    def eta(self, remaining_steps: int) -> float:
        """Seconds that `remaining_steps` more steps take at the window's seconds per step (stalls to come, such
        as evaluations, not counted)."""
        steps, _, seconds = self.measured
        return remaining_steps * seconds / steps if steps else 0.0

    def summary(self, remaining_steps: int) -> str:
        """`412 examples/s over the last 50 steps, ETA 3.2 min`: the plain progress line's figures."""
        steps = self.measured[0]
        over = f"over the last {steps} steps" if self.steady else f"over all {steps} steps so far, compiles included"
        return f"{self.rate:.0f} examples/s {over}, ETA {self.eta(remaining_steps) / 60:.1f} min"
