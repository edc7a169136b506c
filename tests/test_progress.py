"""The progress line's rate and ETA on a fake clock: stalls (compiles, evaluations) stay out, the window slides."""

import pytest

from jaxbert.progress import StepRate


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def run(meter: StepRate, clock: Clock, steps: int, seconds_per_step: float, examples: int = 10,
        shapes="a") -> None:
    """`steps` steps of `examples` each, then a log step."""
    for _ in range(steps):
        clock.now += seconds_per_step
        meter.step(examples, shapes)
    meter.mark()


def test_a_compile_or_an_evaluation_does_not_enter_the_rate():
    clock = Clock()
    meter = StepRate(window=20, clock=clock)
    run(meter, clock, 5, 30.0)  # the first step compiles: the whole interval is a stall
    assert not meter.steady and meter.rate == pytest.approx(50 / 150)  # until a clean interval, everything so far
    run(meter, clock, 5, 1.0)
    assert meter.steady and meter.rate == pytest.approx(10.0)
    clock.now += 600  # an evaluation
    meter.stall()
    run(meter, clock, 5, 1.0)  # the interval after it holds the evaluation
    assert meter.rate == pytest.approx(10.0)
    run(meter, clock, 5, 1.0, shapes="b")  # new shapes: this interval compiled
    assert meter.rate == pytest.approx(10.0) and meter.measured[0] == 5
    run(meter, clock, 5, 2.0, shapes="b")  # seen shapes compile nothing
    assert meter.rate == pytest.approx(100 / 15)


def test_the_window_slides():
    clock = Clock()
    meter = StepRate(window=10, clock=clock)
    run(meter, clock, 1, 99.0)  # compiles
    for seconds in (1.0, 1.0, 2.0, 2.0):
        run(meter, clock, 5, seconds)
    # The latest 10 steps, all at 2 s: the 1 s intervals have left the window.
    assert meter.measured == (10, 100, 20.0)
    assert meter.rate == pytest.approx(5.0)
    assert meter.summary(30) == "5 examples/s over the last 10 steps, ETA 1.0 min"


def test_the_window_keeps_at_least_the_latest_interval():
    clock = Clock()
    meter = StepRate(window=3, clock=clock)
    run(meter, clock, 1, 9.0)
    run(meter, clock, 8, 0.5)
    assert meter.measured == (8, 80, 4.0)


def test_eta_is_the_remaining_steps_at_the_windows_seconds_per_step():
    clock = Clock()
    meter = StepRate(window=50, clock=clock)
    run(meter, clock, 4, 5.0)
    assert meter.eta(10) == pytest.approx(50.0)  # everything so far, the compile included: 5 s a step
    run(meter, clock, 4, 0.25)
    assert meter.eta(100) == pytest.approx(25.0)
    assert meter.eta(0) == 0.0
    assert StepRate(clock=Clock()).eta(10) == 0.0 and StepRate(clock=Clock()).rate == 0.0  # nothing measured yet
