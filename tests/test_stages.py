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
from jaxbert.metrics import selection_score

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
    best = max(records(config.out), key=lambda r: selection_score(r["dev"]))
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


CARRIED = """\
stages:
  - name: joint
    epochs: 1
  - name: sts
    tasks: [sts]
    epochs: 1
    optimizer: carry
"""


def adam_state(opt_state):
    (state,) = [x for x in jax.tree.leaves(opt_state, is_leaf=lambda x: hasattr(x, "counts")) if hasattr(x, "counts")]
    return state


@pytest.fixture(scope="module")
def carried(workspace):
    """A staged run whose sts stage carries the joint stage's optimizer, on a linear schedule: (config, results,
    the updates each optimizer's schedule spans, each checkpoint's (progress, AdamW state))."""
    _, _, root = workspace
    config = staged_config(workspace, root / "carried", CARRIED, CHECKPOINT_EVERY, "--train.schedule=linear")
    spans, saves = [], []
    real_optimizer, real_save = build.optimizer, checkpoint_lib.CheckpointStore.save

    def optimizer(config, params, total_updates):
        spans.append(total_updates)
        return real_optimizer(config, params, total_updates)

    def save(self, state, progress, best=False):
        saves.append((dict(progress), host(adam_state(state["opt_state"]))))
        real_save(self, state, progress, best)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(build, "optimizer", optimizer)
        patch.setattr(checkpoint_lib.CheckpointStore, "save", save)
        results = training.train_and_evaluate(config, log=lambda _: None)
    return config, results, spans, saves


def test_a_carried_optimizer_keeps_its_moments_count_and_schedule(carried):
    config, results, spans, saves = carried
    assert results["steps"] == 10
    assert spans == [10, 10]  # one linear schedule over both stages' updates, not one per stage
    latest = [(p["stage"], p["epoch"], p["step_in_epoch"], s) for p, s in saves]
    assert [where[:3] for where in latest] == [(0, 0, 2), (0, 0, 4), (0, 1, 0), (1, 0, 2), (1, 0, 4), (1, 1, 0)]
    end_of_joint, into_sts = latest[2][3], latest[3][3]
    assert int(end_of_joint.count[0]) == 5 and int(into_sts.count[0]) == 7  # the count goes on
    # The encoder's counts go on too (sts's cosine head has no params); the heads the sts stage leaves out keep
    # their counts and moments.
    assert max(int(c[0]) for c in jax.tree.leaves(into_sts.counts["bert"])) == 7
    assert {int(c[0]) for c in jax.tree.leaves(into_sts.counts["sst"])} == {5}
    assert_same(into_sts.mu["sst"], end_of_joint.mu["sst"])
    assert differs(into_sts.mu["bert"], end_of_joint.mu["bert"])


def test_a_carried_optimizer_resumes_exactly_across_the_stage_boundary(workspace, carried, monkeypatch):
    """Killed right after the joint stage's last checkpoint, the resumed run carries that checkpoint's optimizer
    into the sts stage and ends as the uninterrupted run did."""
    _, _, root = workspace
    config, full, _, _ = carried
    out = root / "carried_cut"
    make = lambda: staged_config(workspace, out, CARRIED, CHECKPOINT_EVERY, "--train.schedule=linear")  # noqa: E731
    with killed_after_checkpoint(monkeypatch, 3):
        training.train_and_evaluate(make(), log=lambda _: None)
    assert restore(out)[1]["stage"] == 0
    resumed = training.train_and_evaluate(make(), log=lambda _: None, resume=True)
    assert resumed["metrics"] == full["metrics"]
    assert records(out, train=True) == records(config.out, train=True)
    (a, _), (b, _) = restore(config.out), restore(out)
    assert_same(host(a["params"]), host(b["params"]))
    assert_same(host(a["opt_state"]), host(b["opt_state"]))


PAL_STAGES = """\
stages:
  - name: frozen
    freeze_encoder: true
    freeze_pals: true
    smart: false
    epochs: 1
  - name: full
    epochs: 1
"""
PALS = ("--heads.pal_size=12", "--heads.pal_heads=1", "--smart", "--smart.steps=1", "--train.select_by=sts")


def test_a_stage_freezes_the_pals_and_switches_smart_off(workspace, monkeypatch):
    """The frozen stage trains the heads alone, without SMART: exactly what a plain run of its settings trains;
    the next stage trains the PALs and the encoder with SMART. Checkpoints are chosen by sts's r."""
    _, _, root = workspace
    config = staged_config(workspace, root / "pal_stages", PAL_STAGES, *PALS)
    results, starts, saves = traced_run(config, monkeypatch)
    initial, after_frozen, final = starts[0], saves[0][1], saves[-1][1]
    assert [(p["stage"], p["epoch"]) for p, _ in saves] == [(0, 1), (1, 1)]
    for frozen in ("bert", "pal_sst", "pal_para", "pal_sts"):
        assert_same(after_frozen[frozen], initial[frozen])
        assert differs(final[frozen], after_frozen[frozen])
    assert differs(after_frozen["sst"], initial["sst"])

    plain = root / "pal_plain"
    training.train_and_evaluate(run_config(workspace, plain, *PALS, "--freeze-encoder", "--model.freeze_pals=true",
                                           "--smart=false", "--epochs=1"), log=lambda _: None)
    assert_same(host(restore(plain)[0]["params"]), after_frozen)

    best = max(records(config.out), key=lambda r: r["dev"]["sts"]["pearson"])
    assert results["best_epoch"] == best["epoch"] and results["metrics"]["dev"] == best["dev"]
