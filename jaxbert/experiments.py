"""Experiment suites: a list of configs × seeds trained in turn, resumable, summarized in one table.

    python -m jaxbert.experiments configs/suites/cpu_minilm.yaml
    python -m jaxbert.experiments SUITE.yaml --only pcgrad,smart --seeds 0,1,2 --train.max_steps=5
    python -m jaxbert.experiments SUITE.yaml --dry-run        # the plan: rows × seeds, run folders, status
    python -m jaxbert.experiments SUITE.yaml --report-only    # rebuild the tables from the runs that exist

A suite file:

    name: cpu_minilm                    # results go to <results>/<name>/ (default: the file's name)
    seeds: [0, 1]                       # exactly these; 3 is seeds 0, 1, 2 (default 1: seed 0)
    vmap_seeds: false                   # true: a row's missing consecutive seeds train in one vmapped call
    baseline: pcgrad                    # the row the others are compared with (default: the first)
    overrides: {train.max_steps: 100}   # every row; dotted (or unique bare) keys, as on the command line
    rows:
      - name: pcgrad                    # the row's label and its folder <results>/<name>/<row>/
        config: ../minilm_cpu.yaml      # relative to the suite file
        overrides: {train.surgery: pcgrad}

Overrides take the keys and forms of `python train.py`'s command line (`--help SECTION` lists a section's:
`--help train`) and apply in the order config file, suite, row, command line. Each run is a normal run folder,
`<results>/<suite>/<row>/seed<k>/`; one holding `results.json` is complete and skipped, any other is resumed
from its last checkpoint. A row whose config has a `sweep` trains its points × the seeds in one call, each
member in `<row>/<point>/seed<k>/`, and each point is a row of the tables, `<row>[<point>]`. A run folder whose `config.yaml` differs from what the suite now asks for is an
error, not a silent skip. The report (`table.md`, `table.csv`, `significance.csv`, `bars_<metric>.png`,
`curves.png`) follows the runs: mean ± std over seeds, and every row's difference from the baseline row by
Welch's t-test over seeds and a paired bootstrap over the dev examples (`compare`); `commit.txt` in each run
folder records the code it was trained with. Unless JAX is given a compilation cache of its own
(`JAX_COMPILATION_CACHE_DIR`), the runs share one in `<results>/.xla_cache`.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import math
import re
import sys
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import yaml

from jaxbert import tasks
from jaxbert import config as config_module
from jaxbert import data as data_lib
from jaxbert.config import (Config, ConfigError, help_text, leaf_paths, load_config, parse_overrides, resolve_key,
                            sweep_points)
from jaxbert.errors import DataError, MissingFileError, UserError
from jaxbert.members import members as members_of, point_name
from jaxbert.metrics import summarize, task_metric

SUITE_KEYS = ("name", "seeds", "vmap_seeds", "baseline", "overrides", "rows")
ROW_KEYS = ("name", "config", "overrides")
# Set by the runner for every run: a suite or command line that set them would be silently overruled.
RUNNER_KEYS = ("out", "train.seed", "train.seeds", "train.vmap_seeds")
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*")

# A table's metric columns are every scored task's metric ("sst_acc", labelled "SST acc") in the order the runs
# list their tasks, then the aggregate scores of `metrics.summarize`: the course's rescaled overall, and the plain
# mean (a config may select its best epoch by either).
_SHORT = {"accuracy": "acc", "pearson": "r"}
AGGREGATES = ("overall", "mean")
RUN_STATS = (("wall_time_sec", "wall time (s)"), ("train_examples_per_sec", "train examples/s"))


class SuiteError(ConfigError):
    pass


@dataclasses.dataclass(frozen=True)
class Row:
    name: str
    config: Path  # the row's config file
    overrides: dict[str, Any]  # the suite's overrides, then the row's, then the command line's; dotted keys
    points: tuple[str, ...] = ()  # a sweep's point names (`members.point_name`), each a row of the tables

    @property
    def labels(self) -> tuple[str, ...]:
        """Its rows in the tables: its name, or with a sweep `name[point]` for each point."""
        return tuple(f"{self.name}[{point}]" for point in self.points) or (self.name,)


@dataclasses.dataclass(frozen=True)
class Suite:
    path: Path
    name: str
    seeds: tuple[int, ...]
    vmap_seeds: bool
    rows: tuple[Row, ...]
    baseline: str  # the name of the row the others are compared with

    def row(self, name: str) -> Row:
        for row in self.rows:
            if row.name == name:
                return row
        raise SuiteError(f"{self.path}: no row {name!r}; rows: {', '.join(r.name for r in self.rows)}")


# ---------------------------------------------------------------------------------------------- suite files


def load_suite(path: str | Path, extra_overrides: dict[str, Any] | None = None) -> Suite:
    """Reads and checks a suite file; `extra_overrides` (the command line's) apply to every row, last.

    Every row's config is resolved once here, so a bad key or value stops the suite before any run starts.
    """
    path = Path(path)
    if not path.is_file():
        raise SuiteError(f"suite file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise SuiteError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise SuiteError(f"{path}: expected a mapping with {', '.join(SUITE_KEYS)}")
    _check_keys(data, SUITE_KEYS, str(path))
    if "rows" not in data:
        raise SuiteError(f"{path}: no `rows:` (a list of {{name, config, overrides}})")
    name = _safe_name(data.get("name", path.stem), f"{path}: name")
    seeds = parse_seeds(data.get("seeds", [0]), f"{path}: seeds")
    vmap_seeds = data.get("vmap_seeds", False)
    if not isinstance(vmap_seeds, bool):
        raise SuiteError(f"{path}: vmap_seeds: expected true or false, got {vmap_seeds!r}")
    common = _overrides(data.get("overrides", {}), f"{path}: overrides")
    extra = _overrides(extra_overrides or {}, "command line")
    if not isinstance(data["rows"], list) or not data["rows"]:
        raise SuiteError(f"{path}: rows: expected a non-empty list, got {data['rows']!r}")
    rows: list[Row] = []
    for i, spec in enumerate(data["rows"]):
        where = f"{path}: row {spec.get('name', i) if isinstance(spec, dict) else i!r}"
        if not isinstance(spec, dict):
            raise SuiteError(f"{where}: expected a mapping with {', '.join(ROW_KEYS)}, got {spec!r}")
        _check_keys(spec, ROW_KEYS, where)
        for key in ("name", "config"):
            if key not in spec:
                raise SuiteError(f"{where}: no `{key}:`")
        row_name = _safe_name(spec["name"], f"{where}: name")
        where = f"{path}: row {row_name!r}"
        if row_name in (r.name for r in rows):
            raise SuiteError(f"{where}: the name is used by an earlier row; row names must be unique")
        config_file = path.parent / str(spec["config"])
        if not config_file.is_file():
            raise SuiteError(f"{where}: config file {config_file} does not exist")
        overrides = {**common, **_overrides(spec.get("overrides", {}), f"{where}: overrides"), **extra}
        try:
            config = load_config(config_file, overrides)
        except ConfigError as e:
            raise SuiteError(f"{where} (config {config_file}): {e}") from None
        rows.append(Row(row_name, config_file, overrides, tuple(map(point_name, sweep_points(config)))
                        if config.sweep else ()))
    labels = [label for r in rows for label in r.labels]
    baseline = data.get("baseline", labels[0])
    if baseline not in labels:
        raise SuiteError(f"{path}: baseline: no row {baseline!r}; rows: {', '.join(labels)}")
    return Suite(path, name, seeds, vmap_seeds, tuple(rows), baseline)


def parse_seeds(value: Any, where: str) -> tuple[int, ...]:
    """The seeds of a suite's `seeds:` or `--seeds`, as `train.seeds` means them from seed 0: `3` → `(0, 1, 2)`,
    `[0, 1, 5]` or `"0,1,5"` → `(0, 1, 5)` (`jaxbert.config.parse_seeds`)."""
    try:
        return tuple(config_module.parse_seeds(value, where))
    except ConfigError as e:
        raise SuiteError(str(e)) from None


def _check_keys(mapping: dict, allowed: Sequence[str], where: str) -> None:
    unknown = [k for k in mapping if k not in allowed]
    if unknown:
        raise SuiteError(f"{where}: unknown key(s) {', '.join(map(repr, unknown))}; allowed: {', '.join(allowed)}")


def _safe_name(value: Any, where: str) -> str:
    """Names become folder names: no separators, no `..`."""
    if not isinstance(value, str) or not SAFE_NAME.fullmatch(value):
        raise SuiteError(f"{where}: {value!r} must be letters, digits and _ . + - (it names a folder)")
    return value


def _overrides(mapping: Any, where: str) -> dict[str, Any]:
    """`{lr: 1e-3, train.surgery: pcgrad}` → `{"train.lr": 1e-3, "train.surgery": "pcgrad"}`, keys checked."""
    if not isinstance(mapping, dict):
        raise SuiteError(f"{where}: expected a mapping of dotted config keys to values, got {mapping!r}")
    resolved: dict[str, Any] = {}
    for key, value in mapping.items():
        if not isinstance(key, str):
            raise SuiteError(f"{where}: key {key!r} is not a string")
        if key.replace("-", "_") not in RUNNER_KEYS:
            try:
                key_path = resolve_key(key)
            except ConfigError as e:
                raise SuiteError(f"{where}: {key!r}: {e}") from None
        else:
            key_path = key.replace("-", "_")
        if key_path in RUNNER_KEYS:
            raise SuiteError(f"{where}: {key!r}: {key_path} is set by the suite runner for every run "
                             "(the run folder, `seeds:` and `vmap_seeds:` of the suite, or --seeds)")
        if key_path in resolved:
            raise SuiteError(f"{where}: {key_path} is given twice")
        resolved[key_path] = value
    return resolved


# ------------------------------------------------------------------------------------------------------ plan


@dataclasses.dataclass(frozen=True)
class Job:
    """One call of `train_and_evaluate`: a single seed, consecutive seeds vmapped in one program, or a sweep's
    points × seeds in one program."""
    row: str
    seeds: tuple[int, ...]
    config_file: Path
    overrides: dict[str, Any]  # the row's overrides and the runner's keys (out, seed(s))
    folders: tuple[Path, ...]  # the run folder of each member
    sweep: bool = False

    @property
    def vmapped(self) -> bool:
        return len(self.seeds) > 1 or self.sweep

    def config(self) -> Config:
        return load_config(self.config_file, self.overrides)


def run_folder(results: Path, suite: Suite, row: str, seed: int, point: str = "") -> Path:
    """A run's folder: `<results>/<suite>/<row>/seed<k>/`, for a sweep's point `<row>/<point>/seed<k>/`."""
    return Path(results) / suite.name / row / point / f"seed{seed}"


def is_complete(folder: Path) -> bool:
    return (folder / "results.json").is_file()


def plan(suite: Suite, results: str | Path, seeds: Sequence[int] | None = None,
         only: Sequence[str] | None = None) -> list[Job]:
    """The calls that train what is missing, row by row; complete runs are left out.

    With `vmap_seeds`, each stretch of consecutive missing seeds of a row is one call with `train.seeds`,
    `train.vmap_seeds` and `out=<row folder>`, which writes `seed<k>/` in it; a lone missing seed is a plain run.
    A sweep row's seeds that some point misses are one call (`out=<row folder>`), every point of them in one
    program.
    """
    results = Path(results)
    seeds = tuple(seeds) if seeds is not None else suite.seeds
    rows = [suite.row(name) for name in only] if only else list(suite.rows)
    jobs = []
    for row in rows:
        if row.points:
            jobs.extend(_sweep_jobs(results, suite, row, seeds))
            continue
        for folder in [results / suite.name / row.name, *(run_folder(results, suite, row.name, s) for s in seeds)]:
            check_unchanged(folder, row)
        missing = [s for s in seeds if not is_complete(run_folder(results, suite, row.name, s))]
        for group in (_consecutive(missing) if suite.vmap_seeds else [[s] for s in missing]):
            folders = tuple(run_folder(results, suite, row.name, s) for s in group)
            runner = {"train.seed": group[0], "train.seeds": len(group), "train.vmap_seeds": len(group) > 1,
                      "out": str(results / suite.name / row.name if len(group) > 1 else folders[0])}
            jobs.append(Job(row.name, tuple(group), row.config, {**row.overrides, **runner}, folders))
    return jobs


def _sweep_jobs(results: Path, suite: Suite, row: Row, seeds: Sequence[int]) -> list[Job]:
    runner = {"train.seed": seeds[0], "train.seeds": list(seeds), "train.vmap_seeds": False,
              "out": str(results / suite.name / row.name)}
    check_unchanged(results / suite.name / row.name, row)
    for member in members_of(load_config(row.config, {**row.overrides, **runner})):
        check_unchanged(Path(member.config.out), row, member.config)
    missing = [s for s in seeds if not all(is_complete(run_folder(results, suite, row.name, s, point))
                                           for point in row.points)]
    if not missing:
        return []
    runner.update({"train.seed": missing[0], "train.seeds": missing})
    folders = tuple(run_folder(results, suite, row.name, s, point) for point in row.points for s in missing)
    return [Job(row.name, tuple(missing), row.config, {**row.overrides, **runner}, folders, sweep=True)]


def _consecutive(seeds: Sequence[int]) -> list[list[int]]:
    groups: list[list[int]] = []
    for seed in sorted(seeds):
        if groups and seed == groups[-1][-1] + 1:
            groups[-1].append(seed)
        else:
            groups.append([seed])
    return groups


def check_unchanged(folder: Path, row: Row, member: Config | None = None) -> None:
    """A run folder whose config.yaml differs from the row's config (or a sweep member's, `member`; runner keys
    aside) is an error.

    Keys only one side knows (a field added to the code since) are not compared.
    """
    saved_file = folder / "config.yaml"
    if not saved_file.is_file():
        return
    saved = yaml.safe_load(saved_file.read_text()) or {}
    wanted = dataclasses.asdict(member or load_config(row.config, row.overrides))
    changed = []
    for key in leaf_paths():
        if key in RUNNER_KEYS:
            continue
        old, new = _lookup(saved, key), _lookup(wanted, key)
        if key == "train.data_seed" and new is None:  # a vmapped call pins its seeds' batch order to its first seed
            continue
        if old is not _MISSING and new is not _MISSING and old != new:
            changed.append(f"{key}: {old!r} there, {new!r} now")
    if changed:
        raise SuiteError(f"{folder} was trained with another config than row {row.name!r} of {row.config} "
                         f"asks for now ({'; '.join(changed)}): delete the folder to train it again")


_MISSING = object()


def _lookup(nested: dict, dotted: str) -> Any:
    node: Any = nested
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return _MISSING
        node = node[part]
    return node


def describe_plan(suite: Suite, results: str | Path, jobs: Sequence[Job], seeds: Sequence[int] | None = None,
                  only: Sequence[str] | None = None) -> list[str]:
    """One line per row × seed: its run folder and what the suite will do with it."""
    results = Path(results)
    seeds = tuple(seeds) if seeds is not None else suite.seeds
    chosen = [suite.row(name) for name in only] if only else list(suite.rows)
    job_of = {(job.row, seed): job for job in jobs for seed in job.seeds}
    labels = [(row, point, label) for row in chosen for point, label in zip(row.points or ("",), row.labels)]
    width = max(len(label) for _, _, label in labels)
    lines = [f"suite {suite.name} ({suite.path}): {len(labels)} rows × {len(seeds)} seeds, "
             f"results in {results / suite.name}"]
    for row, point, label in labels:
        for seed in seeds:
            folder = run_folder(results, suite, row.name, seed, point)
            job = job_of.get((row.name, seed))
            if job is None:
                status = "complete, skipped"
            else:
                out = Path(job.overrides["out"])
                status = "resumes from its checkpoint" if (out / "checkpoints").is_dir() else "new"
                if job.sweep:
                    status += f" (the sweep's {len(row.points)} points × seeds {','.join(map(str, job.seeds))} in " \
                              f"one call, out={out})"
                elif job.vmapped:
                    status += f" (seeds {','.join(map(str, job.seeds))} vmapped in one call, out={out})"
            lines.append(f"  {label:<{width}}  seed {seed}  {folder}  {status}")
    lines.append(f"{len(jobs)} call(s) of train_and_evaluate to make")
    return lines


# ------------------------------------------------------------------------------------------------------- run


def share_compilations(cache_dir: Path) -> None:
    """Points JAX's persistent compilation cache at `cache_dir` unless one is configured already.

    The runs of a suite share a model and its length buckets: the evaluation programs, and the train steps of
    runs that differ only in the learning rate or the data, are compiled once per machine instead of per run.
    """
    import jax

    if jax.config.jax_compilation_cache_dir is None:
        jax.config.update("jax_compilation_cache_dir", str(cache_dir))


def run_jobs(jobs: Sequence[Job], log: Callable[[str], None] = print) -> None:
    """Trains each job in turn; an exception stops the suite (rerunning it resumes where it stopped)."""
    from jaxbert.training import train_and_evaluate  # JAX is only needed once something trains

    for i, job in enumerate(jobs, 1):
        config = job.config()
        label = (f"{job.row}{' (sweep)' if job.sweep else ''} seed{'s' if len(job.seeds) > 1 else ''} "
                 f"{','.join(map(str, job.seeds))}")
        log(f"[{i}/{len(jobs)}] {label} → {config.out}")
        train_and_evaluate(config, log=lambda line, p=f"[{label}]": log(f"{p} {line}"), resume=True)


# ---------------------------------------------------------------------------------------------------- report


@dataclasses.dataclass
class RunResult:
    seed: int
    metrics: dict[str, float]  # metric column keys present in the run, and RUN_STATS keys
    commits: list[str]
    curve: list[tuple[int, dict[str, float]]]  # (step, metric values) per dev evaluation
    folder: Path | None = None  # the run folder, whose dev predictions the bootstrap reads


def _metric_key(task: str, metric: str) -> str:
    return f"{task}_{_SHORT[metric]}"


def _metric_values(dev: dict[str, Any]) -> dict[str, float]:
    """`{"sst_acc": ..., "sts_r": ..., "overall": ..., "mean": ...}` of a dev-metrics record of results.json or
    metrics.jsonl."""
    values = {_metric_key(task, name): float(value) for task, metrics in dev.items() if isinstance(metrics, dict)
              for name, value in metrics.items() if name in _SHORT}
    values.update({key: float(dev[key]) for key in AGGREGATES if key in dev})
    return values


def metric_label(key: str) -> str:
    """A metric column's label: "SST acc" for "sst_acc" (a built-in task's display name), "mysim r"."""
    if key in AGGREGATES:
        return key
    task, short = key.rsplit("_", 1)
    return f"{tasks.TASKS[task].display if task in tasks.TASKS else task} {short}"


def _metric_keys(runs: dict[str, list[RunResult]]) -> list[str]:
    """The metric columns of `runs` (their best epochs' and their curves'), the aggregates last."""
    seen = [k for row in runs.values() for run in row
            for k in [*run.metrics, *(k for _, values in run.curve for k in values)] if k not in dict(RUN_STATS)]
    keys = dict.fromkeys(k for k in seen if k not in AGGREGATES)
    return [*keys, *(k for k in AGGREGATES if k in seen)]


def read_run(folder: Path, seed: int) -> RunResult:
    """A complete run's dev metrics (best epoch), wall time, train examples/s and commit(s)."""
    results = json.loads((folder / "results.json").read_text())
    metrics_file = folder / "metrics.jsonl"
    records = [r for r in (json.loads(line) for line in metrics_file.read_text().splitlines() if line.strip())
               if "dev" in r] if metrics_file.is_file() else []  # its dev rows; the others are train rows
    metrics = _metric_values(results["metrics"].get("dev", {}))
    metrics["wall_time_sec"] = float(results["wall_time_sec"])
    rates = [r["train_examples_per_sec"] for r in records if "train_examples_per_sec" in r]
    if rates:  # each epoch's own rate (the first includes compilation): their mean
        metrics["train_examples_per_sec"] = float(np.mean(rates))
    commit_file = folder / "commit.txt"
    commits = commit_file.read_text().split() if commit_file.is_file() else ["unknown"]
    return RunResult(seed, metrics, commits, [(int(r["step"]), _metric_values(r["dev"])) for r in records], folder)


