"""Many seeds in one program: a vmapped `--seeds 2` run against two separate single-seed runs, the run-folder
layout both multi-seed modes write, an interrupted vmapped run resumed exactly, and the config errors."""

import json
import re
import shutil
from pathlib import Path

import jax
import numpy as np
import pytest

import train
from conftest import ARGS, assert_tree_close, dev_rows, killed_after_checkpoint, restore, run_config, staged_config
from conftest import workspace  # noqa: F401 (fixture: the tiny BERT and fixture data)
from jaxbert.config import ConfigError, load_config, parse_overrides, to_dict
from jaxbert.run_folder import RunFolderError
from jaxbert.training import train_and_evaluate

pytestmark = pytest.mark.usefixtures("compilation_cache")

EXTRA = ("--seed=3", "--train.checkpoint_every=2", "--sts-head=cosine_concat")  # an STS head with params to initialize
SEEDS = (3, 4)
# float32: the vmapped and the unbatched programs round differently. After 10 Adam steps the params differ by
# < 1e-7 and the predictions by an ulp; the tiny model's STS scores all lie within ~3e-3 of each other, so an ulp
# moves their Pearson correlation by up to ~1e-4 of itself (the accuracies are exactly equal).
TOLERANCE = dict(rtol=1e-5, atol=1e-6)
METRICS_RTOL = 1e-3


def dev_history(folder):
    return [row["dev"] for row in dev_rows(folder)]


def flat(metrics, prefix=""):
    """`[{"sst": {"accuracy": a}}]` → `{"/0/sst/accuracy": a}`, which `pytest.approx` compares."""
    if isinstance(metrics, list):
        metrics = dict(enumerate(metrics))
    if not isinstance(metrics, dict):
        return {prefix: metrics}
    return {key: value for name, child in metrics.items() for key, value in flat(child, f"{prefix}/{name}").items()}


@pytest.fixture(scope="module")
def vmapped(workspace):  # noqa: F811
    """Seeds 3 and 4 in one program, started through train.py's command line (bare `--seeds N --vmap-seeds`)."""
    bert, data, root = workspace
    out = root / "vmapped"
    train.main([f"--checkpoint={bert}", f"--data-dir={data}", f"--out={out}", f"--data.cache_dir={root / 'cache'}",
                *ARGS, *EXTRA, "--seeds", "2", "--vmap-seeds"])
    return out


def test_vmapped_seeds_equal_separate_runs(workspace, vmapped):  # noqa: F811
    """Each seed of the vmapped run = a single-seed run with that seed and the first seed's batch order."""
    _, _, root = workspace
    top = load_config(vmapped / "config.yaml")
    assert (top.train.seed, top.train.seeds, top.train.vmap_seeds) == (3, 2, True)
    stacked, _ = restore(vmapped)
    assert stacked["params"]["sst"]["kernel"].shape[0] == 2  # the latest state, stacked over the seeds
    for k, seed in enumerate(SEEDS):
        config = run_config(workspace, root / f"single{seed}", *EXTRA, f"--seed={seed}", "--train.data_seed=3")
        folder = vmapped / f"seed{seed}"
        recorded = to_dict(load_config(folder / "config.yaml"))
        assert {**recorded, "out": None} == {**to_dict(config), "out": None}  # this very single-seed run
        single = train_and_evaluate(config, log=lambda _: None)

        vmapped_results = json.loads((folder / "results.json").read_text())
        assert vmapped_results["steps"] == single["steps"] == 10
        assert vmapped_results["best_epoch"] == single["best_epoch"]
        assert flat(vmapped_results["metrics"]) == pytest.approx(flat(single["metrics"]), rel=METRICS_RTOL)
        assert flat(dev_history(folder)) == pytest.approx(flat(dev_history(config.out)), rel=METRICS_RTOL)
        single_latest, _ = restore(config.out)  # stacked too, over its one seed
        assert {x.shape[0] for x in jax.tree.leaves(single_latest["params"])} == {1}
        assert_tree_close(jax.tree.map(lambda x: x[k], stacked["params"]),
                          jax.tree.map(lambda x: x[0], single_latest["params"]), **TOLERANCE)
        (seed_best, progress), (single_best, single_progress) = restore(folder, "best"), restore(config.out, "best")
        assert_tree_close(seed_best["params"], single_best["params"], **TOLERANCE)
        assert progress["epoch"] == single_progress["epoch"] == vmapped_results["best_epoch"]
        for name in ("sst-dev", "sst-test", "para-dev", "sts-dev"):
            lines = [(folder / "predictions" / f"{name}-output.csv").read_text().splitlines(),
                     (Path(config.out) / "predictions" / f"{name}-output.csv").read_text().splitlines()]
            assert lines[0][0] == lines[1][0] and len(lines[0]) == len(lines[1])
            ids, values = zip(*[zip(*(line.split(" , ") for line in rows[1:])) for rows in lines])
            assert ids[0] == ids[1]
            np.testing.assert_allclose(np.array(values[0], float), np.array(values[1], float), **TOLERANCE)
    three, four = (jax.tree.map(lambda x, k=k: x[k], stacked["params"]) for k in range(2))
    assert not np.allclose(three["sst"]["kernel"], four["sst"]["kernel"])  # different heads
    assert not all(np.allclose(a, b) for a, b in zip(jax.tree.leaves(three["bert"]), jax.tree.leaves(four["bert"])))


