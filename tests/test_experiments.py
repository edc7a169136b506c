"""The suite runner: strict suite files, the plan, and a tiny suite of 2 rows × 2 seeds trained end to end,
its table checked against NumPy on the runs' own files, rerun (complete runs skipped) and resumed, and its
differences from the baseline row against scipy's Welch test and a bootstrap written here."""

import csv
import dataclasses
import json
import math
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml

from jaxbert import experiments, training
from jaxbert.config import help_text, leaf_paths, load_config, save_config
from jaxbert.experiments import SuiteError, load_suite, plan
from conftest import Interrupted, dev_rows, tiny_checkpoint, write_fixture_data

pytestmark = pytest.mark.usefixtures("compilation_cache")

ROOT = Path(__file__).resolve().parents[1]


def write_suite(folder: Path, text: str, config: str = "tasks: [sst, para, sts]\n") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "base.yaml").write_text(config)
    path = folder / "suite.yaml"
    path.write_text(text)
    return path


GOOD = """
name: demo
seeds: [0, 1]
overrides: {lr: 1.0e-3, train.epochs: 2}
rows:
  - {name: plain, config: base.yaml}
  - {name: pcgrad, config: base.yaml, overrides: {train.surgery: pcgrad, train.epochs: 3}}
"""


@pytest.mark.parametrize("text, message", [
    ("name: x\nrowz: []\n", r"unknown key\(s\) 'rowz'"),
    ("rows: [\n", r"not valid YAML"),
    ("- a\n", r"expected a mapping with name, seeds"),
    ("name: x\nseeds: [0]\n", r"no `rows:`"),
    ("rows: []\n", r"rows: expected a non-empty list"),
    ("rows:\n  - {name: a, config: base.yaml}\n  - {name: a, config: base.yaml}\n", r"row 'a': .*unique"),
    ("rows:\n  - {name: a, config: nowhere.yaml}\n", r"row 'a': config file .*nowhere\.yaml does not exist"),
    ("rows:\n  - {name: a}\n", r"row 'a': no `config:`"),
    ("rows:\n  - {name: a, config: base.yaml, seed: 3}\n", r"row 'a': unknown key\(s\) 'seed'"),
    ("rows:\n  - {name: a, config: base.yaml, overrides: {train.lrr: 1}}\n", r"row 'a': overrides: 'train\.lrr'"),
    ("rows:\n  - {name: a, config: base.yaml, overrides: {train.lr: fast}}\n",
     r"row 'a' \(config .*base\.yaml\): train\.lr: expected a number"),
    ("rows:\n  - {name: a, config: base.yaml, overrides: {sampler: zigzag}}\n",
     r"row 'a' .*: train\.sampler is 'zigzag'"),
    ("rows:\n  - {name: a, config: base.yaml, overrides: {train.seed: 3}}\n", r"row 'a'.*set by the suite runner"),
    ("rows:\n  - {name: a, config: base.yaml, overrides: {out: elsewhere}}\n", r"set by the suite runner"),
    ("rows:\n  - {name: a, config: base.yaml, overrides: {lr: 1, train.lr: 2}}\n", r"train\.lr is given twice"),
    ("rows:\n  - {name: ../a, config: base.yaml}\n", r"names a folder"),
    ("overrides: [lr]\nrows:\n  - {name: a, config: base.yaml}\n", r"overrides: expected a mapping"),
    ("seeds: [0, 0]\nrows:\n  - {name: a, config: base.yaml}\n", r"seeds: \[0, 0\] repeats a seed"),
    ("seeds: [-1]\nrows:\n  - {name: a, config: base.yaml}\n", r"seeds: -1 is not a non-negative integer"),
    ("vmap_seeds: 2\nrows:\n  - {name: a, config: base.yaml}\n", r"vmap_seeds: expected true or false"),
    ("baseline: nope\nrows:\n  - {name: a, config: base.yaml}\n  - {name: b, config: base.yaml}\n",
     r"suite\.yaml: baseline: no row 'nope'; rows: a, b$"),
])
def test_suite_file_errors_name_the_file_and_row(tmp_path, text, message):
    path = write_suite(tmp_path, text)
    with pytest.raises(SuiteError, match=message) as error:
        load_suite(path)
    assert str(path) in str(error.value)