def collect(suite: Suite, results: str | Path) -> dict[str, list[RunResult]]:
    """Every complete run under each table row's folder (whatever seeds exist), seeds in order: `{label: runs}`,
    a sweep row's points each a row of their own (`Row.labels`)."""
    runs = {}
    for row in suite.rows:
        for point, label in zip(row.points or ("",), row.labels):
            folder = Path(results) / suite.name / row.name / point
            seeds = sorted(int(m.group(1)) for p in (folder.iterdir() if folder.is_dir() else [])
                           if (m := re.fullmatch(r"seed(\d+)", p.name)) and is_complete(p))
            runs[label] = [read_run(folder / f"seed{s}", s) for s in seeds]
    return runs


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n − 1); nan where undefined."""
    values = np.asarray(values, dtype=np.float64)
    mean = float(values.mean()) if len(values) else math.nan
    return mean, float(values.std(ddof=1)) if len(values) > 1 else math.nan


def _columns(runs: dict[str, list[RunResult]]) -> list[tuple[str, str]]:
    present = {key for row in runs.values() for run in row for key in run.metrics}
    return [(key, metric_label(key)) for key in _metric_keys(runs)] + \
        [(key, label) for key, label in RUN_STATS if key in present]


def _row_commits(row_runs: Iterable[RunResult]) -> str:
    return " ".join(dict.fromkeys(c for run in row_runs for c in run.commits))


def summary_rows(runs: dict[str, list[RunResult]]) -> list[dict[str, Any]]:
    """The CSV's records: per row, n, its seeds, mean and std of each column, the commit(s)."""
    records = []
    for row, row_runs in runs.items():
        record: dict[str, Any] = {"row": row, "n": len(row_runs), "seeds": " ".join(str(r.seed) for r in row_runs)}
        for key, _ in _columns(runs):
            values = [r.metrics[key] for r in row_runs if key in r.metrics]
            record[f"{key}_mean"], record[f"{key}_std"] = mean_std(values)
        record["commit"] = _row_commits(row_runs)
        records.append(record)
    return records


