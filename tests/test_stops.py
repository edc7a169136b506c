"""Runs that end early and continue exactly: a preemption signal, a non-finite loss under `train.nonfinite`
stop or skip; and the step's guard against non-finite values."""

import os
import signal

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import dev_rows, restore, run_config, workspace  # noqa: F401 (fixture)
from jaxbert import training
from jaxbert.config import load_config, parse_overrides
from jaxbert.errors import RunStopped
from jaxbert.preemption import StopRequests
from jaxbert.train_step import TrainState, guard_nonfinite
from jaxbert.training import train_and_evaluate

pytestmark = pytest.mark.usefixtures("compilation_cache")
# Two epochs of 5 steps, the host looking at the metrics every 5 steps, a checkpoint every 2.
EXTRA = ("--train.log_every=5", "--train.checkpoint_every=2")


@pytest.fixture(scope="module")
def uninterrupted(workspace):
    _, _, root = workspace
    return train_and_evaluate(run_config(workspace, root / "whole", *EXTRA), log=lambda _: None), root / "whole"


def assert_same_run(folder, uninterrupted):
    """The run in `folder` ended where the uninterrupted one did: results, dev rows and params, bit for bit."""
    results, whole = uninterrupted
    assert [r["dev"] for r in dev_rows(folder)] == [r["dev"] for r in dev_rows(whole)]
    (a, _), (b, _) = restore(folder), restore(whole)
    for x, y in zip(jax.tree.leaves(a["params"]), jax.tree.leaves(b["params"]), strict=True):
        np.testing.assert_array_equal(x, y)


def on_batch(monkeypatch, steps, action):
    """Calls `action(batches)` on the host batches of each 1-based step in `steps` as the loop builds them."""
    real, calls = training.step_batches, []

    def patched(*args):
        batches = real(*args)
        calls.append(1)
        if len(calls) in steps:
            action(batches)
        return batches

    monkeypatch.setattr(training, "step_batches", patched)


def poison(batches):
    batches["sts"]["labels"] = np.full_like(batches["sts"]["labels"], np.nan)


def test_a_preempted_run_resumes_exactly(workspace, uninterrupted, monkeypatch, tmp_path):
    """SIGTERM mid-epoch: the step in flight finishes, its exact position is checkpointed, the run ends with one
    line, and --resume ends where the uninterrupted run did."""
    on_batch(monkeypatch, {4}, lambda _: os.kill(os.getpid(), signal.SIGTERM))
    folder = tmp_path / "cut"
    with pytest.raises(RunStopped) as stopped:
        train_and_evaluate(run_config(workspace, folder, *EXTRA), log=lambda _: None)
    message = str(stopped.value)
    _, progress = restore(folder)
    # The signal comes while the loop builds step 4's batch, at most two steps ahead of the step in flight.
    step = progress["step_in_epoch"]
    assert 1 <= step <= 4 and progress["epoch"] == 0 and "\n" not in message
    assert message == (f"preempted by SIGTERM at step {step} (epoch 1, step {step} of 5), checkpointed: continue with "
                       "--resume")
    monkeypatch.undo()
    logs = []
    train_and_evaluate(run_config(workspace, folder, *EXTRA), log=logs.append, resume=True)
    assert any(f"resumed from step {step}" in line for line in logs)
    assert_same_run(folder, uninterrupted)


@pytest.mark.parametrize("at", [5])  # the last step of an epoch (the signal test above stops inside one)
def test_a_run_preempted_at_any_step_resumes_exactly(workspace, uninterrupted, monkeypatch, tmp_path, at):
    monkeypatch.setattr(StopRequests, "requested", lambda self, step: step == at)
    folder = tmp_path / "cut"
    with pytest.raises(RunStopped, match=rf"^preempted by a preemption notice at step {at} \(epoch 1, step {at} of 5\)"):
        train_and_evaluate(run_config(workspace, folder, *EXTRA), log=lambda _: None)
    monkeypatch.undo()
    train_and_evaluate(run_config(workspace, folder, *EXTRA), log=lambda _: None, resume=True)
    assert_same_run(folder, uninterrupted)


def test_a_second_ctrl_c_aborts_at_once():
    before = signal.getsignal(signal.SIGINT)  # default_int_handler, or SIG_IGN in a job started in the background
    with StopRequests() as stop:
        assert not stop.requested(1)
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.requested(1) and stop.name == "SIGINT"
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is before  # the handlers are given back