def test_row_config_errors_and_command_line_overrides(tmp_path):
    path = write_suite(tmp_path, GOOD, config="train: {sampler: nope}\n")
    with pytest.raises(SuiteError, match=r"suite\.yaml: row 'plain' \(config .*base\.yaml\): train\.sampler is "):
        load_suite(path)
    path = write_suite(tmp_path, GOOD)
    with pytest.raises(SuiteError, match=r"command line: 'train\.max_stepz'"):
        load_suite(path, {"train.max_stepz": "5"})
    with pytest.raises(SuiteError, match=r"row 'plain' \(config .*\): train\.max_steps: expected an integer"):
        load_suite(path, {"train.max_steps": "five"})


def test_plan_resolves_overrides_and_skips_complete_runs(tmp_path):
    path = write_suite(tmp_path, GOOD)
    suite = load_suite(path, {"train.epochs": "4", "train.batch_size": "8"})
    assert suite.name == "demo" and suite.seeds == (0, 1) and not suite.vmap_seeds
    results = tmp_path / "results"
    done = results / "demo" / "pcgrad" / "seed1"
    done.mkdir(parents=True)
    (done / "results.json").write_text("{}")

    jobs = plan(suite, results)
    assert [(j.row, j.seeds) for j in jobs] == [("plain", (0,)), ("plain", (1,)), ("pcgrad", (0,))]
    config = jobs[2].config()
    # config file < suite < row < command line; the runner's keys last
    assert config.train.lr == 1e-3 and config.train.surgery == "pcgrad" and config.train.epochs == 4
    assert config.train.batch_size == 8 and config.train.seed_list == [0] and not config.train.vmap_seeds
    assert Path(config.out) == results / "demo" / "pcgrad" / "seed0" == jobs[2].folders[0]
    assert jobs[1].config().train.seed == 1 and jobs[1].config().train.surgery == "none"
    assert [(j.row, j.seeds) for j in plan(suite, results, seeds=[1, 2], only=["pcgrad"])] == [("pcgrad", (2,))]

    lines = experiments.describe_plan(suite, results, jobs)
    assert any("pcgrad" in line and "seed 1" in line and "complete, skipped" in line for line in lines)
    assert lines[-1] == "3 call(s) of train_and_evaluate to make"


def test_plan_refuses_a_run_folder_made_with_another_config(tmp_path):
    suite = load_suite(write_suite(tmp_path, GOOD))
    results = tmp_path / "results"
    folder = results / "demo" / "plain" / "seed0"
    folder.mkdir(parents=True)
    old = load_config(suite.rows[0].config, {**suite.rows[0].overrides, "train.lr": 5e-5, "out": str(folder)})
    save_config(old, folder / "config.yaml")
    with pytest.raises(SuiteError, match=r"plain/seed0 was trained with another config .*train\.lr: 5e-05 there, "
                                         r"0\.001 now"):
        plan(suite, results)
    # The runner's own keys (out, seed) and keys the code no longer knows (an older folder's `resume`) are not
    # compared.
    saved = yaml.safe_load((folder / "config.yaml").read_text())
    saved["train"].update(lr=1e-3, seed=7, retired_option=1)
    saved["resume"] = False
    (folder / "config.yaml").write_text(yaml.safe_dump(saved))
    assert len(plan(suite, results)) == 4


