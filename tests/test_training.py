"""End to end: `train.py` on a tiny random BERT and fixture data, and an interrupted run resumed exactly."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import ARGS, dev_rows, killed_after_checkpoint, restore, run_config, workspace  # noqa: F401 (fixture)
from jaxbert import build, checkpoint as checkpoint_lib
from jaxbert.config import load_config, replace, save_config
from jaxbert.run_folder import RunFolderError
from jaxbert.training import train_and_evaluate

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("compilation_cache")


def train_py(*argv):
    return subprocess.run([sys.executable, str(ROOT / "train.py"), *map(str, argv)], capture_output=True, text=True,
                          cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})


def test_train_py_end_to_end(workspace):
    bert, data, root = workspace
    out = root / "cli"
    result = train_py(f"--checkpoint={bert}", f"--data-dir={data}", f"--out={out}",
                      f"--data.cache_dir={root / 'cache'}", "--sampler=roundrobin", *ARGS)
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    dev = results["metrics"]["dev"]
    assert set(dev) == {"sst", "para", "sts", "mean", "overall"}
    assert 0 <= dev["sst"]["accuracy"] <= 1 and -1 <= dev["sts"]["pearson"] <= 1
    assert dev["overall"] == pytest.approx((dev["sst"]["accuracy"] + dev["para"]["accuracy"]
                                            + (dev["sts"]["pearson"] + 1) / 2) / 3)
    assert results["steps"] == 2 * (40 // 8) and results["config"]["train"]["sampler"] == "roundrobin"
    assert len(dev_rows(out)) == 2
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
    assert set(results["metrics"]["dev"]) == {"cfimdb", "mean", "overall"}
    predictions = (root / "cfimdb" / "predictions" / "cfimdb-dev-output.csv").read_text().splitlines()[1:]
    assert {line.split(" , ")[1].strip() for line in predictions} <= {"0", "1"}


def test_interrupted_run_resumes_exactly(workspace, monkeypatch):
    _, _, root = workspace
    extra = ("--train.checkpoint_every=2", "--sampler=annealed", "--train.steps_per_epoch=6",
             "--train.loss_combination=balanced")
    full = train_and_evaluate(run_config(workspace, root / "full", *extra), log=lambda _: None)

    with killed_after_checkpoint(monkeypatch, 2):  # mid-way through the first epoch
        train_and_evaluate(run_config(workspace, root / "cut", *extra), log=lambda _: None)
    _, progress = restore(root / "cut")
    assert (progress["epoch"], progress["step_in_epoch"], len(progress["seeds"])) == (0, 4, 1)

    logs = []
    resumed = train_and_evaluate(run_config(workspace, root / "cut", *extra), log=logs.append, resume=True)
    assert any("resumed from step 4" in line for line in logs), logs
    assert resumed["steps"] == full["steps"] == 12
    assert resumed["metrics"] == full["metrics"]
    assert [r["dev"] for r in dev_rows(root / "cut")] == [r["dev"] for r in dev_rows(root / "full")]
    train_rows = lambda out: [(r["step"], {k: v for k, v in r["train"].items() if k != "examples_per_sec"})  # noqa
                              for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "train" in r]
    assert train_rows(root / "cut") == train_rows(root / "full") and len(train_rows(root / "full")) == 12
    (a, _), (b, _) = restore(root / "full"), restore(root / "cut")
    assert jax.tree.structure(a["params"]) == jax.tree.structure(b["params"])
    for x, y in zip(jax.tree.leaves(a["params"]), jax.tree.leaves(b["params"])):
        assert x.shape[0] == 1  # the latest state, stacked over the one seed
        np.testing.assert_array_equal(x, y)


def test_bad_data_errors_name_the_file(workspace, tmp_path):
    bert, data, root = workspace
    broken = tmp_path / "data"
    broken.mkdir()
    for f in data.iterdir():
        (broken / f.name).write_text(f.read_text())
    (broken / "sts-dev.csv").write_text("\tid\tsentence1\tsentence2\n0\tx\ta b\tc d\n")
    config = replace(run_config(workspace, tmp_path / "out"), {"data.data_dir": str(broken)})
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
    a, b = restore(root / "whole")[0]["params"], restore(root / "micro")[0]["params"]
    worst = max(float(np.max(np.abs(np.asarray(x) - np.asarray(y)))) for x, y in
                zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))
    print("largest parameter difference", worst)
    assert worst < 1e-5


@pytest.mark.parametrize("extra, updates_per_step", [
    ((), 1), (("--train.updates=per_task",), 3), (("--train.surgery=pcgrad_two_updates",), 2),
    (("--train.updates=per_task", "--sampler=annealed", "--train.steps_per_epoch=5"), 1),  # one task per step
])
def test_schedule_is_laid_out_over_optimizer_updates(workspace, monkeypatch, tmp_path, extra, updates_per_step):
    """A linear schedule reaches zero at the run's last optimizer update, however many updates a step makes."""
    laid_out = []
    real = build.make_optimizer
    monkeypatch.setattr(build, "make_optimizer", lambda lr, total, **kw: laid_out.append(total) or real(
        lr, total, **kw))
    result = train_and_evaluate(run_config(workspace, tmp_path / "out", "--epochs=1",
                                           "--train.schedule=linear", *extra), log=lambda _: None)
    assert result["steps"] == 5 and laid_out == [5 * updates_per_step]


def test_resuming_an_old_format_checkpoint_is_refused(workspace, tmp_path):
    """A checkpoint of the layout before the seed axis (an unstacked state, progress without "seeds") is not
    resumed: --resume says an older jaxbert wrote it."""
    out = tmp_path / "old"
    store = checkpoint_lib.CheckpointStore(out / "checkpoints")
    old_state = {"step": jnp.asarray(4, jnp.int32), "params": {"sst": {"kernel": jnp.zeros((8, 5)),
                                                                         "bias": jnp.zeros(5)}}}
    store.save(old_state, {"stage": 0, "epoch": 0, "step_in_epoch": 4, "best_score": -math.inf, "history": [],
                           "score": -math.inf})
    store.close()
    save_config(run_config(workspace, out), out / "config.yaml")
    assert "seeds" not in restore(out)[1]
    with pytest.raises(RunFolderError, match=r"--resume: the checkpoint in .*checkpoints was written by an older "
                                             r"jaxbert"):
        train_and_evaluate(run_config(workspace, out), log=lambda _: None, resume=True)
    assert not (out / "metrics.jsonl").exists() and not (out / "results.json").exists()


def test_train_py_config_error_is_one_line(workspace, tmp_path):
    """A bad option ends train.py with its reason on one line, no traceback, before any training."""
    bert, data, root = workspace
    out = tmp_path / "bad"
    result = train_py(f"--checkpoint={bert}", f"--data-dir={data}", f"--out={out}", *ARGS[1:], "--train.epochs=0")
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.splitlines() == ["train.py: error: train.epochs must be at least 1, got 0"]
    assert not out.exists()
