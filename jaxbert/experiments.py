"""Experiment suites: a list of configs × seeds trained in turn, resumable, summarized in one table.

    python -m jaxbert.experiments configs/suites/cpu_minilm.yaml
    python -m jaxbert.experiments SUITE.yaml --only pcgrad,smart --seeds 0,1,2 --train.max_steps=5
    python -m jaxbert.experiments SUITE.yaml --dry-run        # the plan: rows × seeds, run folders, status
    python -m jaxbert.experiments SUITE.yaml --report-only    # rebuild the tables from the runs that exist

A suite file:

    name: cpu_minilm                    # results go to <results>/<name>/ (default: the file's name)
    seeds: [0, 1]                       # exactly these; 3 is seeds 0, 1, 2 (default 1: seed 0)
    vmap_seeds: false                   # true: a row's missing consecutive seeds train in one vmapped call
    overrides: {train.max_steps: 100}   # every row; dotted (or unique bare) keys, as on the command line
    rows:
      - name: pcgrad                    # the row's label and its folder <results>/<name>/<row>/
        config: ../minilm_cpu.yaml      # relative to the suite file
        overrides: {train.surgery: pcgrad}

Overrides take the keys and forms of `python train.py`'s command line (`--help SECTION` lists a section's:
`--help train`) and apply in the order config file, suite, row, command line. Each run is a normal run folder,
`<results>/<suite>/<row>/seed<k>/`; one holding `results.json` is complete and skipped, any other is resumed
from its last checkpoint. A run folder whose `config.yaml` differs from what the suite now asks for is an
error, not a silent skip. The report (`table.md`, `table.csv`, `bars_<metric>.png`, `curves.png`) follows the
runs; `commit.txt` in each run folder records the code it was trained with. Unless JAX is given a compilation
cache of its own (`JAX_COMPILATION_CACHE_DIR`), the runs share one in `<results>/.xla_cache`.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import math
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import yaml

from jaxbert import tasks
from jaxbert import config as config_module
from jaxbert.config import Config, ConfigError, help_text, leaf_paths, load_config, parse_overrides, resolve_key
from jaxbert.errors import UserError

SUITE_KEYS = ("name", "seeds", "vmap_seeds", "overrides", "rows")
ROW_KEYS = ("name", "config", "overrides")
# Set by the runner for every run: a suite or command line that set them would be silently overruled.
RUNNER_KEYS = ("out", "train.seed", "train.seeds", "train.vmap_seeds")
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*")

# A table's metric columns are every scored task's metric ("sst_acc", labelled "SST acc") in the order the runs
# list their tasks, then the overall score.
_SHORT = {"accuracy": "acc", "pearson": "r"}
RUN_STATS = (("wall_time_sec", "wall time (s)"), ("train_examples_per_sec", "train examples/s"))


class SuiteError(ConfigError):
    pass


@dataclasses.dataclass(frozen=True)
class Row:
    name: str
    config: Path  # the row's config file
    overrides: dict[str, Any]  # the suite's overrides, then the row's, then the command line's; dotted keys


@dataclasses.dataclass(frozen=True)
class Suite:
    path: Path
    name: str
    seeds: tuple[int, ...]
    vmap_seeds: bool
    rows: tuple[Row, ...]

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
        row = Row(row_name, config_file, {**common, **_overrides(spec.get("overrides", {}), f"{where}: overrides"),
                                          **extra})
        try:
            load_config(row.config, row.overrides)
        except ConfigError as e:
            raise SuiteError(f"{where} (config {config_file}): {e}") from None
        rows.append(row)
    return Suite(path, name, seeds, vmap_seeds, tuple(rows))


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
    """One call of `train_and_evaluate`: a single seed, or consecutive seeds vmapped in one program."""
    row: str
    seeds: tuple[int, ...]
    config_file: Path
    overrides: dict[str, Any]  # the row's overrides and the runner's keys (out, seed(s))
    folders: tuple[Path, ...]  # the run folder of each seed

    @property
    def vmapped(self) -> bool:
        return len(self.seeds) > 1

    def config(self) -> Config:
        return load_config(self.config_file, self.overrides)


def run_folder(results: Path, suite: Suite, row: str, seed: int) -> Path:
    return Path(results) / suite.name / row / f"seed{seed}"


def is_complete(folder: Path) -> bool:
    return (folder / "results.json").is_file()


def plan(suite: Suite, results: str | Path, seeds: Sequence[int] | None = None,
         only: Sequence[str] | None = None) -> list[Job]:
    """The calls that train what is missing, row by row; complete runs are left out.

    With `vmap_seeds`, each stretch of consecutive missing seeds of a row is one call with `train.seeds`,
    `train.vmap_seeds` and `out=<row folder>`, which writes `seed<k>/` in it; a lone missing seed is a plain run.
    """
    results = Path(results)
    seeds = tuple(seeds) if seeds is not None else suite.seeds
    rows = [suite.row(name) for name in only] if only else list(suite.rows)
    jobs = []
    for row in rows:
        for folder in [results / suite.name / row.name, *(run_folder(results, suite, row.name, s) for s in seeds)]:
            check_unchanged(folder, row)
        missing = [s for s in seeds if not is_complete(run_folder(results, suite, row.name, s))]
        for group in (_consecutive(missing) if suite.vmap_seeds else [[s] for s in missing]):
            folders = tuple(run_folder(results, suite, row.name, s) for s in group)
            runner = {"train.seed": group[0], "train.seeds": len(group), "train.vmap_seeds": len(group) > 1,
                      "out": str(results / suite.name / row.name if len(group) > 1 else folders[0])}
            jobs.append(Job(row.name, tuple(group), row.config, {**row.overrides, **runner}, folders))
    return jobs


def _consecutive(seeds: Sequence[int]) -> list[list[int]]:
    groups: list[list[int]] = []
    for seed in sorted(seeds):
        if groups and seed == groups[-1][-1] + 1:
            groups[-1].append(seed)
        else:
            groups.append([seed])
    return groups


def check_unchanged(folder: Path, row: Row) -> None:
    """A run folder whose config.yaml differs from the row's config (runner keys aside) is an error.

    Keys only one side knows (a field added to the code since) are not compared.
    """
    saved_file = folder / "config.yaml"
    if not saved_file.is_file():
        return
    saved = yaml.safe_load(saved_file.read_text()) or {}
    wanted = dataclasses.asdict(load_config(row.config, row.overrides))
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
    names = list(only) if only else [r.name for r in suite.rows]
    job_of = {(job.row, seed): job for job in jobs for seed in job.seeds}
    width = max(map(len, names))
    lines = [f"suite {suite.name} ({suite.path}): {len(names)} rows × {len(seeds)} seeds, "
             f"results in {results / suite.name}"]
    for name in names:
        for seed in seeds:
            folder = run_folder(results, suite, name, seed)
            job = job_of.get((name, seed))
            if job is None:
                status = "complete, skipped"
            else:
                out = Path(job.overrides["out"])
                status = "resumes from its checkpoint" if (out / "checkpoints").is_dir() else "new"
                if job.vmapped:
                    status += f" (seeds {','.join(map(str, job.seeds))} vmapped in one call, out={out})"
            lines.append(f"  {name:<{width}}  seed {seed}  {folder}  {status}")
    lines.append(f"{len(jobs)} call(s) of train_and_evaluate to make")
    return lines


# ------------------------------------------------------------------------------------------------------- run


def code_commit() -> str:
    """`git rev-parse --short HEAD` of the checkout holding this code, `-dirty` when it has uncommitted changes
    or files git neither tracks nor ignores (new code the commit lacks); `unknown` outside a git checkout."""
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
        changes = subprocess.run(["git", "-C", str(root), "status", "--porcelain"],
                                 capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("-dirty" if changes else "")


def record_commit(folder: Path, commit: str) -> None:
    """Appends `commit` to the run's commit.txt unless it is already the last line: one line per code version
    the run was trained with (a resumed run may span two)."""
    path = folder / "commit.txt"
    lines = path.read_text().split() if path.is_file() else []
    if lines[-1:] != [commit]:
        path.write_text("".join(f"{line}\n" for line in [*lines, commit]))


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

    commit = code_commit()
    for i, job in enumerate(jobs, 1):
        config = job.config()
        for folder in job.folders:
            folder.mkdir(parents=True, exist_ok=True)
            record_commit(folder, commit)
        label = f"{job.row} seed{'s' if job.vmapped else ''} {','.join(map(str, job.seeds))}"
        log(f"[{i}/{len(jobs)}] {label} → {config.out}")
        train_and_evaluate(config, log=lambda line, p=f"[{label}]": log(f"{p} {line}"), resume=True)


# ---------------------------------------------------------------------------------------------------- report


@dataclasses.dataclass
class RunResult:
    seed: int
    metrics: dict[str, float]  # metric column keys present in the run, and RUN_STATS keys
    commits: list[str]
    curve: list[tuple[int, dict[str, float]]]  # (step, metric values) per dev evaluation


def _metric_values(dev: dict[str, Any]) -> dict[str, float]:
    """`{"sst_acc": ..., "sts_r": ..., "overall": ...}` of a dev-metrics record of results.json or metrics.jsonl."""
    values = {f"{task}_{_SHORT[name]}": float(value) for task, metrics in dev.items() if isinstance(metrics, dict)
              for name, value in metrics.items() if name in _SHORT}
    if "overall" in dev:
        values["overall"] = float(dev["overall"])
    return values


def metric_label(key: str) -> str:
    """A metric column's label: "SST acc" for "sst_acc" (a built-in task's display name), "mysim r"."""
    if key == "overall":
        return key
    task, short = key.rsplit("_", 1)
    return f"{tasks.TASKS[task].display if task in tasks.TASKS else task} {short}"


def _metric_keys(runs: dict[str, list[RunResult]]) -> list[str]:
    """The metric columns of `runs` (their best epochs' and their curves'), overall last."""
    seen = [k for row in runs.values() for run in row
            for k in [*run.metrics, *(k for _, values in run.curve for k in values)] if k not in dict(RUN_STATS)]
    keys = dict.fromkeys(k for k in seen if k != "overall")
    return [*keys, *(["overall"] if "overall" in seen else [])]


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
    return RunResult(seed, metrics, commits, [(int(r["step"]), _metric_values(r["dev"])) for r in records])


def collect(suite: Suite, results: str | Path) -> dict[str, list[RunResult]]:
    """Every complete run under each row's folder (whatever seeds exist), seeds in order."""
    runs = {}
    for row in suite.rows:
        folder = Path(results) / suite.name / row.name
        seeds = sorted(int(m.group(1)) for p in (folder.iterdir() if folder.is_dir() else [])
                       if (m := re.fullmatch(r"seed(\d+)", p.name)) and is_complete(p))
        runs[row.name] = [read_run(folder / f"seed{s}", s) for s in seeds]
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