def test_vmapped_plan_groups_consecutive_missing_seeds(tmp_path):
    suite = load_suite(write_suite(tmp_path, GOOD.replace("seeds: [0, 1]", "seeds: [0, 1, 2, 3, 5]\nvmap_seeds: true")))
    results = tmp_path / "results"
    for seed in (1,):
        (results / "demo" / "plain" / f"seed{seed}").mkdir(parents=True)
        (results / "demo" / "plain" / f"seed{seed}" / "results.json").write_text("{}")
    jobs = plan(suite, results, only=["plain"])
    assert [j.seeds for j in jobs] == [(0,), (2, 3), (5,)]
    single, vmapped = jobs[0], jobs[1]
    assert (single.overrides["train.seed"], single.overrides["train.seeds"], single.overrides["train.vmap_seeds"]) == (
        0, 1, False) and Path(single.overrides["out"]) == results / "demo/plain/seed0"
    assert vmapped.overrides["train.seed"] == 2 and vmapped.overrides["train.seeds"] == 2
    assert vmapped.overrides["train.vmap_seeds"] is True and "resume" not in vmapped.overrides
    assert Path(vmapped.overrides["out"]) == results / "demo" / "plain"
    assert vmapped.folders == (results / "demo/plain/seed2", results / "demo/plain/seed3")
    assert "train.vmap_seeds" in leaf_paths()  # multi-seed training is in this version of the config
    config = vmapped.config()
    assert (config.train.seed, config.train.seeds, config.train.vmap_seeds) == (2, 2, True)
    lines = experiments.describe_plan(suite, results, jobs, only=["plain"])
    assert sum("seeds 2,3 vmapped in one call" in line for line in lines) == 2


@pytest.mark.parametrize("seeds, expected", [("3", (0, 1, 2)), ("1", (0,)), ("[0, 1, 5]", (0, 1, 5)),
                                            ("'0,1,5'", (0, 1, 5)), ("[2, 3]", (2, 3))])
def test_suite_seeds_mean_what_train_seeds_mean(tmp_path, seeds, expected):
    """A number is that many seeds from 0 (the runner sets each run's train.seed), a list exactly those."""
    suite = load_suite(write_suite(tmp_path, GOOD.replace("seeds: [0, 1]", f"seeds: {seeds}")))
    assert suite.seeds == expected
    assert [j.seeds for j in plan(suite, tmp_path / "results", only=["plain"])] == [(s,) for s in expected]


def test_command_line_seeds_mean_what_train_seeds_mean(tmp_path):
    assert experiments.parse_seeds("3", "--seeds") == (0, 1, 2) and experiments.parse_seeds("0,1,5", "--seeds") == (
        0, 1, 5)
    suite = load_suite(write_suite(tmp_path, GOOD))
    jobs = plan(suite, tmp_path / "results", seeds=experiments.parse_seeds("3", "--seeds"), only=["plain"])
    assert [(j.seeds, j.config().train.seed_list) for j in jobs] == [((s,), [s]) for s in (0, 1, 2)]
    with pytest.raises(SuiteError, match=r"--seeds must be at least 1, got 0"):
        experiments.parse_seeds("0", "--seeds")


def test_runner_help(capsys):
    with pytest.raises(SystemExit) as exited:
        experiments.main(["--help"])
    out = capsys.readouterr().out
    assert exited.value.code == 0 and out.startswith("usage: python -m jaxbert.experiments")
    words = " ".join(out.split())
    assert "3 (seeds 0, 1, 2) or 0,1,5" in words and "`python train.py`'s command line (`--help SECTION`" in words
    for argv in (["--help", "smart"], ["--help=smart"], ["suite.yaml", "-h", "smart"]):
        with pytest.raises(SystemExit) as exited:
            experiments.main(argv)
        assert exited.value.code == 0 and capsys.readouterr().out == help_text("smart")
    with pytest.raises(SystemExit, match=r"^jaxbert\.experiments: error: --help nope: no such section; sections: "):
        experiments.main(["--help", "nope"])
    with pytest.raises(SystemExit) as exited:
        experiments.main([])
    assert exited.value.code == 2 and "required: suite" in capsys.readouterr().err


def test_mean_std_and_learning_curves():
    run = lambda seed, curve: experiments.RunResult(seed, {}, [], curve)  # noqa: E731
    runs = {"a": [run(0, [(5, {"overall": 0.2}), (10, {"overall": 0.4})]), run(1, [(5, {"overall": 0.6})])]}
    assert experiments.learning_curves(runs) == {"overall": {"a": [(5, pytest.approx(0.4)), (10, 0.4)]}}
    mean, std = experiments.mean_std([0.2, 0.6, 0.7])
    assert mean == pytest.approx(0.5) and std == pytest.approx(np.std([0.2, 0.6, 0.7], ddof=1))
    assert math.isnan(experiments.mean_std([0.3])[1])