# -------------------------------------------------------------------------------------------- significance

RESAMPLES = 10_000
BOOTSTRAP_SEED = 0
ALPHA = 0.05  # a difference is marked where both tests give p below it
_CHUNK = 2 ** 20  # resampled indices drawn at once: [resamples, n] in chunks of about this many (8 MiB)


@dataclasses.dataclass(frozen=True)
class DevTask:
    """One run's dev predictions of one task and the gold labels of the examples they predict, in file order."""
    task: tasks.Task
    ids: tuple[str, ...]
    predictions: np.ndarray  # class ids, or float32 scores
    labels: np.ndarray


@dataclasses.dataclass(frozen=True)
class Difference:
    """A row's difference from the baseline row in one metric column; nan where a test cannot be made.

    `diff`, `welch_*`: mean over the row's seeds − mean over the baseline's, its 95% confidence interval and the
    two-sided p of Welch's t-test (nan with fewer than 2 seeds a side). `paired_seeds`, `bootstrap_*`: the seeds
    both rows have dev predictions of, and over them the paired bootstrap's mean difference, its 95% percentile
    interval and p (`bootstrap`).
    """
    row: str
    baseline: str
    metric: str  # the column's key: "sst_acc", "overall"
    diff: float
    welch_low: float
    welch_high: float
    welch_p: float
    paired_seeds: int
    bootstrap_diff: float
    bootstrap_low: float
    bootstrap_high: float
    bootstrap_p: float

    @property
    def significant(self) -> bool:
        return self.welch_p < ALPHA and self.bootstrap_p < ALPHA  # False where either is nan


