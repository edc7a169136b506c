"""End to end: `train.py` on a tiny random BERT and fixture data, and an interrupted run resumed exactly."""

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from conftest import tiny_checkpoint, write_fixture_data
from jaxbert import checkpoint as checkpoint_lib, training
from jaxbert.config import load_config
from jaxbert.training import train_and_evaluate

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("compilation_cache")
@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    return tiny_checkpoint(root / "bert"), write_fixture_data(root / "data"), root


ARGS = ["--epochs=2", "--batch-size=8", "--eval-batch-size=16", "--max-length=32", "--buckets=32",
        "--lr=1e-3", "--log-every=1"]


def run_config(workspace, out, *extra, config_file=None):
    from jaxbert.config import parse_overrides

    bert, data, root = workspace
    argv = [f"--checkpoint={bert}", f"--data-dir={data}", f"--out={out}", f"--cache-dir={root / 'cache'}", *ARGS,
            *extra]
    return load_config(config_file, parse_overrides(argv))


def test_train_py_end_to_end(workspace):
    bert, data, root = workspace
    out = root / "cli"
    result = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), f"--checkpoint={bert}", f"--data-dir={data}", f"--out={out}",
         f"--cache-dir={root / 'cache'}", "--sampler=roundrobin", *ARGS],
        capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    dev = results["metrics"]["dev"]
    assert set(dev) == {"sst", "para", "sts", "mean", "overall"}
    assert 0 <= dev["sst"]["accuracy"] <= 1 and -1 <= dev["sts"]["pearson"] <= 1
    assert dev["overall"] == pytest.approx((dev["sst"]["accuracy"] + dev["para"]["accuracy"]
                                            + (dev["sts"]["pearson"] + 1) / 2) / 3)
    assert results["steps"] == 2 * (40 // 8) and results["config"]["train"]["sampler"] == "roundrobin"
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2
    assert load_config(out / "config.yaml").train.batch_size == 8
    assert (out / "dev_curves.png").stat().st_size > 0 and any((out / "tensorboard").iterdir())
    sst_dev = (out / "predictions" / "sst-dev-output.csv").read_text().splitlines()
    assert sst_dev[0] == "id \t Predicted_Sentiment " and len(sst_dev) == 21
    assert sst_dev[1].split(" , ")[0] == "ids-sst-dev-0"
    test = (out / "predictions" / "sst-test-output.csv").read_text().splitlines()
    assert len(test) == 6 and "test" not in results["metrics"]  # predicted, not scored
    assert "empty label" not in result.stdout and "sst train: ids-sst-train.csv: 40 rows" in result.stdout


def test_single_task_cfimdb(workspace):
    _, _, root = workspace
    results = train_and_evaluate(run_config(workspace, root / "cfimdb", "--tasks=cfimdb", "--epochs=1"),
                                 log=lambda _: None)
    assert set(results["metrics"]["dev"]) == {"cfimdb", "mean"}
    predictions = (root / "cfimdb" / "predictions" / "cfimdb-dev-output.csv").read_text().splitlines()[1:]
    assert {line.split(" , ")[1].strip() for line in predictions} <= {"0", "1"}


class Interrupted(Exception):
    pass


@contextlib.contextmanager
def killed_after_checkpoint(monkeypatch, n: int):
    """Runs the block as a run killed right after writing its `n`-th checkpoint; checkpoints work again after."""
    real_save, calls = checkpoint_lib.CheckpointStore.save, []

    def save_then_die(self, *args, **kwargs):
        real_save(self, *args, **kwargs)
        calls.append(1)
        if len(calls) == n:
            raise Interrupted

    monkeypatch.setattr(checkpoint_lib.CheckpointStore, "save", save_then_die)
    with pytest.raises(Interrupted):
        yield
    monkeypatch.setattr(checkpoint_lib.CheckpointStore, "save", real_save)


def latest_params(out):
    store = checkpoint_lib.CheckpointStore(Path(out) / "checkpoints")
    state, progress = store.restore(None)
    store.close()
    return state["params"], progress


def test_interrupted_run_resumes_exactly(workspace, monkeypatch):
    _, _, root = workspace
    extra = ("--checkpoint-every=2", "--sampler=annealed", "--steps-per-epoch=6", "--loss-combination=balanced")
    full = train_and_evaluate(run_config(workspace, root / "full", *extra), log=lambda _: None)

    with killed_after_checkpoint(monkeypatch, 2):  # mid-way through the first epoch
        train_and_evaluate(run_config(workspace, root / "cut", *extra), log=lambda _: None)
    _, progress = latest_params(root / "cut")
    assert (progress["epoch"], progress["step_in_epoch"]) == (0, 4)

    logs = []
    resumed = train_and_evaluate(run_config(workspace, root / "cut", *extra, "--resume"), log=logs.append)
    assert any("resumed from step 4" in line for line in logs), logs
    assert resumed["steps"] == full["steps"] == 12
    assert resumed["metrics"] == full["metrics"]
    dev = lambda out: [json.loads(line)["dev"] for line in (out / "metrics.jsonl").read_text().splitlines()]  # noqa
    assert dev(root / "cut") == dev(root / "full")
    (a, _), (b, _) = latest_params(root / "full"), latest_params(root / "cut")
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(x, y)


def test_bad_data_errors_name_the_file(workspace, tmp_path):
    bert, data, root = workspace
    broken = tmp_path / "data"
    broken.mkdir()
    for f in data.iterdir():
        (broken / f.name).write_text(f.read_text())
    (broken / "sts-dev.csv").write_text("\tid\tsentence1\tsentence2\n0\tx\ta b\tc d\n")
    config = run_config(workspace, tmp_path / "out")
    config.data.data_dir = str(broken)
    with pytest.raises(ValueError, match=r"sts-dev\.csv.*similarity"):
        train_and_evaluate(config, log=lambda _: None)


def test_accumulation_and_remat_train_the_same_model(workspace):
    """Without dropout, 2 micro-batches per step through rematerialized layers reach the parameters of the plain
    run: the trainer wires `train.accumulation_steps` and `model.remat` into the step."""
    _, _, root = workspace
    no_dropout = ("--epochs=1", "--hidden-dropout=0", "--attention-dropout=0", "--heads.dropout=0")
    plain = train_and_evaluate(run_config(workspace, root / "whole", *no_dropout), log=lambda _: None)
    accumulated = train_and_evaluate(
        run_config(workspace, root / "micro", *no_dropout, "--accumulation-steps=2", "--remat"), log=lambda _: None)
    assert accumulated["config"]["train"]["accumulation_steps"] == 2 and accumulated["config"]["model"]["remat"]
    assert accumulated["steps"] == plain["steps"] == 40 // 8
    (a, _), (b, _) = latest_params(root / "whole"), latest_params(root / "micro")
    worst = max(float(np.max(np.abs(np.asarray(x) - np.asarray(y)))) for x, y in
                zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))
    print("largest parameter difference", worst)
    assert worst < 1e-5


@pytest.mark.parametrize("extra, updates_per_step", [
    ((), 1), (("--train.updates=per_task",), 3), (("--train.surgery=pcgrad_two_updates",), 2),
    (("--train.updates=per_task", "--sampler=annealed", "--steps-per-epoch=5"), 1),  # one task per step
])
def test_schedule_is_laid_out_over_optimizer_updates(workspace, monkeypatch, tmp_path, extra, updates_per_step):
    """A linear schedule reaches zero at the run's last optimizer update, however many updates a step makes."""
    laid_out = []
    real = training.make_optimizer
    monkeypatch.setattr(training, "make_optimizer", lambda lr, total, **kw: laid_out.append(total) or real(
        lr, total, **kw))
    result = train_and_evaluate(run_config(workspace, tmp_path / "out", "--epochs=1",
                                           "--schedule=linear", *extra), log=lambda _: None)
    assert result["steps"] == 5 and laid_out == [5 * updates_per_step]