# ---------------------------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def tiny_suite(tmp_path_factory):
    """A suite of 2 rows × 2 seeds on a tiny random BERT and fixture data, 2 epochs of 5 steps per run."""
    root = tmp_path_factory.mktemp("suite")
    bert, data = tiny_checkpoint(root / "bert"), write_fixture_data(root / "data")
    base = {"model": {"checkpoint": str(bert)}, "data": {"data_dir": str(data), "cache_dir": str(root / "cache"),
                                                           "max_length": 32, "buckets": [32]},
            "train": {"epochs": 2, "batch_size": 8, "eval_batch_size": 16, "lr": 1e-3, "log_every": 5}}
    suite = {"name": "tiny", "seeds": [0, 1], "overrides": {"train.sampler": "roundrobin"},
             "rows": [{"name": "sum", "config": "base.yaml"},
                      {"name": "balanced", "config": "base.yaml",
                       "overrides": {"train.loss_combination": "balanced"}}]}
    path = write_suite(root, yaml.safe_dump(suite), yaml.safe_dump(base))
    return path, root / "results"


def run_main(capsys, *argv):
    experiments.main([str(a) for a in argv])
    return capsys.readouterr().out


# The tiny suite's table columns, each where results.json holds it.
COLUMNS = {"sst_acc": ("sst", "accuracy"), "para_acc": ("para", "accuracy"), "sts_r": ("sts", "pearson"),
           "overall": ("overall",), "mean": ("mean",)}


def test_tiny_suite_end_to_end(tiny_suite, capsys, monkeypatch):
    path, results = tiny_suite
    folder = results / "tiny"

    out = run_main(capsys, path, "--results", results, "--dry-run")
    assert "4 call(s)" in out and str(folder / "balanced" / "seed1") in out and not folder.exists()

    # The first run dies in its second epoch, before that epoch's evaluation: the suite stops there.
    real_evaluate, calls = training.evaluate, []

    def evaluate_or_die(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise Interrupted
        return real_evaluate(*args, **kwargs)

    monkeypatch.setattr(training, "evaluate", evaluate_or_die)
    with pytest.raises(Interrupted):
        run_main(capsys, path, "--results", results)
    monkeypatch.setattr(training, "evaluate", real_evaluate)
    assert not (folder / "sum" / "seed0" / "results.json").exists()
    assert "resumes from its checkpoint" in run_main(capsys, path, "--results", results, "--dry-run")

    out = run_main(capsys, path, "--results", results)
    assert "[sum seed 0] resumed from step 5" in out
    assert out.count("resumed from step") == 1  # the others had no checkpoint and start fresh

    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, check=True).stdout.strip()
    runs = {}
    for row in ("sum", "balanced"):
        for seed in (0, 1):
            run = folder / row / f"seed{seed}"
            results_json = json.loads((run / "results.json").read_text())
            assert results_json["steps"] == 10 and results_json["config"]["train"]["seed"] == seed
            records = dev_rows(run)
            assert [r["step"] for r in records] == [5, 10]  # the resumed run did not repeat epoch 1
            assert (run / "commit.txt").read_text().split()[0].startswith(commit)
            runs[row, seed] = results_json, records
    assert runs["balanced", 0][0]["config"]["train"]["loss_combination"] == "balanced"
    assert runs["sum", 0][0]["metrics"] != runs["sum", 1][0]["metrics"]  # the seeds differ

    with open(folder / "table.csv") as f:
        table = {record["row"]: record for record in csv.DictReader(f)}
    markdown = (folder / "table.md").read_text()
    for row in ("sum", "balanced"):
        record = table[row]
        assert record["n"] == "2" and record["seeds"] == "0 1" and record["commit"].startswith(commit)
        columns = {}
        for key, (task, *name) in COLUMNS.items():
            columns[key] = [runs[row, s][0]["metrics"]["dev"][task] for s in (0, 1)]
            columns[key] = [v[name[0]] if name else v for v in columns[key]]
        columns["wall_time_sec"] = [runs[row, s][0]["wall_time_sec"] for s in (0, 1)]
        columns["train_examples_per_sec"] = [np.mean([r["train_examples_per_sec"] for r in runs[row, s][1]])
                                             for s in (0, 1)]
        cells = []
        for key, values in columns.items():
            mean, std = np.mean(values), np.std(values, ddof=1)
            assert float(record[f"{key}_mean"]) == pytest.approx(mean, rel=1e-12, abs=1e-15)
            assert float(record[f"{key}_std"]) == pytest.approx(std, rel=1e-9, abs=1e-15)
            digits = {"wall_time_sec": 0, "train_examples_per_sec": 1}.get(key, 3)
            cells.append(f"{mean:.{digits}f} ± {std:.{digits}f}")
        assert f"| {row} | 2 | {' | '.join(cells)} | {record['commit']} |" in markdown
    for name in ("bars_sst_acc", "bars_para_acc", "bars_sts_r", "bars_overall", "bars_mean", "curves"):
        assert (folder / f"{name}.png").read_bytes()[:4] == b"\x89PNG"

    # Rerun: nothing complete is trained again. Then a run whose results.json is gone resumes from its last
    # checkpoint (the end of the run): only its final evaluation runs, and it finds the same figures.
    mtimes = {run: (folder / run[0] / f"seed{run[1]}" / "results.json").stat().st_mtime_ns for run in runs}
    out = run_main(capsys, path, "--results", results)
    assert "0 call(s)" in out and "resumed" not in out
    (folder / "balanced" / "seed1" / "results.json").unlink()
    out = run_main(capsys, path, "--results", results)
    assert "1 call(s)" in out and "[balanced seed 1] resumed from step 10" in out
    for run, mtime in mtimes.items():
        again = folder / run[0] / f"seed{run[1]}" / "results.json"
        assert (again.stat().st_mtime_ns == mtime) == (run != ("balanced", 1))
        assert json.loads(again.read_text())["metrics"] == runs[run][0]["metrics"]

    # --report-only rebuilds the table from what exists.
    markdown = (folder / "table.md").read_text()
    (folder / "table.md").unlink()
    run_main(capsys, path, "--results", results, "--report-only")
    assert (folder / "table.md").read_text() == markdown