def welch(values: Sequence[float], baseline: Sequence[float]) -> tuple[float, float, float, float]:
    """`mean(values) − mean(baseline)`, the 95% confidence interval of that difference and the two-sided p of
    Welch's t-test (`scipy.stats.ttest_ind(equal_var=False)`); interval and p are nan with fewer than 2 values
    a side."""
    from scipy import stats  # only reports need it

    diff = float(np.mean(values) - np.mean(baseline))
    if min(len(values), len(baseline)) < 2:
        return diff, math.nan, math.nan, math.nan
    with warnings.catch_warnings():
        # Seeds that agree to the last digit make scipy warn of lost precision; its answer (nan, or p 0 and a
        # point interval for two constant sides) stands.
        warnings.simplefilter("ignore", RuntimeWarning)
        result = stats.ttest_ind(values, baseline, equal_var=False)
        interval = result.confidence_interval(0.95)
    return diff, float(interval.low), float(interval.high), float(result.pvalue)


def bootstrap(differences: np.ndarray) -> tuple[float, float, float]:
    """The 95% percentile interval of a bootstrap distribution of a difference, `[resamples]`, and its
    two-sided p, `2 · min(P(d ≤ 0), P(d ≥ 0))` at most 1: the smallest level at which the percentile interval
    leaves out 0. A p of 0 means no resample reached 0 (p < 2 / RESAMPLES)."""
    low, high = np.percentile(differences, [2.5, 97.5])
    p = min(1.0, 2.0 * min(float(np.mean(differences <= 0)), float(np.mean(differences >= 0))))
    return float(low), float(high), p