def run_files(folder):
    """What a downstream tool reads: every file but the checkpoints and TensorBoard's event files."""
    return sorted(p.relative_to(folder).as_posix() for p in Path(folder).rglob("*")
                  if p.is_file() and not {"checkpoints", "tensorboard"} & set(p.relative_to(folder).parts))


def test_seeds_in_turn_write_the_same_layout(workspace, vmapped):  # noqa: F811
    """`--seeds 2` without vmap: two ordinary runs, each on its own batch order, in the vmapped run's layout."""
    _, _, root = workspace
    out = root / "in_turn"
    logs = []
    by_seed = train_and_evaluate(run_config(workspace, out, *EXTRA, "--seeds=2", "--epochs=1"), log=logs.append)
    assert sorted(by_seed) == list(SEEDS)
    assert load_config(out / "config.yaml").train.seeds == 2
    for seed in SEEDS:
        folder = out / f"seed{seed}"
        config = load_config(folder / "config.yaml")
        assert (config.train.seed, config.train.seeds, config.train.data_seed, config.out) == (seed, 1, None,
                                                                                              str(folder))
        assert json.loads((folder / "results.json").read_text()) == json.loads(json.dumps(by_seed[seed]))
        assert run_files(folder) == run_files(vmapped / f"seed{seed}")
        assert (folder / "checkpoints" / "latest").is_dir() and (folder / "tensorboard").is_dir()
        assert len(dev_history(folder)) == 1
    assert run_files(out) == ["config.yaml", *(f"seed{s}/{f}" for s in SEEDS for f in run_files(out / f"seed{s}"))]
    assert any(line.startswith("seed 4: epoch 1: dev") for line in logs)
    assert any(line.startswith("2 seeds 3-4: best dev overall") for line in logs)


def test_vmapped_run_resumes_exactly(workspace, vmapped, monkeypatch):  # noqa: F811
    _, _, root = workspace
    config = run_config(workspace, root / "cut", *EXTRA, "--seeds=2", "--vmap-seeds")
    with killed_after_checkpoint(monkeypatch, 2):  # mid-way through the first epoch
        train_and_evaluate(config, log=lambda _: None)
    _, progress = restore(root / "cut")
    assert (progress["epoch"], progress["step_in_epoch"], len(progress["seeds"])) == (0, 4, 2)

    logs = []
    resumed = train_and_evaluate(config, log=logs.append, resume=True)
    assert any("resumed from step 4" in line for line in logs), logs
    for seed in SEEDS:
        full = json.loads((vmapped / f"seed{seed}" / "results.json").read_text())
        assert resumed[seed]["metrics"] == full["metrics"] and resumed[seed]["steps"] == full["steps"]
        assert dev_history(root / "cut" / f"seed{seed}") == dev_history(vmapped / f"seed{seed}")
        assert_tree_close(restore(root / "cut" / f"seed{seed}", "best")[0],
                           restore(vmapped / f"seed{seed}", "best")[0], rtol=0, atol=0)
    assert_tree_close(restore(root / "cut")[0], restore(vmapped)[0], rtol=0, atol=0)