# The tiny suite's dev files: each task's column, file and label column.
DEV = {"sst_acc": ("ids-sst-dev.csv", "sentiment"), "para_acc": ("quora-dev.csv", "is_duplicate"),
       "sts_r": ("sts-dev.csv", "similarity")}


def resampled_dev_metrics(run: Path, data: Path) -> dict[str, np.ndarray]:
    """A run's metric columns on the 10,000 resamples the suite's bootstrap documents, from its prediction files
    and the fixture's dev files, by plain indexing: `{key: [10000]}`."""
    out = {}
    for key, (file, label) in DEV.items():
        task, metric = COLUMNS[key]
        with open(data / file, newline="") as f:
            gold_rows = list(csv.DictReader(f, delimiter="\t"))
        lines = (run / "predictions" / f"{task}-dev-output.csv").read_text().splitlines()[1:]
        assert [line.split(" , ")[0] for line in lines] == [row["id"] for row in gold_rows]
        pred = np.array([float(line.split(" , ")[1]) for line in lines])
        # The data readers keep scores as float32 (`data.Examples`): so did the run's own metric.
        gold = np.array([float(row[label]) for row in gold_rows], np.float32).astype(np.float64)
        n = len(gold)
        idx = np.random.default_rng([0, *task.encode()]).integers(0, n, size=(10_000, n))
        x, y = pred[idx], gold[idx]
        if metric == "accuracy":
            out[key] = (x == y).mean(axis=1)
        else:
            x, y = x - x.mean(axis=1, keepdims=True), y - y.mean(axis=1, keepdims=True)
            out[key] = (x * y).sum(axis=1) / np.sqrt((x * x).sum(axis=1) * (y * y).sum(axis=1))
    out["overall"] = (out["sst_acc"] + out["para_acc"] + (out["sts_r"] + 1) / 2) / 3
    out["mean"] = (out["sst_acc"] + out["para_acc"] + out["sts_r"]) / 3
    return out