def read_predictions(path: Path, task: tasks.Task) -> tuple[tuple[str, ...], np.ndarray]:
    """The ids and values of a prediction file in the course's format (`training.format_predictions`): class
    ids, or the float32 scores, which it writes in full (each reads back to the same float32)."""
    parse, dtype = (float, np.float32) if task.kind == "regression" else (int, np.int64)
    try:  # a line without its " , " does not unpack
        rows = [(i, parse(v)) for i, v in (line.rsplit(" , ", 1) for line in path.read_text().splitlines()[1:])]
    except ValueError:
        raise DataError(f"{path}: not a prediction file in the course's format (lines `<id> , <value>`)") from None
    return tuple(i for i, _ in rows), np.asarray([v for _, v in rows], dtype)


def dev_examples(config: Config, task: tasks.Task) -> data_lib.Examples:
    """`task`'s dev split as a run of `config` read it (`data.load_task_data`): its Hugging Face source or its
    file, untokenized."""
    if data_lib.task_source(config, task) == "hf":
        return data_lib.read_hf_split(task, "dev")
    path = data_lib.local_path(config, task, "dev")
    if path is None:
        raise MissingFileError(f"{task.name}: no dev file named; {data_lib.missing_files_hint(config, task)}")
    return data_lib.read_split(path, task, require_labels=True)


def read_dev(folder: Path, cache: dict[tuple[str, ...], data_lib.Examples]) -> dict[str, DevTask]:
    """A complete run's dev predictions of each task its results.json scores, with the gold labels of the dev
    data its config.yaml names (read once per report: `cache`).

    Raises:
      UserError: a file is missing or unreadable, or the predictions are of other examples than the dev data
        holds now, or do not score on it what results.json says (the dev data changed since the run).
    """
    config = load_config(folder / "config.yaml")
    scored = json.loads((folder / "results.json").read_text())["metrics"].get("dev", {})
    out = {}
    for task in config.run_tasks:
        if task.metric is None or task.metric not in scored.get(task.name, {}):
            continue
        path = folder / "predictions" / f"{task.name}-dev-output.csv"
        if not path.is_file():
            raise MissingFileError(f"{path} is missing")
        ids, predictions = read_predictions(path, task)
        key = (repr(task), data_lib.task_source(config, task), str(data_lib.local_path(config, task, "dev")))
        if key not in cache:
            cache[key] = dev_examples(config, task)
        examples = cache[key]
        if tuple(examples.ids) != ids:
            raise DataError(f"{path} predicts other examples than {examples.path} holds now: the dev data changed "
                            "since the run")
        value, recorded = task_metric(task, predictions, examples.labels)[task.metric], scored[task.name][task.metric]
        if not math.isclose(value, recorded, rel_tol=1e-9, abs_tol=1e-12):
            raise DataError(f"{path} scores {task.metric} {value:.6f} on {examples.path}, results.json says "
                            f"{recorded:.6f}: the dev data changed since the run")
        out[task.name] = DevTask(task, ids, predictions, examples.labels)
    return out


