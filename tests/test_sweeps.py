"""Sweeps: a grid of learning rates and loss weights × seeds trained in one vmapped program, through a suite whose
tables show each point as a row; each member equals the run its own `config.yaml` trains alone; the keys and
values that would change the program are refused."""

import csv
import json

import jax
import numpy as np
import pytest
import yaml

from conftest import restore, tiny_checkpoint, write_fixture_data
from jaxbert import experiments
from jaxbert.config import ConfigError, load_config, parse_overrides, replace
from jaxbert.members import members
from jaxbert.training import train_and_evaluate

SWEEP = {"train.lr": [1e-3, 3e-3], "losses.supcon_weight": [0.1, 0.3]}
POINTS = ["lr=0.001,supcon_weight=0.1", "lr=0.001,supcon_weight=0.3", "lr=0.003,supcon_weight=0.1",
          "lr=0.003,supcon_weight=0.3"]


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """A suite of one sweep row (2 learning rates × 2 SupCon weights, seed 0) on a tiny BERT, trained: one epoch
    of 5 round-robin steps over sst and sts."""
    root = tmp_path_factory.mktemp("sweep")
    bert, data = tiny_checkpoint(root / "bert"), write_fixture_data(root / "data")
    # Mean pooling keeps a random tiny BERT's sentence embeddings apart: the cosines of its near-identical [CLS]
    # vectors would make the STS correlation hang on float32 rounding.
    base = {"tasks": ["sst", "sts"], "model": {"checkpoint": str(bert)},
            "heads": {"sst_pooling": "mean", "pair_pooling": "mean"},
            "data": {"data_dir": str(data), "cache_dir": str(root / "cache"), "max_length": 32, "buckets": [32]},
            "train": {"epochs": 1, "batch_size": 8, "eval_batch_size": 16, "log_every": 5}}
    (root / "base.yaml").write_text(yaml.safe_dump(base))
    suite = {"name": "sw", "seeds": [0], "rows": [{"name": "grid", "config": "base.yaml", "overrides": {"sweep": SWEEP}}]}
    (root / "suite.yaml").write_text(yaml.safe_dump(suite, sort_keys=False))
    lines = []
    experiments.run_jobs(experiments.plan(experiments.load_suite(root / "suite.yaml"), root / "results"),
                         log=lines.append)
    experiments.write_report(experiments.load_suite(root / "suite.yaml"), root / "results")
    return root, root / "results" / "sw" / "grid", lines


def test_a_sweep_is_one_call_and_its_points_are_rows_of_the_tables(swept):
    root, folder, lines = swept
    suite = experiments.load_suite(root / "suite.yaml")
    assert suite.rows[0].labels == tuple(f"grid[{p}]" for p in POINTS) and suite.baseline == f"grid[{POINTS[0]}]"
    assert sum(line.startswith("[1/1] grid (sweep) seed 0") for line in lines) == 1
    assert any("sweep: 4 point(s) × 1 seed(s), 4 members in one program" in line for line in lines)
    # One stacked state for resuming; each member's results, best checkpoint and config in its own folder.
    assert (folder / "checkpoints").is_dir() and load_config(folder / "config.yaml").sweep == SWEEP
    for point in POINTS:
        member = load_config(folder / point / "seed0" / "config.yaml")
        assert member.sweep == {} and member.train.seed == 0 and member.train.data_seed == 0
        assert f"lr={member.train.lr:g},supcon_weight={member.losses.supcon_weight:g}" == point
        assert (folder / point / "seed0" / "results.json").is_file()
    table = (root / "results" / "sw" / "table.md").read_text()
    assert all(f"| grid[{p}] | 1 |" in table for p in POINTS)
    with open(root / "results" / "sw" / "significance.csv", newline="") as f:
        assert {record["row"] for record in csv.DictReader(f)} == {f"grid[{p}]" for p in POINTS[1:]}
    # Rerun: every member is complete, nothing to train.
    assert experiments.plan(suite, root / "results") == []


def relative_error(a, b) -> float:
    """The largest difference of two tensors over the largest magnitude of `b`, at least 1e-3: a tensor of rounding
    noise alone (the attention key bias, whose gradient is 0 in exact arithmetic, ~1e-9 here) is compared
    absolutely."""
    return float(np.max(np.abs(a - b)) / max(float(np.max(np.abs(b))), 1e-3))