def copy_runs(results: Path, to: Path) -> Path:
    """The tiny suite's run folders without their checkpoints."""
    for run in (results / "tiny").glob("*/seed*"):
        target = to / "tiny" / run.relative_to(results / "tiny")
        (target / "predictions").mkdir(parents=True)
        for name in ("config.yaml", "results.json", "metrics.jsonl", "commit.txt"):
            (target / name).write_bytes((run / name).read_bytes())
        for file in (run / "predictions").iterdir():
            (target / "predictions" / file.name).write_bytes(file.read_bytes())
    return to


@pytest.mark.filterwarnings("ignore:Precision loss:RuntimeWarning")  # scipy, on Quora's equal seeds
def test_tiny_suite_significance(tiny_suite, capsys, tmp_path):
    """The differences from the baseline row (the first, sum) equal scipy's Welch test on the runs' results.json
    and a bootstrap written here on their own prediction files; `baseline:` picks another row; a run whose
    predictions are missing or no longer score what results.json says is left out of the bootstrap, with a note."""
    from scipy import stats

    path, results = tiny_suite
    run_main(capsys, path, "--results", results)  # trains nothing once test_tiny_suite_end_to_end has run
    folder, data = results / "tiny", path.parent / "data"
    with open(folder / "significance.csv") as f:
        table = {record["metric"]: record for record in csv.DictReader(f)}
    markdown = (folder / "table.md").read_text()
    assert "## Differences from the baseline, sum" in markdown
    assert list(table) == ["sst_acc", "para_acc", "sts_r", "overall", "mean"]
    results_json = {(row, s): json.loads((folder / row / f"seed{s}" / "results.json").read_text())["metrics"]["dev"]
                    for row in ("sum", "balanced") for s in (0, 1)}
    resampled = {(row, s): resampled_dev_metrics(folder / row / f"seed{s}", data)
                 for row in ("sum", "balanced") for s in (0, 1)}

    def value(row, seed, key):
        task, *name = COLUMNS[key]
        return results_json[row, seed][task][name[0]] if name else results_json[row, seed][task]

    def independent_bootstrap(key, seeds):
        d = np.mean([resampled["balanced", s][key] - resampled["sum", s][key] for s in seeds], axis=0)
        low, high = np.percentile(d, [2.5, 97.5])
        return low, high, min(1.0, 2 * min(np.mean(d <= 0), np.mean(d >= 0)))

    num = lambda text: math.nan if text == "" else float(text)  # noqa: E731
    varied = 0
    for key, record in table.items():
        assert (record["row"], record["baseline"], record["paired_seeds"]) == ("balanced", "sum", "2")
        row, base = [value("balanced", s, key) for s in (0, 1)], [value("sum", s, key) for s in (0, 1)]
        welch = stats.ttest_ind(row, base, equal_var=False)
        interval = welch.confidence_interval(0.95)
        assert num(record["diff"]) == pytest.approx(np.mean(row) - np.mean(base), abs=1e-15)
        assert num(record["welch_low"]) == pytest.approx(interval.low, rel=1e-12, abs=1e-15)
        assert num(record["welch_high"]) == pytest.approx(interval.high, rel=1e-12, abs=1e-15)
        assert num(record["welch_p"]) == pytest.approx(welch.pvalue, rel=1e-12, nan_ok=True)
        low, high, p = independent_bootstrap(key, (0, 1))
        assert num(record["bootstrap_diff"]) == pytest.approx(np.mean(np.subtract(row, base)), abs=1e-15)
        assert num(record["bootstrap_low"]) == pytest.approx(low, rel=1e-9, abs=1e-12)
        assert num(record["bootstrap_high"]) == pytest.approx(high, rel=1e-9, abs=1e-12)
        assert num(record["bootstrap_p"]) == pytest.approx(p, abs=1e-12)
        significant = welch.pvalue < 0.05 and p < 0.05
        assert record["significant"] == str(significant)
        diff = f"{np.mean(row) - np.mean(base):+.4f}{'*' if significant else ''}"
        assert f"| balanced | {experiments.metric_label(key)} | {diff} | " in markdown
        varied += high > low
    assert varied >= 3  # the rows' predictions differ: most intervals are not a point

    # One seed a side: no t-test, a bootstrap over the one seed.
    suite = load_suite(path)
    runs = experiments.collect(suite, results)
    one = experiments.compare(suite, {row: row_runs[:1] for row, row_runs in runs.items()})[0]
    for d in one:
        assert math.isnan(d.welch_low) and math.isnan(d.welch_p) and d.paired_seeds == 1 and not d.significant
        assert (d.bootstrap_low, d.bootstrap_high, d.bootstrap_p) == pytest.approx(
            independent_bootstrap(d.metric, (0,)), rel=1e-9, abs=1e-12)

    assert experiments.compare(suite, {**runs, "sum": []}) == (
        [], ["the baseline row sum has no complete run: nothing is compared"])

    # `baseline: balanced`: the same comparisons, the other way round.
    other = path.parent / "suite_balanced.yaml"
    other.write_text(path.read_text() + "baseline: balanced\n")
    flipped, notes = experiments.compare(load_suite(other), runs)
    assert not notes and [(d.row, d.baseline, d.metric) for d in flipped] == [("sum", "balanced", k) for k in table]
    for d in flipped:
        record = table[d.metric]
        assert d.diff == pytest.approx(-num(record["diff"]), abs=1e-15)
        assert d.welch_p == pytest.approx(num(record["welch_p"]), rel=1e-12, nan_ok=True)
        assert (d.bootstrap_low, d.bootstrap_high) == pytest.approx(
            (-num(record["bootstrap_high"]), -num(record["bootstrap_low"])), rel=1e-9, abs=1e-12)
        assert d.bootstrap_p == pytest.approx(num(record["bootstrap_p"]), abs=1e-12)

    # A missing prediction file, and one edited since: those runs leave the bootstrap, and the table says why.
    copied = copy_runs(results, tmp_path / "results")
    (copied / "tiny" / "balanced" / "seed1" / "predictions" / "sst-dev-output.csv").unlink()
    sts = copied / "tiny" / "sum" / "seed0" / "predictions" / "sts-dev-output.csv"
    lines = sts.read_text().splitlines(keepends=True)
    sts.write_text("".join([lines[0], lines[1].split(" , ")[0] + " , 0.5 \n", *lines[2:]]))
    differences, notes = experiments.compare(suite, experiments.collect(suite, copied))
    assert len(notes) == 2 and notes[0].startswith("sum seed 0 is left out of the bootstrap: ")
    assert "sts-dev-output.csv scores pearson" in notes[0] and "the dev data changed since the run" in notes[0]
    assert notes[1].startswith("balanced seed 1 is left out of the bootstrap: ") and "is missing" in notes[1]
    # sum keeps seed 1 in the bootstrap, balanced seed 0: no seed pairs; the t-test is as before.
    assert [d.paired_seeds for d in differences] == [0] * 5 and all(math.isnan(d.bootstrap_p) for d in differences)
    assert [d.welch_high for d in differences] == pytest.approx([num(r["welch_high"]) for r in table.values()])
    text = experiments.markdown_table(suite, experiments.collect(suite, copied), differences, notes)
    assert f"\n- {notes[1]}\n" in text and "| 0 | n/a | n/a |" in text