def _resampled_metric(metric: str, runs: Sequence[DevTask], rng: np.random.Generator) -> np.ndarray:
    """The metric of each run's predictions on RESAMPLES resamples of their common examples, `[runs, resamples]`.

    A resample is `rng.integers(0, n, size=n)`, the rows of one `[RESAMPLES, n]` draw. Each resample's metric is
    computed from its counts of each example: accuracy from the count of correct predictions, Pearson r from
    the count-weighted sums of the centred scores, 0 where one side is constant (`metrics.pearson`).
    """
    labels = runs[0].labels
    n = len(labels)
    if metric == "accuracy":
        features = np.stack([run.predictions == labels for run in runs], axis=1).astype(np.float64)
    else:
        y, xs = _centred(labels), [_centred(run.predictions) for run in runs]
        features = np.stack([y, y * y, *(f for x in xs for f in (x, x * x, x * y))], axis=1)
    sums, chunk = [], max(1, _CHUNK // n)
    for start in range(0, RESAMPLES, chunk):
        size = min(chunk, RESAMPLES - start)
        indices = rng.integers(0, n, size=(size, n))
        counts = np.bincount((indices + n * np.arange(size)[:, None]).ravel(), minlength=size * n)
        sums.append(counts.reshape(size, n).astype(np.float64) @ features)
    sums = np.concatenate(sums).T  # [features, resamples]
    if metric == "accuracy":
        return sums / n
    sy, syy = sums[0], sums[1]
    sx, sxx, sxy = sums[2::3], sums[3::3], sums[4::3]
    var_x, var_y, cov = sxx - sx * sx / n, syy - sy * sy / n, sxy - sx * sy / n
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.where((var_x > 0) & (var_y > 0), cov / np.sqrt(var_x * var_y), 0.0)
    return np.clip(r, -1.0, 1.0)


def _centred(values: np.ndarray) -> np.ndarray:
    """`values − mean` in float64; exactly 0 for constant values, so every resample of them has variance 0."""
    values = values.astype(np.float64)
    return np.zeros_like(values) if np.all(values == values[0]) else values - values.mean()


def _aggregate_weights(run: dict[str, DevTask]) -> dict[str, tuple[float, dict[str, float]]]:
    """`metrics.summarize`'s aggregates of the run's task metrics as `offset + Σ weight · metric`.

    Both are affine in the task metrics (a mean of accuracies and (r + 1) / 2, or of the metrics as they are),
    so the weights are read off summarize itself, once, and apply to every resample at once.
    """
    auxiliary = {name for name, dev in run.items() if dev.task.auxiliary}

    def aggregates(one: str | None) -> dict[str, Any]:
        return summarize({name: {dev.task.metric: float(name == one)} for name, dev in run.items()}, auxiliary)

    zero = aggregates(None)
    return {key: (zero[key], {name: aggregates(name)[key] - zero[key] for name in run})
            for key in AGGREGATES if key in zero}


def resampled_scores(runs: Sequence[dict[str, DevTask]]) -> list[dict[str, np.ndarray]]:
    """Each run's metric columns on the same RESAMPLES bootstrap resamples of the dev examples: `{key: [resamples]}`.

    The tasks' dev sets differ in size, so each task is resampled on its own, by a generator of its own name,
    `default_rng([BOOTSTRAP_SEED, *name.encode()])`: every run scored on the same examples of a task sees the
    same resamples of them, whatever other rows and tasks the suite has. A run's overall and mean on a resample
    are `metrics.summarize`'s of its resampled task metrics.
    """
    scores: list[dict[str, np.ndarray]] = [{} for _ in runs]
    groups: dict[tuple[str, tuple[str, ...]], list[int]] = {}
    for k, run in enumerate(runs):
        for name, dev in run.items():
            groups.setdefault((name, dev.ids), []).append(k)
    for (name, _), members in groups.items():
        metric = runs[members[0]][name].task.metric
        rng = np.random.default_rng([BOOTSTRAP_SEED, *name.encode()])
        for k, values in zip(members, _resampled_metric(metric, [runs[k][name] for k in members], rng)):
            scores[k][_metric_key(name, metric)] = values
    for run, run_scores in zip(runs, scores):
        for key, (offset, weights) in _aggregate_weights(run).items():
            run_scores[key] = offset + sum(w * run_scores[_metric_key(name, run[name].task.metric)]
                                           for name, w in weights.items())
    return scores


def _pairs(a: dict[str, DevTask], b: dict[str, DevTask], key: str) -> bool:
    """Whether two runs' scores in column `key` come from the same dev examples, so a paired bootstrap applies:
    for an aggregate, every task of either run."""
    names = set(a) | set(b) if key in AGGREGATES else {key.rsplit("_", 1)[0]}
    return all(name in a and name in b and a[name].ids == b[name].ids for name in names)


def _task_columns(row_runs: Iterable[RunResult]) -> set[str]:
    return {key for run in row_runs for key in run.metrics if key not in AGGREGATES and key not in dict(RUN_STATS)}


def compare(suite: Suite, runs: dict[str, list[RunResult]]) -> tuple[list[Difference], list[str]]:
    """Every row against `suite.baseline` in each metric column both have (an aggregate only between rows scored
    on the same tasks, as it averages over them): Welch's t-test over all their seeds, and a paired bootstrap
    over the dev examples.

    The bootstrap pairs each seed both rows have with itself: the row's dev predictions of that seed against the
    baseline's, on the same resamples (`resampled_scores`); its statistic is the metric's difference averaged
    over those seeds. Returns the differences and a note for each run, or task of a run, left out of the
    bootstrap, saying why (its predictions or dev data could not be read, or are of other dev examples than the
    baseline's).
    """
    base = suite.baseline
    if not runs.get(base):
        return [], [f"the baseline row {base} has no complete run: nothing is compared"]
    notes: list[str] = []
    dev: dict[tuple[str, int], dict[str, DevTask]] = {}
    cache: dict[tuple[str, ...], data_lib.Examples] = {}
    for row, row_runs in runs.items():
        for run in row_runs:
            try:
                dev[row, run.seed] = read_dev(run.folder, cache)
            except UserError as e:
                notes.append(f"{row} seed {run.seed} is left out of the bootstrap: {e}")
    for (row, seed), tasks_dev in dev.items():
        other = dev.get((base, seed), {})
        differ = [name for name in tasks_dev if name in other and tasks_dev[name].ids != other[name].ids]
        if row != base and differ:
            notes.append(f"{row} seed {seed} predicts other dev examples of {', '.join(differ)} than the baseline's: "
                         "not paired there")
    scores = dict(zip(dev, resampled_scores(list(dev.values()))))
    base_runs = {run.seed: run for run in runs[base]}
    differences = []
    for row, row_runs in runs.items():
        if row == base or not row_runs:
            continue
        same_tasks = _task_columns(row_runs) == _task_columns(base_runs.values())
        for key in _metric_keys(runs):
            values = [r.metrics[key] for r in row_runs if key in r.metrics]
            base_values = [r.metrics[key] for r in base_runs.values() if key in r.metrics]
            if not values or not base_values or (key in AGGREGATES and not same_tasks):
                continue
            paired = [run for run in row_runs
                      if key in scores.get((row, run.seed), {}) and key in scores.get((base, run.seed), {})
                      and _pairs(dev[row, run.seed], dev[base, run.seed], key)]
            observed, low, high, p = math.nan, math.nan, math.nan, math.nan
            if paired:
                observed = float(np.mean([run.metrics[key] - base_runs[run.seed].metrics[key] for run in paired]))
                low, high, p = bootstrap(np.mean([scores[row, run.seed][key] - scores[base, run.seed][key]
                                                  for run in paired], axis=0))
            differences.append(Difference(row, base, key, *welch(values, base_values), len(paired), observed,
                                          low, high, p))
    return differences, notes


# ---------------------------------------------------------------------------------------------------- tables


def _cell(mean: float, std: float, digits: int) -> str:
    if math.isnan(mean):
        return "–"
    return f"{mean:.{digits}f}" + ("" if math.isnan(std) else f" ± {std:.{digits}f}")


def _signed(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:+.4f}"


def _p_value(p: float) -> str:
    return "n/a" if math.isnan(p) else "<0.001" if p < 0.001 else f"{p:.3f}"


def _interval(low: float, high: float) -> str:
    return "n/a" if math.isnan(low) else f"[{_signed(low)}, {_signed(high)}]"


def significance_table(suite: Suite, differences: Sequence[Difference], notes: Sequence[str]) -> str:
    """The Markdown of `compare`'s differences, one line per row and metric, with its legend and notes."""
    lines = ["| row | metric | Δ | Welch 95% CI | Welch p | paired seeds | bootstrap 95% CI | bootstrap p |",
             "| --- | --- | --: | --: | --: | --: | --: | --: |"]
    for d in differences:
        lines.append(f"| {d.row} | {metric_label(d.metric)} | {_signed(d.diff)}{'*' if d.significant else ''} | "
                     f"{_interval(d.welch_low, d.welch_high)} | {_p_value(d.welch_p)} | {d.paired_seeds} | "
                     f"{_interval(d.bootstrap_low, d.bootstrap_high)} | {_p_value(d.bootstrap_p)} |")
    legend = (f"Δ: the row's mean over its seeds − the baseline's. Welch: Welch's t-test over the seeds, the 95% "
              "confidence interval of Δ and the two-sided p (n/a with fewer than 2 seeds a side). Bootstrap: paired "
              f"over the dev examples, {RESAMPLES:,} resamples of each task's dev set (seeded, the same for both "
              "rows); its statistic is the difference averaged over the paired seeds (those both rows have dev "
              "predictions of), with its 2.5-97.5 percentile interval and p = 2 · min(P(d ≤ 0), P(d ≥ 0)), at "
              f"most 1 (<0.001 includes 0: no resample reached 0). `*` after Δ: p < {ALPHA:g} by both tests. "
              "overall and mean are compared only between rows scored on the same tasks.")
    text = f"## Differences from the baseline, {suite.baseline}\n\n"
    if differences:
        text += "\n".join(lines) + "\n\n" + legend + "\n"
    return text + "".join(f"\n- {note}" for note in notes) + ("\n" if notes else "")


def markdown_table(suite: Suite, runs: dict[str, list[RunResult]], differences: Sequence[Difference],
                   notes: Sequence[str]) -> str:
    columns = _columns(runs)
    digits = {"wall_time_sec": 0, "train_examples_per_sec": 1}
    lines = [f"| row | n | {' | '.join(label for _, label in columns)} | commit |",
             f"| --- | --: | {' | '.join('--:' for _ in columns)} | --- |"]
    for record in summary_rows(runs):
        cells = [_cell(record[f"{key}_mean"], record[f"{key}_std"], digits.get(key, 3)) for key, _ in columns]
        lines.append(f"| {record['row']} | {record['n']} | {' | '.join(cells)} | {record['commit']} |")
    return (f"# {suite.name}\n\nSuite `{suite.path}`. Dev metrics of each run's best epoch (selected by its "
            "`train.select_by`), mean ± sample standard deviation over the n seeds: each task's, the overall score "
            "(accuracies and (r + 1) / 2 averaged) and their plain mean; wall time of a whole run (loading, "
            "training, evaluation; a resumed run's counts its last session only); train examples/s is the mean of "
            "each epoch's rate (the first epoch includes compilation); commit is the code the runs were trained "
            "with.\n\n" + "\n".join(lines) + "\n\n" + significance_table(suite, differences, notes))


def _write_records(path: Path, fields: Sequence[str], records: Iterable[dict[str, Any]]) -> None:
    """A CSV of `records`, nan written as an empty cell."""
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        for record in records:
            writer.writerow({k: "" if isinstance(v, float) and math.isnan(v) else v for k, v in record.items()})


def write_csv(path: Path, runs: dict[str, list[RunResult]]) -> None:
    fields = ["row", "n", "seeds", *(f"{k}_{s}" for k, _ in _columns(runs) for s in ("mean", "std")), "commit"]
    _write_records(path, fields, summary_rows(runs))


def write_significance_csv(path: Path, differences: Sequence[Difference]) -> None:
    """`compare`'s differences, one record per row and metric, with the columns of `Difference`."""
    fields = [*(f.name for f in dataclasses.fields(Difference)), "significant"]
    _write_records(path, fields, ({**dataclasses.asdict(d), "significant": d.significant} for d in differences))


def learning_curves(runs: dict[str, list[RunResult]]) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """`{metric: {row: [(step, mean over the seeds evaluated at that step), ...]}}`."""
    curves: dict[str, dict[str, list[tuple[int, float]]]] = {}
    for key in _metric_keys(runs):
        for row, row_runs in runs.items():
            by_step: dict[int, list[float]] = {}
            for run in row_runs:
                for step, values in run.curve:
                    if key in values:
                        by_step.setdefault(step, []).append(values[key])
            if by_step:
                curves.setdefault(key, {})[row] = [(s, float(np.mean(v))) for s, v in sorted(by_step.items())]
    return curves


def plot_bars(path: Path, suite: Suite, runs: dict[str, list[RunResult]], key: str, label: str) -> None:
    import matplotlib.pyplot as plt

    rows = [row for row, row_runs in runs.items() if any(key in r.metrics for r in row_runs)]
    values = [[r.metrics[key] for r in runs[row] if key in r.metrics] for row in rows]
    stats = [mean_std(v) for v in values]
    x = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(max(4.0, 1.1 * len(rows) + 1.5), 3.6))
    ax.bar(x, [m for m, _ in stats], yerr=[0.0 if math.isnan(s) else s for _, s in stats], capsize=4,
           color="#9bb8d3", edgecolor="#3a5f82")
    for i, seed_values in enumerate(values):  # the seeds themselves, so n and spread are visible
        ax.scatter(np.full(len(seed_values), x[i]), seed_values, color="#1b2a38", s=12, zorder=3)
    ax.set_xticks(x, rows, rotation=20, ha="right")
    ax.set_ylabel(label)
    ax.set_title(f"{suite.name}: dev {label}, mean ± std over seeds", fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_curves(path: Path, suite: Suite, runs: dict[str, list[RunResult]]) -> None:
    import matplotlib.pyplot as plt

    curves = learning_curves(runs)
    fig, axes = plt.subplots(1, max(len(curves), 1), figsize=(3.6 * max(len(curves), 1), 3.4), squeeze=False)
    for ax, (key, by_row) in zip(axes[0], curves.items()):
        for row, points in by_row.items():
            ax.plot(*zip(*points), marker="o", label=row)
        ax.set_title(f"dev {metric_label(key)}", fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"{suite.name}: mean over seeds", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(suite: Suite, results: str | Path) -> Path:
    """table.md, table.csv, significance.csv, bars_<metric>.png and curves.png in `<results>/<suite>/`, from
    the complete runs."""
    import matplotlib

    matplotlib.use("Agg")
    folder = Path(results) / suite.name
    folder.mkdir(parents=True, exist_ok=True)
    runs = collect(suite, results)
    differences, notes = compare(suite, runs)
    (folder / "table.md").write_text(markdown_table(suite, runs, differences, notes))
    write_csv(folder / "table.csv", runs)
    write_significance_csv(folder / "significance.csv", differences)
    metric_keys = _metric_keys(runs)
    for key, label in _columns(runs):
        if key in metric_keys:
            plot_bars(folder / f"bars_{key}.png", suite, runs, key, label)
    if any(run.curve for row_runs in runs.values() for run in row_runs):
        plot_curves(folder / "curves.png", suite, runs)
    return folder


# ------------------------------------------------------------------------------------------------------ main


def parse_args(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    """The runner's own options, and the rest: config overrides for every row (`--train.max_steps=5`)."""
    parser = argparse.ArgumentParser(prog="python -m jaxbert.experiments", description=__doc__, add_help=False,
                                     formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    parser.add_argument("suite", nargs="?", help="the suite file (YAML)")
    parser.add_argument("-h", "--help", nargs="?", const="", metavar="SECTION",
                        help="show this help and exit; with a SECTION of the config (train, smart, ...), its keys")
    parser.add_argument("--only", help="comma-separated rows to train (the report still covers every row)")
    parser.add_argument("--seeds", help="instead of the suite's `seeds:`: 3 (seeds 0, 1, 2) or 0,1,5 (those)")
    parser.add_argument("--results", default="results", help="results folder (default: results)")
    parser.add_argument("--dry-run", action="store_true", help="print the plan and train nothing")
    parser.add_argument("--report-only", action="store_true", help="rebuild the report from the runs that exist")
    args, rest = parser.parse_known_args(argv)
    if args.help is not None:
        try:
            print(help_text(args.help) if args.help else parser.format_help(), end="")
        except ConfigError as e:
            sys.exit(f"jaxbert.experiments: error: {e}")
        sys.exit(0)
    if args.suite is None:
        parser.error("the following arguments are required: suite")
    return args, rest


def main(argv: Sequence[str] | None = None) -> None:
    args, rest = parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        suite = load_suite(args.suite, parse_overrides(rest))
        seeds = parse_seeds(args.seeds, "--seeds") if args.seeds else None
        only = [suite.row(name).name for name in args.only.split(",")] if args.only else None
        if args.report_only:
            print(f"report: {write_report(suite, args.results)}")
            return
        jobs = plan(suite, args.results, seeds, only)
        print("\n".join(describe_plan(suite, args.results, jobs, seeds, only)))
        if args.dry_run:
            return
        share_compilations(Path(args.results) / ".xla_cache")
        run_jobs(jobs)
        print(f"report: {write_report(suite, args.results)}")
    except UserError as e:  # a bad suite, config, checkpoint folder or data file: the message says the fix
        sys.exit(f"jaxbert.experiments: error: {e}")


if __name__ == "__main__":
    main()