def test_seed_flags_and_errors():
    assert parse_overrides(["--seeds", "4", "--vmap-seeds", "--train.data_seed=7"]) == {
        "train.seeds": "4", "train.vmap_seeds": "true", "train.data_seed": "7"}
    config = load_config(None, parse_overrides(["--seeds=3", "--vmap-seeds"]))
    assert (config.train.seeds, config.train.vmap_seeds, config.train.data_seed) == (3, True, None)
    with pytest.raises(ConfigError, match="train.seeds must be at least 1, got 0"):
        load_config(None, parse_overrides(["--seeds=0"]))
    with pytest.raises(ConfigError, match="train.seeds: expected an integer, got 'two'"):
        load_config(None, parse_overrides(["--seeds=two"]))
    with pytest.raises(ConfigError, match="--vmap-seeds: expected true or false"):
        load_config(None, parse_overrides(["--vmap-seeds=sometimes"]))


def test_resume_with_another_seed_count_is_an_error(workspace, vmapped, tmp_path):  # noqa: F811
    shutil.copytree(vmapped / "checkpoints", tmp_path / "checkpoints")
    shutil.copyfile(vmapped / "config.yaml", tmp_path / "config.yaml")
    for seeds, vmap, named in ((["--seeds=3"], ["--vmap-seeds"], "train.seeds: 2 in the run, 3 now"),
                               (["--seeds=1"], [], "train.seeds: 2 in the run, 1 now; train.vmap_seeds: True in the run, "
                                                   "False now")):
        config = run_config(workspace, tmp_path, *EXTRA, *seeds, *vmap)
        with pytest.raises(RunFolderError, match=re.escape(named)):
            train_and_evaluate(config, log=lambda _: None, resume=True)


HEADS_THEN_STS = """\
stages:
  - name: heads
    freeze_encoder: true
    lr: 1.0e-2
    epochs: 1
  - name: sts
    tasks: [sts]
    epochs: 1
"""


def test_vmapped_seeds_of_a_staged_run(workspace):  # noqa: F811
    """Stages and vmapped seeds together: the second seed equals its own staged single-seed run."""
    _, _, root = workspace
    out = root / "staged_vmapped"
    by_seed = train_and_evaluate(staged_config(workspace, out, HEADS_THEN_STS, *EXTRA, "--seeds=2", "--vmap-seeds"),
                                 log=lambda _: None)
    single = train_and_evaluate(staged_config(workspace, root / "staged_single4", HEADS_THEN_STS, *EXTRA, "--seed=4",
                                              "--train.data_seed=3"), log=lambda _: None)
    folder = out / "seed4"
    stages = [(r["epoch"], r["stage"], r["stage_name"], r["stage_epoch"], r["step"])
              for r in dev_rows(folder)]
    assert stages == [(1, 0, "heads", 1, 5), (2, 1, "sts", 1, 10)]
    assert by_seed[4]["steps"] == single["steps"] == 10 and by_seed[4]["best_epoch"] == single["best_epoch"]
    # After the STS stage the tiny model's Pearson correlation is near 0: an ulp of the scores moves it by ~1e-5
    # absolute, which is no small fraction of it.
    close = dict(rel=METRICS_RTOL, abs=1e-4)
    assert flat(by_seed[4]["metrics"]) == pytest.approx(flat(single["metrics"]), **close)
    assert flat(dev_history(folder)) == pytest.approx(flat(dev_history(single["config"]["out"])), **close)
    assert_tree_close(restore(folder, "best")[0]["params"], restore(single["config"]["out"], "best")[0]["params"],
                       **TOLERANCE)
    assert by_seed[3]["metrics"] != by_seed[4]["metrics"]


def test_predict_py_on_one_seed_of_a_vmapped_run(vmapped, workspace, tmp_path, capsys):  # noqa: F811
    import predict

    data = workspace[1]
    folder = vmapped / "seed4"
    output = tmp_path / "sts-dev.csv"
    predict.main([str(folder), "--task", "sts", "--input", str(data / "sts-dev.csv"), "--output", str(output)])
    assert output.read_text() == (folder / "predictions" / "sts-dev-output.csv").read_text()
    with pytest.raises(SystemExit) as exit_:
        predict.main([str(vmapped), "--task", "sst", "A film ."])
    assert str(exit_.value) == (f"predict.py: error: {vmapped} is a run of 2 seeds: pass one seed's folder, "
                                f"{vmapped / 'seed3'} say")