@pytest.mark.parametrize("point", [POINTS[0], POINTS[3]])
def test_each_member_equals_the_run_of_its_own_config(swept, tmp_path, point):
    _, folder, _ = swept
    member = folder / point / "seed0"
    alone = replace(load_config(member / "config.yaml"), {"out": str(tmp_path / "alone")})
    results = train_and_evaluate(alone)
    in_sweep, _ = restore(member, "best")
    own, _ = restore(tmp_path / "alone", "best")
    errors = jax.tree.map(relative_error, in_sweep["params"], own["params"])
    # A swept learning rate is a traced number, a run's own a constant XLA folds: rounding apart, the same run.
    print(f"{point}: worst parameter error {max(jax.tree.leaves(errors)):.1e} of its tensor's scale")
    assert max(jax.tree.leaves(errors)) < 1e-4, errors
    # Not a comparison of models the sweep's values leave alike: another point's params are far apart.
    other, _ = restore(folder / (POINTS[3] if point == POINTS[0] else POINTS[0]) / "seed0", "best")
    assert np.median(jax.tree.leaves(jax.tree.map(relative_error, other["params"], own["params"]))) > 1e-3
    saved = json.loads((member / "results.json").read_text())["metrics"]["dev"]
    assert saved["sts"]["pearson"] == pytest.approx(results["metrics"]["dev"]["sts"]["pearson"], abs=1e-5)
    assert saved["sst"] == results["metrics"]["dev"]["sst"]


def test_members_are_points_times_seeds_in_their_own_folders():
    config = load_config(None, {"out": "runs/sw", "train.seeds": 2, "sweep": {"lr": [1e-5, 2e-5]}})
    found = members(config)
    assert [(m.key, m.config.out, m.config.train.lr) for m in found] == [
        ("lr=1e-05/seed0", "runs/sw/lr=1e-05/seed0", 1e-5), ("lr=1e-05/seed1", "runs/sw/lr=1e-05/seed1", 1e-5),
        ("lr=2e-05/seed0", "runs/sw/lr=2e-05/seed0", 2e-5), ("lr=2e-05/seed1", "runs/sw/lr=2e-05/seed1", 2e-5)]
    assert all(m.config.train.data_seed == 0 and not m.config.sweep for m in found)


@pytest.mark.parametrize("sweep, message", [
    ("{model.hidden_dropout: [0.1, 0.2]}", r"sweep: model\.hidden_dropout is a constant of the compiled model"),
    ("{heads.dropout: [0.1, 0.2]}", r"sweep: heads\.dropout is a constant"),
    ("{train.batch_size: [8, 16]}", r"sweep: train\.batch_size changes the program's shapes or structure.*"
                                    r"a sweep varies train\.lr, losses\.supcon_weight"),
    ("{losses.supcon_weight: [0, 0.1]}", r"sweep: losses\.supcon_weight: \[0\.0, 0\.1\] holds 0 or less; a weight "
                                         r"of 0 switches its term off \(SupCon and SimCSE their second dropout view"),
    ("{smart.weight: [1, 2]}", r"sweep: smart\.weight: SMART is off in every stage"),
    ("{lr: [1e-5, 1e-5]}", r"sweep: lr: expected a list of distinct numbers"),
    ("{lr: [1e-5], train.lr: [2e-5]}", r"sweep: train\.lr is given twice"),
    ("{train.lrr: [1e-5]}", r"sweep: unknown option --train\.lrr; did you mean --train\.lr"),
    ("{lr: [-1, 1e-5]}", r"sweep point train\.lr=-1: train\.lr and train\.weight_decay must be non-negative"),
    ("{losses.simcse_weight: [0.1, 0.2]}", r"sweep point losses\.simcse_weight=0\.1: losses\.simcse_weight 0\.1: "
                                           r"none of losses\.simcse_tasks"),
])
def test_a_sweep_that_would_change_the_program_is_refused(sweep, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, parse_overrides([f"--sweep={sweep}", *(["--tasks=para,sts"] if "simcse" in sweep else [])]))


def test_a_stage_may_not_set_what_the_sweep_varies():
    stages = [{"name": "warm", "lr": 1e-3}, {"name": "all"}]
    with pytest.raises(ConfigError, match=r"sweep: stages\[0\] \(warm\) sets train\.lr, which the sweep varies"):
        load_config(None, {"stages": stages, "sweep": {"lr": [1e-5, 2e-5]}})
    assert load_config(None, {"stages": stages, "sweep": {"losses.supcon_weight": [0.1, 0.2]}}).sweep
