"""Staged runs end to end on a tiny random BERT: a frozen stage then a full one, params carried between them,
an interrupted staged run resumed exactly, and repeated stage cycles."""

import json
from pathlib import Path

import jax
import numpy as np
import pytest

from conftest import killed_after_checkpoint, restore, run_config, staged_config, workspace  # noqa: F401 (fixture)
from jaxbert import build
from jaxbert import checkpoint as checkpoint_lib
from jaxbert import training

pytestmark = pytest.mark.usefixtures("compilation_cache")

# 40 training rows per task in batches of 8: a round-robin epoch is 5 steps.
FROZEN_THEN_FULL = """\
stages:
  - name: heads
    freeze_encoder: true
    lr: 1.0e-2
    epochs: 1
  - name: full
    sampler: annealed
    steps_per_epoch: 4
    loss_combination: balanced
    epochs: 2
"""
CHECKPOINT_EVERY = "--train.checkpoint_every=2"


def host(tree):
    return jax.tree.map(np.asarray, jax.device_get(tree))


def assert_same(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(x, y)


def differs(a, b):
    return any(not np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def records(out, train=False):
    """metrics.jsonl's dev rows (and with `train` its train rows) without their timing fields."""
    rows = [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    for row in rows:
        row.pop("train_examples_per_sec", None)
        row.get("train", {}).pop("examples_per_sec", None)
    return [row for row in rows if train or "dev" in row]


def traced_run(config, monkeypatch):
    """Runs `config`, recording the params every stage starts from and those of every checkpoint saved (the
    latest's, stacked over the seed axis like the starts')."""
    starts, saves = [], []
    real_create, real_save = build.train_state, checkpoint_lib.CheckpointStore.save

    def create(params, tx, config):
        starts.append(host(params))  # copied now: the step donates these buffers
        return real_create(params, tx, config)

    def save(self, state, progress, best=False):
        saves.append((dict(progress), host(state["params"])))
        real_save(self, state, progress, best)

    with monkeypatch.context() as patch:
        patch.setattr(build, "train_state", create)
        patch.setattr(checkpoint_lib.CheckpointStore, "save", save)
        results = training.train_and_evaluate(config, log=lambda _: None)
    return results, starts, saves


@pytest.fixture(scope="module")
def frozen_then_full(workspace):
    """The uninterrupted staged run: (config, results, params each stage starts from, checkpoints saved)."""
    _, _, root = workspace
    config = staged_config(workspace, root / "staged", FROZEN_THEN_FULL, CHECKPOINT_EVERY)
    with pytest.MonkeyPatch.context() as monkeypatch:
        return (config, *traced_run(config, monkeypatch))


def test_frozen_stage_then_full_stage(workspace, frozen_then_full):
    config, results, starts, saves = frozen_then_full
    encoder = build.load_encoder(config, lambda _: None)
    initial = host(build.initial_params(build.model(config, encoder.config), encoder.params, [config.train.seed]))
    assert {x.shape[0] for x in jax.tree.leaves(initial)} == {1}  # one seed, stacked
    # Saves: heads at steps 2, 4 and its epoch end (5); full at 2 and the end (4) of each of its 2 epochs.
    assert [(p["stage"], p["epoch"], p["step_in_epoch"]) for p, _ in saves] == [
        (0, 0, 2), (0, 0, 4), (0, 1, 0), (1, 0, 2), (1, 1, 0), (1, 1, 2), (1, 2, 0)]
    after_heads, final = saves[2][1], saves[-1][1]

    assert len(starts) == 2
    assert_same(starts[0], initial)
    assert_same(after_heads["bert"], initial["bert"])  # the frozen stage left the encoder exactly as it was
    assert differs(after_heads["sst"], initial["sst"]) and differs(after_heads["para"], initial["para"])
    assert_same(starts[1], after_heads)  # the full stage starts from the trained heads (and the encoder)
    assert differs(final["bert"], initial["bert"])
    assert differs(final["sst"], after_heads["sst"]) and differs(final["para"], after_heads["para"])

    assert results["steps"] == 5 + 2 * 4
    assert [(r["epoch"], r["stage"], r["stage_name"], r["stage_epoch"], r["step"])
            for r in records(config.out)] == [(1, 0, "heads", 1, 5), (2, 1, "full", 1, 9), (3, 1, "full", 2, 13)]
    # The results come from the best checkpoint of the whole run.
    best = max(records(config.out), key=lambda r: training.dev_score(r["dev"]))
    assert results["best_epoch"] == best["epoch"] and results["metrics"]["dev"] == best["dev"]


def test_first_stage_is_the_plain_run(workspace, frozen_then_full):
    """A plain run with the first stage's settings (no stages) trains exactly what the staged run's first stage
    trained."""
    _, _, root = workspace
    config, _, _, saves = frozen_then_full
    out = root / "plain_heads"
    training.train_and_evaluate(run_config(workspace, out, "--freeze-encoder", "--lr=1e-2", "--epochs=1",
                                           CHECKPOINT_EVERY), log=lambda _: None)
    state, _ = restore(out)
    assert_same(host(state["params"]), saves[2][1])
    assert [r["dev"] for r in records(out)] == [records(config.out)[0]["dev"]]


@pytest.mark.parametrize("cut, where, resumed_at", [
    (3, (0, 1, 0), 5),  # right after the heads stage's last checkpoint: resumes into a fresh full stage
    (4, (1, 0, 2), 7),  # inside the full stage
])
def test_interrupted_staged_run_resumes_exactly(workspace, frozen_then_full, monkeypatch, cut, where, resumed_at):
    _, _, root = workspace
    config, full, _, _ = frozen_then_full
    out = root / f"staged_cut{cut}"
    with killed_after_checkpoint(monkeypatch, cut):
        training.train_and_evaluate(staged_config(workspace, out, FROZEN_THEN_FULL, CHECKPOINT_EVERY),
                                    log=lambda _: None)
    _, progress = restore(out)
    assert (progress["stage"], progress["epoch"], progress["step_in_epoch"]) == where

    logs = []
    resumed = training.train_and_evaluate(
        staged_config(workspace, out, FROZEN_THEN_FULL, CHECKPOINT_EVERY), log=logs.append, resume=True)
    assert any(f"resumed from step {resumed_at} " in line for line in logs), logs
    assert resumed["steps"] == full["steps"] and resumed["metrics"] == full["metrics"]
    assert resumed["best_epoch"] == full["best_epoch"]
    assert records(out, train=True) == records(config.out, train=True)
    (a, _), (b, _) = restore(config.out), restore(out)
    assert_same(host(a["params"]), host(b["params"]))


CYCLES = """\
stages:
  - name: joint
    epochs: 1
  - name: sts
    tasks: [sts]
    lr: 1.0e-2
    epochs: 1
"""


def test_stage_cycles_repeat_the_stages(workspace, monkeypatch):
    _, _, root = workspace
    config = staged_config(workspace, root / "cycles", CYCLES, "--train.stage_cycles=2",
                            "--train.weight_decay=0.1")
    stages = training.run_stages(config)
    assert [(s.index, s.name, s.config.tasks) for s in stages] == [
        (0, "joint", ["sst", "para", "sts"]), (1, "sts", ["sts"]), (2, "joint", ["sst", "para", "sts"]),
        (3, "sts", ["sts"])]
    # The first stage draws its batches as a run without stages would; the others, each cycle's too, their own.
    assert stages[0].plan_seed == config.train.seed and len({s.plan_seed for s in stages}) == 4

    results, starts, saves = traced_run(config, monkeypatch)
    assert [(r["stage"], r["stage_name"], r["step"]) for r in records(config.out)] == [
        (0, "joint", 5), (1, "sts", 10), (2, "joint", 15), (3, "sts", 20)]
    assert results["steps"] == 20 and len(starts) == 4
    for k in (1, 3):  # an sts stage trains the encoder and leaves the other heads alone, weight decay included
        before, after = saves[k - 1][1], saves[k][1]
        assert_same(starts[k], before)
        assert differs(after["bert"], before["bert"])
        assert_same(after["sst"], before["sst"])
        assert_same(after["para"], before["para"])
    assert differs(saves[2][1]["sst"], saves[1][1]["sst"])  # ...which the next joint stage trains again