def test_significance_table_marks_what_both_tests_find():
    nan = math.nan
    suite = experiments.Suite(Path("s.yaml"), "s", (0, 1), False, (), "plain")
    both = experiments.Difference("pcgrad", "plain", "sst_acc", 0.0123, 0.002, 0.0226, 0.03, 2, 0.0123, 0.005,
                                  0.019, 0.0)
    welch_only = dataclasses.replace(both, metric="overall", bootstrap_p=0.2)
    untested = experiments.Difference("smart", "plain", "sts_r", -0.00004, nan, nan, nan, 0, nan, nan, nan, nan)
    assert both.significant and not welch_only.significant and not untested.significant
    text = experiments.significance_table(suite, [both, welch_only, untested], [])
    assert "| pcgrad | SST acc | +0.0123* | [+0.0020, +0.0226] | 0.030 | 2 | [+0.0050, +0.0190] | <0.001 |" in text
    assert "| pcgrad | overall | +0.0123 | [+0.0020, +0.0226] | 0.030 | 2 | [+0.0050, +0.0190] | 0.200 |" in text
    assert "| smart | STS r | -0.0000 | n/a | n/a | 0 | n/a | n/a |" in text


def test_bad_command_line_exits_with_the_reason(tiny_suite):
    path, results = tiny_suite
    for argv, message in ((["--only", "nope"], "no row 'nope'"), (["--seeds", "0,x"], "--seeds must be a number of seeds"),
                          (["--train.lrr=1"], "unknown option --train.lrr"), (["--seed=2"], "set by the suite runner")):
        with pytest.raises(SystemExit, match=message):
            experiments.main([str(path), "--results", str(results), "--dry-run", *argv])