def test_a_nonfinite_loss_stops_the_run_at_its_last_good_checkpoint(workspace, uninterrupted, monkeypatch, tmp_path):
    """Under `train.nonfinite: stop` a NaN at step 3, seen by the host at step 5, ends the run naming step 3, the
    task and the term; the latest checkpoint is step 2's, and resuming from it (the data fixed) is the
    uninterrupted run."""
    on_batch(monkeypatch, {3}, poison)
    folder = tmp_path / "nan"
    with pytest.raises(RunStopped) as stopped:
        train_and_evaluate(run_config(workspace, folder, *EXTRA), log=lambda _: None)
    message = str(stopped.value)
    assert message.startswith("train.nonfinite stop: step 3 (epoch 1) had non-finite values: grad_norm nan, loss nan, "
                              "loss/sts nan. ")
    assert "The latest checkpoint (step 2) is the last good state" in message
    state, progress = restore(folder)
    assert int(state["step"][0]) == 2 and all(np.isfinite(x).all() for x in jax.tree.leaves(state["params"]))
    monkeypatch.undo()
    train_and_evaluate(run_config(workspace, folder, *EXTRA), log=lambda _: None, resume=True)
    assert_same_run(folder, uninterrupted)


def test_skip_drops_the_update_and_counts_it(workspace, monkeypatch, tmp_path):
    on_batch(monkeypatch, {3}, poison)
    logs = []
    folder = tmp_path / "skip"
    result = train_and_evaluate(run_config(workspace, folder, *EXTRA, "--train.nonfinite=skip"), log=logs.append)
    assert result["steps"] == 10
    assert "step 3: non-finite grad_norm nan, loss nan, loss/sts nan: update skipped (train.nonfinite skip)" in logs
    import json

    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert [row["train"]["skipped"] for row in rows if "train" in row] == [1, 1]  # steps 5 and 10


def test_skip_stops_after_max_nonfinite_in_a_row(workspace, monkeypatch, tmp_path):
    on_batch(monkeypatch, set(range(3, 11)), poison)
    # The host looks at step 5 only (no checkpoint before it): the message still names step 4, where it froze.
    with pytest.raises(RunStopped, match=r"^train.nonfinite skip: 2 steps in a row up to step 4 \(epoch 1\) had "
                                         r"non-finite values: grad_norm nan, loss nan, loss/sts nan\. The latest checkpoint \(none yet\)"):
        train_and_evaluate(run_config(workspace, tmp_path / "many", *EXTRA, "--train.nonfinite=skip",
                                      "--train.max_nonfinite=2", "--train.checkpoint_every=0"), log=lambda _: None)


@pytest.mark.parametrize("mode", ["stop", "skip"])
def test_the_guard_keeps_the_old_state_on_a_nonfinite_step(mode):
    config = load_config(None, parse_overrides([f"--train.nonfinite={mode}", "--train.max_nonfinite=2"])).train
    guard = {"frozen": jnp.array(False), "in_a_row": jnp.array(0), "skipped": jnp.array(0)}
    old = TrainState(jnp.array(4), {"w": jnp.ones(3)}, {"mu": jnp.zeros(3)}, {"guard": guard, "t": jnp.ones(2)})
    new = TrainState(jnp.array(5), {"w": jnp.full(3, 2.0)}, {"mu": jnp.ones(3)}, {"guard": guard, "t": jnp.zeros(2)})
    good, metrics = guard_nonfinite(old, new, {"loss": jnp.array(1.0), "grad_norm": jnp.array(2.0)}, config)
    assert jax.tree.all(jax.tree.map(lambda a, b: bool((a == b).all()), (good.params, good.opt_state, good.step),
                                     (new.params, new.opt_state, new.step)))
    assert int(metrics["skipped"]) == 0 and not good.extra["guard"]["frozen"]
    bad, metrics = guard_nonfinite(old, new, {"loss": jnp.array(jnp.inf), "grad_norm": jnp.array(2.0)}, config)
    assert int(bad.step) == 5 and (bad.params["w"] == 1).all() and (bad.opt_state["mu"] == 0).all()
    assert (bad.extra["t"] == 1).all() and int(metrics["skipped"]) == 1 and int(bad.extra["guard"]["in_a_row"]) == 1
    assert bool(bad.extra["guard"]["frozen"]) == (mode == "stop")
    # Once frozen (stop at once, skip after 2 in a row), even a finite step leaves the state where it is.
    again, _ = guard_nonfinite(bad, new.replace(step=jnp.array(6)), {"loss": jnp.array(jnp.nan)}, config)
    assert bool(again.extra["guard"]["frozen"]) and (again.params["w"] == 1).all()
    after, _ = guard_nonfinite(again, new.replace(step=jnp.array(7)), {"loss": jnp.array(1.0)}, config)
    assert (after.params["w"] == 1).all() and int(after.extra["guard"]["in_a_row"]) == 0