def _cell(mean: float, std: float, digits: int) -> str:
    if math.isnan(mean):
        return "–"
    return f"{mean:.{digits}f}" + ("" if math.isnan(std) else f" ± {std:.{digits}f}")


def markdown_table(suite: Suite, runs: dict[str, list[RunResult]]) -> str:
    columns = _columns(runs)
    digits = {"wall_time_sec": 0, "train_examples_per_sec": 1}
    lines = [f"| row | n | {' | '.join(label for _, label in columns)} | commit |",
             f"| --- | --: | {' | '.join('--:' for _ in columns)} | --- |"]
    for record in summary_rows(runs):
        cells = [_cell(record[f"{key}_mean"], record[f"{key}_std"], digits.get(key, 3)) for key, _ in columns]
        lines.append(f"| {record['row']} | {record['n']} | {' | '.join(cells)} | {record['commit']} |")
    return (f"# {suite.name}\n\nSuite `{suite.path}`. Dev metrics of each run's best epoch (selected by the overall "
            "score), mean ± sample standard deviation over the n seeds; wall time of a whole run (loading, "
            "training, evaluation; a resumed run's counts its last session only); train examples/s is the mean of each epoch's rate (the first epoch includes "
            "compilation); commit is the code the runs were trained with.\n\n" + "\n".join(lines) + "\n")


def write_csv(path: Path, runs: dict[str, list[RunResult]]) -> None:
    records = summary_rows(runs)
    fields = ["row", "n", "seeds", *(f"{k}_{s}" for k, _ in _columns(runs) for s in ("mean", "std")), "commit"]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        for record in records:
            writer.writerow({k: "" if isinstance(v, float) and math.isnan(v) else v for k, v in record.items()})


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
    """table.md, table.csv, bars_<metric>.png and curves.png in `<results>/<suite>/`, from the complete runs."""
    import matplotlib

    matplotlib.use("Agg")
    folder = Path(results) / suite.name
    folder.mkdir(parents=True, exist_ok=True)
    runs = collect(suite, results)
    (folder / "table.md").write_text(markdown_table(suite, runs))
    write_csv(folder / "table.csv", runs)
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