def test_default_cpu_suite_loads():
    suite = load_suite(ROOT / "configs" / "suites" / "cpu_minilm.yaml")
    assert suite.name == "cpu_minilm" and suite.seeds == (0, 1) and len(suite.rows) == 6
    configs = {row.name: load_config(row.config, row.overrides) for row in suite.rows}
    assert {name: (c.train.surgery, c.smart.enabled, c.train.sampler, c.train.loss_combination)
            for name, c in configs.items()} == {
        "roundrobin": ("none", False, "roundrobin", "sum"), "pcgrad": ("pcgrad", False, "roundrobin", "sum"),
        "gradvac": ("gradvac", False, "roundrobin", "sum"), "smart": ("none", True, "roundrobin", "sum"),
        "annealed": ("none", False, "annealed", "sum"), "balanced": ("none", False, "roundrobin", "balanced")}
    for c in configs.values():  # bounded: one evaluation after 80 steps of 3 × 16 (or 240 one-task steps)
        assert c.model.checkpoint.endswith("all-minilm-l6-v2") and c.train.batch_size == 16
        assert c.train.steps_per_epoch * c.train.epochs == (240 if c.train.sampler == "annealed" else 80)
        assert c.data.buckets == [32, 64, 128]


def test_vmapped_suite_end_to_end(tmp_path, capsys):
    """`vmap_seeds: true`: one call trains both seeds of the row into its seed folders; the table is built from
    them, and a rerun finds both complete (the seeds' pinned batch order is no config change)."""
    bert, data = tiny_checkpoint(tmp_path / "bert"), write_fixture_data(tmp_path / "data")
    base = {"model": {"checkpoint": str(bert)}, "data": {"data_dir": str(data), "cache_dir": str(tmp_path / "cache"),
                                                           "max_length": 32, "buckets": [32]},
            "train": {"epochs": 1, "batch_size": 8, "eval_batch_size": 16, "lr": 1e-3, "log_every": 5,
                      "sampler": "roundrobin"}}
    suite = {"name": "vm", "seeds": [0, 1], "vmap_seeds": True, "rows": [{"name": "sum", "config": "base.yaml"}]}
    path, results = write_suite(tmp_path, yaml.safe_dump(suite), yaml.safe_dump(base)), tmp_path / "results"
    folder = results / "vm" / "sum"

    out = run_main(capsys, path, "--results", results)
    assert "1 call(s)" in out and "[1/1] sum seeds 0,1" in out
    assert load_config(folder / "config.yaml").train.seeds == 2 and (folder / "checkpoints").is_dir()
    runs = [json.loads((folder / f"seed{seed}" / "results.json").read_text()) for seed in (0, 1)]
    for seed, run in enumerate(runs):
        train = load_config(folder / f"seed{seed}" / "config.yaml").train
        assert (train.seed, train.seeds, train.data_seed) == (seed, 1, 0)
        assert run["config"]["train"]["seed"] == seed and run["steps"] == 5
        assert (folder / f"seed{seed}" / "commit.txt").is_file()
    assert runs[0]["metrics"] != runs[1]["metrics"]  # different heads and dropout

    with open(results / "vm" / "table.csv") as f:
        record = next(csv.DictReader(f))
    assert record["row"] == "sum" and record["n"] == "2" and record["seeds"] == "0 1"
    overall = [run["metrics"]["dev"]["overall"] for run in runs]
    assert float(record["overall_mean"]) == pytest.approx(np.mean(overall), rel=1e-12)
    assert float(record["overall_std"]) == pytest.approx(np.std(overall, ddof=1), rel=1e-9)
    assert "0 call(s)" in run_main(capsys, path, "--results", results)
