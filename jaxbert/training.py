"""`train_and_evaluate(config)`: the multitask fine-tuning job behind `train.py`.

A run is a list of stages (one, unless the config has `stages`), each with its own tasks, sampler, optimizer
and frozen or trainable encoder; params and the step count carry from one to the next. Per epoch of a stage:
the sampler's plan of batches, the jitted step over the `data` mesh, a dev evaluation, metrics to
`metrics.jsonl` and TensorBoard, and checkpoints (latest and best). At the end: `results.json` from the best
checkpoint of the whole run, prediction files in the course's format, and a plot of the dev curves.

`train.seeds` N > 1 trains seeds `train.seed` ... `train.seed + N - 1`, each into `<out>/seed<k>/` with what a
single-seed run writes there: one run after another, or with `train.vmap_seeds` all in one program, the state
stacked over a leading seed axis (one compile, one pass over the data), stage after stage alike. The seeds of a
vmapped run differ in their heads' initialization and their dropout and surgery keys; they all see the batches
of `train.data_seed` (default: the first seed), which each seed's `config.yaml` records, so a single-seed run of
that config repeats the seed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import shutil
import time
from functools import partial
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh
from tqdm import tqdm

from jaxbert import build, choices, compilation, distributed
from jaxbert import run_folder
from jaxbert import data as data_lib
from jaxbert.checkpoint import STATE_FORMAT, CheckpointStore
from jaxbert.config import Config, ConfigError, resolve_stage, save_config, stage_names, sweep_points, to_dict
from jaxbert.heads import MultitaskBert
from jaxbert.members import Member, data_seed, in_one_program, members, point_name, program_config
from jaxbert.metrics import selection_score, summarize, task_metric
from jaxbert.errors import CheckpointError, RunStopped
from jaxbert.preemption import StopRequests
from jaxbert.prefetch import prefetch
from jaxbert.progress import StepRate
from jaxbert.samplers import epoch_plan
from jaxbert.tasks import Task
from jaxbert.tokenization import BertTokenizer
from jaxbert.train_step import TrainState, data_mesh, replicate, seed_slice, shard_batch, stack_seeds, updates_per_step


def run_plans(config: Config, train: dict[str, data_lib.Encoded], seed: int) -> list[list[dict[str, np.ndarray]]]:
    """Every epoch's batches, drawn with `seed`, with `max_steps` applied; the LR schedule is laid out over them."""
    plans, remaining = [], config.train.max_steps if config.train.max_steps is not None else math.inf
    for epoch in range(config.train.epochs):
        plan = plan_for(config, train, epoch, seed)
        plans.append(plan[:int(min(len(plan), remaining))])
        remaining -= len(plans[-1])
    return plans


def stage_plans(config: Config, data: dict[str, dict[str, data_lib.Encoded]]) -> list[list[list[dict]]]:
    """`run_plans` of every stage of `run_stages(config)`, in order, each over the stage's own tasks."""
    plans = []
    for stage in run_stages(config):
        train = {task: splits["train"] for task, splits in data.items() if task in stage.config.tasks}
        plans.append(run_plans(stage.config, train, stage.plan_seed))
    return plans


def plan_for(config: Config, train: dict[str, data_lib.Encoded], epoch: int,
             seed: int | None = None) -> list[dict[str, np.ndarray]]:
    """The batches of 0-based `epoch`, drawn with `seed` (default `data_seed(train)`)."""
    t = config.train
    steps = t.steps_per_epoch if t.sampler in ("proportional", "annealed") or t.epoch_length == "steps" else None
    return epoch_plan(t.sampler, {task: len(e) for task, e in train.items()}, t.batch_size, epoch=epoch + 1,
                      num_epochs=t.epochs, seed=data_seed(t) if seed is None else seed, epoch_length=t.epoch_length,
                      steps_per_epoch=steps, lengths={task: e.lengths for task, e in train.items()},
                      group_batches=t.group_by_length)


def step_batches(train: dict[str, data_lib.Encoded], step: dict[str, np.ndarray], buckets: list[int],
                 shapes: str = choices.STEP_SHAPES[0]) -> dict:
    """Host arrays for one step, each task padded to the bucket of its own longest example (`data.step_shapes`
    per_task), or every task to the step's longest one (step_max). The step compiles once per combination of
    shapes that occurs: per_task up to len(buckets) ** tasks of them (length-grouped plans keep them few),
    step_max at most len(buckets) per set of tasks and batch sizes, at the cost of computing on more padding."""
    lengths = {task: data_lib.batch_length(train[task], idx, buckets) for task, idx in step.items()}
    if shapes == "step_max":
        lengths = dict.fromkeys(lengths, max(lengths.values()))
    return {task: data_lib.make_batch(train[task], idx, lengths[task]) for task, idx in step.items()}


def step_signature(batches: dict[str, dict[str, jax.Array]]) -> tuple:
    """What decides the train step's compiled program among a stage's steps: its batches' tasks, arrays and
    shapes."""
    return jax.tree.structure(batches), tuple(leaf.shape for leaf in jax.tree.leaves(batches))


def predict_split(encoded: data_lib.Encoded, predict: Callable, params: Any, mesh, batch_size: int,
                  buckets: list[int]) -> np.ndarray:
    """Raw head outputs `[examples, seeds, ...]` for every example of a split, in file order.

    Examples are batched shortest first, so each batch pads only to the bucket of similar lengths."""
    order = np.argsort(encoded.lengths, kind="stable")
    outputs = []
    for start in range(0, len(encoded), batch_size):
        padded, valid = data_lib.pad_indices(order[start:start + batch_size], mesh.devices.size)
        length = data_lib.batch_length(encoded, padded, buckets)
        batch = {k: v for k, v in data_lib.make_batch(encoded, padded, length).items() if k != "labels"}
        outputs.append(np.asarray(distributed.to_host(predict(params, shard_batch(batch, mesh))))[valid])
    if not outputs:  # a split with no valid rows
        return np.zeros((0, jax.tree.leaves(params)[0].shape[0]))
    result = np.empty_like(np.concatenate(outputs))
    result[order] = np.concatenate(outputs)
    return result


def to_predictions(task: Task, outputs: np.ndarray) -> np.ndarray:
    """Head outputs → what the course's files hold: class ids from logits, 0/1 from a logit, or the score."""
    if task.kind == "classification":
        return (outputs > 0).astype(np.int64) if task.binary else outputs.argmax(-1)
    return outputs


def evaluate(data: dict[str, dict[str, data_lib.Encoded]], predictors: dict[str, Callable], params: Any, mesh,
             config: Config, split: str) -> list[tuple[dict[str, dict[str, float]], dict[str, np.ndarray]]]:
    """Each seed's metrics on every labeled file of `split` and its predictions of every file of it, from one
    pass of the params stacked over the seeds."""
    per_seed = [({}, {}) for _ in range(jax.tree.leaves(params)[0].shape[0])]
    for task, splits in data.items():
        if split not in splits:
            continue
        encoded = splits[split]
        outputs = predict_split(encoded, predictors[task], params, mesh, config.train.eval_batch_size,
                                config.data.buckets)  # [examples, seeds, ...]
        for k, (metrics, predictions) in enumerate(per_seed):
            predictions[task] = to_predictions(encoded.task, outputs[:, k])
            if encoded.labels is not None:
                metrics[task] = task_metric(encoded.task, predictions[task], encoded.labels)
    auxiliary = {task for task, splits in data.items() if any(e.task.auxiliary for e in splits.values())}
    return [(summarize(metrics, auxiliary) if metrics else {}, predictions) for metrics, predictions in per_seed]


def format_predictions(task: Task, ids, values) -> str:
    """The course's prediction file: a header `id \t Predicted_...`, then a line `<id> , <value>` per example."""
    return "".join([f"id \t {task.prediction_header} \n",
                    *(f"{example_id} , {value} \n" for example_id, value in zip(ids, values))])


def write_predictions(out: Path, data, predictions_by_split: dict[str, dict[str, np.ndarray]]) -> None:
    folder = out / "predictions"
    folder.mkdir(exist_ok=True)
    for split, predictions in predictions_by_split.items():
        for task, values in predictions.items():
            encoded = data[task][split]
            (folder / f"{task}-{split}-output.csv").write_text(format_predictions(encoded.task, encoded.ids, values))


def plot_curves(history: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series: dict[str, list[tuple[int, float]]] = {}
    for record in history:
        for task, metrics in record["dev"].items():
            if isinstance(metrics, dict):
                for name, value in metrics.items():
                    series.setdefault(f"{task} {name}", []).append((record["epoch"], value))
            else:
                series.setdefault(task, []).append((record["epoch"], metrics))
    if not series:  # no task has a dev metric (nli alone): nothing to draw
        return
    fig, ax = plt.subplots(figsize=(7, 4))
    for label, points in series.items():
        ax.plot(*zip(*points), marker="o", label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel("dev metric")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The rows of a `metrics.jsonl` (none if it is absent); a line cut short by a killed run is dropped."""
    rows = []
    for line in path.read_text().splitlines() if path.is_file() else []:
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def current_step(state: TrainState) -> int:
    return int(np.max(jax.device_get(state.step)))  # the seeds of a stacked state step together


@dataclasses.dataclass(frozen=True)
class Stage:
    """One stage of a run, cycles unrolled.

    `config` is the run's config with the stage's fields applied. `plan_seed` seeds its data order: the first
    stage draws exactly as a run without stages would (`data_seed`), every later one (each cycle's included) its
    own order. `carries`: it continues the optimizer of the stage before (`optimizer: carry`).
    """

    index: int
    name: str  # "" for a run without `stages`
    config: Config
    plan_seed: int
    carries: bool = False


def run_stages(config: Config) -> list[Stage]:
    """The stages `config` trains, in order: its `stages` repeated `train.stage_cycles` times, or one stage of
    its own settings when it has none."""
    seed = data_seed(config.train)
    if not config.stages:
        return [Stage(0, "", config, seed)]
    stages = list(zip(stage_names(config), config.stages)) * config.train.stage_cycles
    return [Stage(k, name, resolve_stage(config, stage),
                  seed if k == 0 else int(np.random.SeedSequence([seed, k]).generate_state(1)[0]),
                  carries=k > 0 and stage.optimizer == "carry")
            for k, (name, stage) in enumerate(stages)]


def optimizer_span(stages: list[Stage], k: int) -> list[Stage]:
    """The stages that share stage `k`'s optimizer: `k` and the neighbours `carry` joins to it."""
    first, last = k, k
    while stages[first].carries:
        first -= 1
    while last + 1 < len(stages) and stages[last + 1].carries:
        last += 1
    return stages[first:last + 1]


class Recorder:
    """Where a run's results go: each member's folder, dev history, best score and best checkpoint, TensorBoard
    writer, `metrics.jsonl` and `results.json`, and the run's latest checkpoint of the whole state.

    The state is stacked over the members (`jaxbert.members`: seeds, times the points of a sweep). A run of one
    member writes into the run's own folder (its best checkpoint beside the latest); every member of a vmapped
    run or sweep writes into its own folder, as its single run would, and the run keeps the stacked latest state
    in its `checkpoints/` for `--resume`.
    """

    def __init__(self, config: Config):
        self.out = Path(config.out)
        self.members = members(config)
        self.configs = [member.config for member in self.members]
        self.store = CheckpointStore(self.out / "checkpoints")
        self.best_stores = [self.store] if len(self.configs) == 1 else [
            CheckpointStore(Path(c.out) / "checkpoints") for c in self.configs]
        self.records = [{"best_score": -math.inf, "history": [], "score": -math.inf} for _ in self.configs]
        self.select_by = config.train.select_by
        self.writes = distributed.is_writer()  # the files beside the checkpoints are process 0's
        if len(self.configs) > 1 and self.writes:
            for single in self.configs:
                Path(single.out).mkdir(parents=True, exist_ok=True)
                save_config(single, Path(single.out) / "config.yaml")
        self.writers = [_summary_writer(Path(c.out) / "tensorboard") if self.writes else _NoWriter()
                        for c in self.configs]

    @property
    def seeds(self) -> list[int]:
        """Each member's seed, in the order of the state's member axis."""
        return [member.seed for member in self.members]

    @property
    def sweep(self) -> dict[str, np.ndarray]:
        """`{swept key: [members] float32}`: each member's value of each key its sweep varies."""
        return {key: np.asarray([member.point[key] for member in self.members], np.float32)
                for key in self.members[0].point}

    def progress(self, position: dict[str, int]) -> dict[str, Any]:
        """What a checkpoint records beside the state: the loop position (stage, epoch, step in it) and every
        seed's record."""
        return {**position, "seeds": self.records, "format": STATE_FORMAT}

    def resume(self, progress: dict[str, Any]) -> dict[str, int]:
        """Takes the records of a checkpoint's `progress` (`run_folder.check_start` checked it fits); returns its
        loop position."""
        self.records = progress["seeds"]
        return {"stage": progress["stage"], "epoch": progress["epoch"], "step_in_epoch": progress["step_in_epoch"]}

    def save_encoder_files(self, encoder: build.Encoder) -> None:
        """Each seed folder's `encoder/`: the encoder's config.json and vocab.txt, so that the folder alone is
        enough to predict with (`jaxbert.runs`) or export the model."""
        for single in self.configs if self.writes else []:
            folder = Path(single.out) / "encoder"
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "config.json").write_text(json.dumps(encoder.config.to_hf_dict(), indent=2) + "\n")
            shutil.copyfile(encoder.vocab, folder / "vocab.txt")

    def rewrite_metrics(self, step: int) -> None:
        """Each seed's `metrics.jsonl` as it stood at the checkpoint of `step`: the dev rows of its record (the
        checkpoint's history is the record, so a run stopped between a checkpoint and its line loses no line),
        and the train rows logged up to that step."""
        for single, record in zip(self.configs, self.records):
            path = Path(single.out) / "metrics.jsonl"
            train_rows = [row for row in read_metrics(path) if "train" in row and row["step"] <= step]
            rows = sorted([*train_rows, *record["history"]], key=lambda row: (row["step"], "dev" in row))
            if self.writes:
                path.write_text("".join(json.dumps(row) + "\n" for row in rows))

    def log_step(self, step_metrics: dict[str, jax.Array], rate: float, step: int, stage: Stage) -> str:
        """Writes the step's metrics (the loss, each task's loss and term, the gradient norm, examples/s) to each
        seed's TensorBoard and `metrics.jsonl`; returns the losses, one per seed."""
        host = jax.device_get(step_metrics)
        losses = []
        for k, (single, record, writer) in enumerate(zip(self.configs, self.records, self.writers)):
            metrics = {name: float(value[k]) for name, value in host.items()} | {"examples_per_sec": rate}
            losses.append(f"{metrics['loss']:.4f}")
            for name, value in metrics.items():
                writer.add_scalar(f"train/{name}", value, step)
            row = {"epoch": len(record["history"]) + 1, "step": step, "train": metrics}
            if stage.name:
                row.update(stage=stage.index, stage_name=stage.name)
            if self.writes:
                with open(Path(single.out) / "metrics.jsonl", "a") as f:
                    f.write(json.dumps(row) + "\n")
        return " ".join(losses)

    def save_latest(self, state: TrainState, position: dict[str, int]) -> None:
        self.store.save(state.checkpoint_items(), self.progress(position))

    def end_epoch(self, evaluations: list[tuple[dict, dict]], state: TrainState, stage: Stage,
                  position: dict[str, int], examples_per_sec: float, log: Callable[[str], None]) -> None:
        """Records each seed's dev metrics (`evaluate` of the state) after an epoch of `stage`, checkpoints (the
        latest state at `position`, each improved seed's best) and writes its metrics."""
        improved, step = [], current_step(state)
        for record, (dev, _) in zip(self.records, evaluations):
            score = selection_score(dev, self.select_by)
            entry = {"epoch": len(record["history"]) + 1,  # epochs count on across stages
                     "step": step, "dev": dev, "train_examples_per_sec": examples_per_sec}
            if stage.name:
                entry.update(stage=stage.index, stage_name=stage.name, stage_epoch=position["epoch"])
            record["history"].append(entry)
            # With no score to select by, no best checkpoint is kept and the final evaluation uses the latest state.
            improved.append(score is not None and score > record["best_score"])
            record.update(best_score=score if improved[-1] else record["best_score"], score=score)
        self.save_latest(state, position)
        items = state.checkpoint_items()
        stage_label = f"stage {stage.name}: " if stage.name else ""
        for k, (single, record, writer) in enumerate(zip(self.configs, self.records, self.writers)):
            if improved[k]:
                self.best_stores[k].save_best(seed_slice(items, k), {**position, **record})
            entry = record["history"][-1]
            if self.writes:
                with open(Path(single.out) / "metrics.jsonl", "a") as f:
                    f.write(json.dumps(entry) + "\n")
            for task, metrics in entry["dev"].items():
                for name, value in (metrics.items() if isinstance(metrics, dict) else [("", metrics)]):
                    writer.add_scalar(f"dev/{task}{'/' + name if name else ''}", value, entry["step"])
            log(f"{self.label(k)}{stage_label}epoch {position['epoch']}: dev {json.dumps(entry['dev'])}"
                f"{' (best)' if improved[k] else ''}")

    def label(self, k: int) -> str:
        return f"{self.members[k].label} " if len(self.members) > 1 else ""

    def best_params(self, params: Any) -> Any:
        """Every seed's params from its best checkpoint (`params`, its latest, if it has none), stacked like
        `params`. Only the params are read: the best checkpoint may be an earlier stage's, with another optimizer.

        Raises:
          CheckpointError: a best checkpoint does not read. No fallback to the latest params: `results.json`
            would give another epoch's scores as the best epoch's. The message says how to take the latest.
        """
        best_params = []
        for k, store in enumerate(self.best_stores):
            latest = seed_slice(params, k)
            try:
                best = store.restore({"params": latest}, which="best", partial=True)
            except CheckpointError as e:
                raise CheckpointError(
                    f"{e}; the results come from the best checkpoint: delete {store.directory / 'best'} and run again "
                    "with --resume to take them from the latest state instead, or train again with --overwrite"
                ) from None
            best_params.append(best[0]["params"] if best else latest)
        return stack_seeds(best_params)

    def close(self) -> None:
        for writer in self.writers:
            writer.close()
        for store in {id(store): store for store in [self.store, *self.best_stores]}.values():
            store.close()

    def write_results(self, data, evaluations: dict[str, list[tuple[dict, dict]]], steps: int, start_time: float,
                      log: Callable[[str], None]) -> dict[int, dict[str, Any]]:
        """Each seed's `results.json`, dev curves and prediction files, from its best params' `evaluations`
        (`{split: evaluate(...)}`); returns `{member key: results}` (`Member.key`: the seed without a sweep)."""
        by_member = {}
        for k, (single, record) in enumerate(zip(self.configs, self.records)):
            out, history = Path(single.out), record["history"]
            results: dict[str, Any] = {
                "config": to_dict(single), "steps": steps, "best_epoch": None, "wall_time_sec": None,
                "metrics": {split: e[k][0] for split, e in evaluations.items() if e[k][0]}}
            if history:
                scored = [r for r in history if selection_score(r["dev"], self.select_by) is not None]
                results["best_epoch"] = (max(scored, key=lambda r: selection_score(r["dev"], self.select_by))
                                         if scored else history[-1])["epoch"]
                if self.writes:
                    plot_curves(history, out / "dev_curves.png")
            if self.writes:
                write_predictions(out, data, {split: e[k][1] for split, e in evaluations.items()})
            results["wall_time_sec"] = time.time() - start_time  # a vmapped run's seeds share its wall time
            if self.writes:
                (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
            log(f"{self.label(k)}best dev (epoch {results['best_epoch']}): "
                f"{json.dumps(results['metrics'].get('dev', {}))}")
            by_member[self.members[k].key] = results
        return by_member


@dataclasses.dataclass(frozen=True)
class Run:
    """What every stage of a run shares: the model, the data and devices, and where results go."""

    config: Config
    model: MultitaskBert
    data: dict[str, dict[str, data_lib.Encoded]]
    predictors: dict[str, Callable]
    mesh: Mesh
    recorder: Recorder
    log: Callable[[str], None]
    stop: StopRequests
    plans: list[list[list[dict]]]  # `stage_plans`: drawn once, as a carried optimizer's schedule needs them all
    # Optimizer and jitted step of each entry of `config.stages`, built once: every cycle reuses them.
    steps: dict[int, tuple[optax.GradientTransformation, Callable]] = dataclasses.field(default_factory=dict)


def stage_updates(run: Run, stage: Stage) -> int:
    """The optimizer updates `stage` makes."""
    return sum(updates_per_step(stage.config.train, len(step)) for plan in run.plans[stage.index] for step in plan)


def stage_step(run: Run, stage: Stage, params: Any,
               total_updates: int) -> tuple[optax.GradientTransformation, Callable]:
    """The stage's optimizer (its schedule over `total_updates`) and jitted train step, built on the stage's first
    use."""
    entry = stage.index % max(len(run.config.stages), 1)
    if entry not in run.steps:
        tx = build.optimizer(stage.config, params, total_updates)
        sweep = run.recorder.sweep
        lr_optimizer = (partial(build.optimizer, stage.config, params, total_updates) if "train.lr" in sweep
                        else None)
        run.steps[entry] = tx, build.train_step(run.model, tx, stage.config, run.recorder.seeds, run.mesh, sweep,
                                                lr_optimizer)
    return run.steps[entry]


def run_stage(run: Run, stage: Stage, params: Any, start_step: jax.Array, position: dict[str, int],
              resume: int | None, opt_state: Any = None) -> TrainState:
    """Trains `stage` from `position` in it (its epoch, and the step within that epoch), with a dev evaluation,
    a `metrics.jsonl` record and checkpoints after every epoch.

    The stage starts from `params` (encoder and heads, `[seeds, ...]`) and the global `start_step` of the stage
    before, with a new `TrainState.extra` (GradVac's or SMART's running values belong to the objective they were
    gathered for) and a new optimizer state whose learning rate and schedule are laid out over the stage's own
    updates, unless the stage carries the stage before's `opt_state`: then over the updates of every stage that
    optimizer spans. With `resume` (a step), the state is the latest checkpoint's of that step, which this
    stage wrote (`run_folder.check_start` found it intact).
    """
    config, t, recorder = stage.config, stage.config.train, run.recorder
    train = {task: splits["train"] for task, splits in run.data.items() if task in config.tasks}
    plans = run.plans[stage.index]
    epoch_steps = [len(plan) for plan in plans]
    total_steps = sum(epoch_steps)
    total_updates = sum(stage_updates(run, s) for s in optimizer_span(run_stages(run.config), stage.index))
    tx, train_step = stage_step(run, stage, params, total_updates)
    state = build.train_state(params, tx, config).replace(step=start_step)
    state = replicate(state if opt_state is None else state.replace(opt_state=opt_state), run.mesh)
    label = f"stage {stage.name}: " if stage.name else ""
    if resume is not None:
        items, _ = recorder.store.restore(state.checkpoint_items(), step=resume)
        state = replicate(state.replace(**items), run.mesh)
        run.log(f"resumed from step {current_step(state)} ({label}epoch {position['epoch'] + 1}, "
                f"step {position['step_in_epoch']} of it)")

    global_step, meter = current_step(state), StepRate()
    for epoch in range(position["epoch"], t.epochs):
        if epoch_steps[epoch] == 0:
            break
        plan = plans[epoch]
        first = position["step_in_epoch"] if epoch == position["epoch"] else 0
        bar = tqdm(range(first, len(plan)), desc=f"{label}epoch {epoch + 1}/{t.epochs}", initial=first,
                   total=len(plan), dynamic_ncols=True, disable=None)
        examples, tick = 0, time.time()
        device_batches = prefetch(shard_batch(step_batches(train, plan[i], config.data.buckets,
                                                           config.data.step_shapes), run.mesh)
                                  for i in range(first, len(plan)))
        pending = []  # (global step, its metrics on the device) since the host last looked at them
        preempted = ""
        for i, batches in zip(bar, device_batches):
            state, step_metrics = train_step(state, batches)
            size = sum(len(b["input_ids"]) for b in batches.values())
            examples += size
            meter.step(size, step_signature(batches))
            step, global_step = i + 1, global_step + 1
            pending.append((global_step, step_metrics))
            where = {"stage": stage.index, "epoch": epoch, "step_in_epoch": step}
            if step % t.log_every == 0 or step == len(plan):
                check_finite(pending, state, stage, where, run)
                meter.mark()  # check_finite waited for the step: the interval's time is its steps'
                loss = recorder.log_step(step_metrics, meter.rate, global_step, stage)
                bar.set_postfix(loss=loss, ex_s=f"{meter.rate:.0f}")
                done = sum(epoch_steps[:epoch]) + step
                if bar.disable:  # no terminal (a log file, CI): the same figures as plain lines
                    run.log(f"{label}step {done}/{total_steps} loss {loss}, {meter.summary(total_steps - done)}")
            if run.stop.requested(global_step):
                preempted = (f"preempted by {run.stop.name} at step {global_step} ({label}epoch {epoch + 1}, step "
                             f"{step} of {len(plan)}), checkpointed: continue with --resume")
                if step == len(plan):  # the epoch's end checkpoints it, as an uninterrupted run's does
                    break
                check_finite(pending, state, stage, where, run)
                recorder.save_latest(state, where)
                raise RunStopped(preempted)
            if t.checkpoint_every and step % t.checkpoint_every == 0 and step < len(plan):
                check_finite(pending, state, stage, where, run)
                recorder.save_latest(state, where)
                meter.stall()
        bar.close()
        check_finite(pending, state, stage, {"stage": stage.index, "epoch": epoch, "step_in_epoch": len(plan)}, run)
        evaluations = evaluate(run.data, run.predictors, state.params, run.mesh, config, "dev")
        recorder.end_epoch(evaluations, state, stage, {"stage": stage.index, "epoch": epoch + 1, "step_in_epoch": 0},
                           examples / max(time.time() - tick, 1e-9), run.log)
        meter.stall()  # the evaluation and the checkpoints
        if preempted:
            raise RunStopped(preempted)
    return state


def check_finite(pending: list[tuple[int, dict[str, jax.Array]]], state: TrainState, stage: Stage,
                 where: dict[str, int], run: Run) -> None:
    """Looks at the metrics of the steps in `pending` (and empties it): logs each skipped step, and ends the run
    with `RunStopped` once the step's guard froze the state (`train_step.guard_nonfinite`). One transfer per
    look, at the loop's log steps, checkpoints and evaluations, never one per step."""
    if not pending:
        return
    steps, host = [s for s, _ in pending], jax.device_get([m for _, m in pending])
    pending.clear()
    t, label = stage.config.train, f"stage {stage.name}, " if stage.name else ""
    bad_by_seed: list[list[tuple[int, str]]] = [[] for _ in run.recorder.seeds]
    froze_at: list[tuple[int, str] | None] = [None for _ in run.recorder.seeds]  # the step that froze each seed
    for step, metrics in zip(steps, host):
        for k, bad in enumerate(bad_by_seed):
            values = [f"{name} {float(value[k])}" for name, value in metrics.items()
                      if name != "frozen" and not np.isfinite(value[k])]
            if values:
                bad.append((step, ", ".join(values)))
            if metrics["frozen"][k] and froze_at[k] is None:
                froze_at[k] = bad[-1] if bad and bad[-1][0] == step else (step, "an earlier step")
    frozen = np.asarray(jax.device_get(state.extra["guard"]["frozen"]))
    for k, bad in enumerate(bad_by_seed):
        seed = run.recorder.label(k)
        if frozen[k]:
            step, values = froze_at[k] or (steps[0], "a step before")
            latest = run.recorder.store.latest.latest_step()
            rule = (f"train.nonfinite stop: step {step}" if t.nonfinite == "stop" else
                    f"train.nonfinite skip: {t.max_nonfinite} steps in a row up to step {step}")
            raise RunStopped(f"{seed}{rule} ({label}epoch {where['epoch'] + 1}) had non-finite values: {values}. The "
                             f"latest checkpoint ({'step ' + str(latest) if latest is not None else 'none yet'}) is the "
                             "last good state; lower the learning rate (--lr), add --train.clip_norm, or compute in "
                             "float32, then --resume")
        for step, values in bad:
            run.log(f"{seed}step {step}: non-finite {values}: update skipped (train.nonfinite skip)")


def check_devices(config: Config, devices: int) -> None:
    """The rule the config cannot check alone: every stage's batch splits evenly over its micro-batches and
    the devices, so each device's micro-batch has the same size."""
    for stage in run_stages(config):
        t = stage.config.train
        if t.batch_size % (t.accumulation_steps * devices):
            where = f"stage {stage.name}: " if stage.name else ""
            raise ConfigError(f"{where}train.batch_size {t.batch_size} is not divisible by train.accumulation_steps "
                              f"{t.accumulation_steps} × the {devices} devices (each device's micro-batch)")


def train_and_evaluate(config: Config, log: Callable[[str], None] = print, *, resume: bool = False,
                       overwrite: bool = False, dry_run: bool = False) -> Any:
    """Runs the whole job, stage after stage, and returns the contents of `results.json`; for several seeds
    `{seed: contents of its results.json}`.

    Params (encoder and heads) and the step count carry from stage to stage; the best checkpoint is chosen
    over every epoch of every stage. `resume` continues the run in `config.out` (a finished one is said to be
    finished and its results returned), `overwrite` clears that folder's previous run first, and `dry_run`
    stops after the checks, the loading and the plan, having written nothing (and returns None). Everything
    that can refuse the run (the folder, the config against a resumed run's, the devices, the checkpoint and
    the data) is checked before a file is written.
    """
    distributed.initialize(config.distributed)
    if not dry_run:  # which writes nothing, compiled programs included
        compilation.use_cache(config)
    writer = distributed.is_writer()
    log = log if writer else (lambda _: None)  # one log, process 0's
    mesh = data_mesh()
    check_devices(config, mesh.devices.size)
    start = run_folder.check_start(config, resume, overwrite, check_lock=writer)
    for skipped in start.skipped:  # newer checkpoints that do not read (the older one is resumed from)
        log(f"--resume: skipped checkpoint {skipped}")
    if start.mode == "finished":
        log(f"{start.folder} is finished (its results.json is there): nothing to resume. Train longer with a larger "
            "--epochs or --max-steps and --resume, or train again with --out DIR or --overwrite")
        return run_folder.saved_results(config)
    encoder = build.load_encoder(config, log)
    data = data_lib.load_task_data(config, BertTokenizer(encoder.vocab), log=log)
    for line in describe_run(config, data, encoder, mesh, start):
        log(line)
    if dry_run:
        log("--dry-run: nothing trained, nothing written")
        return None
    distributed.barrier("jaxbert: every process checked the run folder")  # before process 0 writes to it
    with contextlib.ExitStack() as lock:
        refused = None
        if writer:  # process 0 locks and clears the folder; every process learns whether it could
            try:
                lock.enter_context(run_folder.locked(start.folder, log))
                if run_folder.is_used(start.folder) != start.used:  # another run began while this one loaded
                    raise run_folder.RunFolderError(f"{start.folder} changed while this run loaded its data: start "
                                                    "it again")
                if start.used and start.mode == "new":
                    log(f"--overwrite: deleted {', '.join(run_folder.clear(start.folder))} in {start.folder}")
            except run_folder.RunFolderError as e:
                refused = e
        if not distributed.all_agree(refused is None):
            raise refused or run_folder.RunFolderError(f"process 0 could not start the run in {start.folder}: its "
                                                       "log says why")
        return _train_seeds(config, encoder, data, mesh, log, start, resume)


def _train_seeds(config: Config, encoder: build.Encoder, data: dict[str, dict[str, data_lib.Encoded]], mesh: Mesh,
                 log: Callable[[str], None], start: run_folder.Start, resume: bool) -> Any:
    """`train_and_evaluate` once the run may start: every seed, in one program or one after another."""
    seeds = config.train.seed_list
    if in_one_program(config):
        by_seed = train_run(config, encoder, data, mesh, log, start)
    else:  # one ordinary run per seed, each in its own folder, resumed or skipped as a run of its own
        if distributed.is_writer():
            Path(config.out).mkdir(parents=True, exist_ok=True)
            save_config(config, Path(config.out) / "config.yaml")
        by_seed = {}
        for single in (member.config for member in members(config)):
            seed = single.train.seed
            seed_log = lambda line, s=seed: log(f"seed {s}: {line}")  # noqa: E731
            seed_start = run_folder.check_start(single, resume, check_lock=False)  # the run's folder is locked
            distributed.barrier(f"jaxbert: seed {seed} checked")
            for skipped in seed_start.skipped:
                seed_log(f"--resume: skipped checkpoint {skipped}")
            if seed_start.mode == "finished":
                seed_log(f"{seed_start.folder} is finished, not trained again")
                by_seed[seed] = run_folder.saved_results(single)
                continue
            by_seed.update(train_run(single, encoder, data, mesh, seed_log, seed_start))
    run_members = members(config)
    if len(run_members) > 1:
        log_seed_summary(run_members, by_seed, config.train.select_by, log)
    out = Path(config.out)
    where = out / ("*/seed*" if config.sweep else "seed*") if len(run_members) > 1 else out
    log(f"results: {where / 'results.json'}; predictions: {where / 'predictions'}/; dev curves: "
        f"{where / 'dev_curves.png'}; train and dev metrics per step: {where / 'metrics.jsonl'} and "
        f"`tensorboard --logdir {out}`")
    return by_seed if len(run_members) > 1 else by_seed[seeds[0]]


def train_run(config: Config, encoder: build.Encoder, data: dict[str, dict[str, data_lib.Encoded]], mesh: Mesh,
              log: Callable[[str], None], start: run_folder.Start) -> dict[int, dict[str, Any]]:
    """Trains one run (a single seed, or the members of vmapped seeds or a sweep in one program) into `config.out`,
    new or from the checkpoint `start` found; returns `{member key: results}` (`Member.key`)."""
    out = Path(config.out)
    start_time = time.time()
    program = program_config(config)
    model = build.model(program, encoder.config)
    params = build.initial_params(model, encoder.params, [member.seed for member in members(config)])
    if start.progress is not None:  # before anything is written: the checkpoint must be this model's
        store = CheckpointStore(out / "checkpoints", read_only=True)
        store.check_fits(params, step=start.step)
        store.close()
    out.mkdir(parents=True, exist_ok=True)
    if distributed.is_writer():
        save_config(config, out / "config.yaml")
        commit = run_folder.code_commit()  # a resumed run trained by newer code adds a line
        for folder in dict.fromkeys([out, *(Path(member.config.out) for member in members(config))]):
            folder.mkdir(parents=True, exist_ok=True)
            run_folder.record_commit(folder, commit)
    recorder = Recorder(config)
    recorder.save_encoder_files(encoder)
    run = Run(program, model, data, build.predict_steps(model, mesh), mesh, recorder, log, StopRequests(),
              stage_plans(program, data))

    position, resume = {"stage": 0, "epoch": 0, "step_in_epoch": 0}, start.step  # the checkpoint's step, or None
    if start.mode == "resume" and resume is None:
        log(f"--resume: no checkpoint in {out / 'checkpoints'} yet, starting at step 0")
    if resume is not None:
        position = recorder.resume(start.progress)
        # Newer checkpoints are broken ones skipped, or a best saved after the step: the resumed run saves it again.
        for store in {id(store): store for store in [recorder.store, *recorder.best_stores]}.values():
            store.discard_newer(resume)
        distributed.barrier("jaxbert: newer checkpoints discarded")
    recorder.rewrite_metrics(resume or 0)
    # Replicated once, so placing them in each stage's state copies nothing.
    params, step = replicate(params, mesh), jnp.zeros((len(recorder.seeds),), jnp.int32)
    stages, opt_state = run_stages(program), None
    with run.stop:
        for stage in stages[position["stage"]:]:
            state = run_stage(run, stage, params, step, position, resume, opt_state)
            params, step, resume = state.params, state.step, None
            following = stages[stage.index + 1] if stage.index + 1 < len(stages) else None
            # The optimizer state goes on to a stage that carries it; any other stage starts its own.
            opt_state = state.opt_state if following is not None and following.carries else None
            del state
            position = {"stage": stage.index + 1, "epoch": 0, "step_in_epoch": 0}

    best_params = replicate(recorder.best_params(params), mesh)
    recorder.close()
    evaluations = {split: evaluate(data, run.predictors, best_params, mesh, config, split) for split in ("dev", "test")}
    return recorder.write_results(data, evaluations, int(np.max(jax.device_get(step))), start_time, log)


def describe_run(config: Config, data: dict[str, dict[str, data_lib.Encoded]], encoder: build.Encoder, mesh: Mesh,
                 start: run_folder.Start) -> list[str]:
    """The log's header: the resolved settings that decide the run, paths resolved (relative paths in a config
    or on the command line are relative to the working directory)."""
    t, m, out = config.train, config.model, Path(config.out)
    mode = {"new": "a new run" + (", replacing the previous run there (--overwrite)" if start.used else ""),
            "resume": "resuming the run there"}[start.mode]
    checkpoint = Path(m.checkpoint)
    e = encoder.config
    stages = run_stages(config)
    carried = sum(stage.carries for stage in stages)
    steps = [sum(len(plan) for plan in plans) for plans in stage_plans(config, data)]
    sizes = ", ".join(f"{task} ({', '.join(f'{len(encoded):,} {split}' for split, encoded in splits.items())})"
                      for task, splits in data.items())
    smart = config.smart
    seeds = t.seed_list
    lines = [
        f"run: {out.absolute()} ({mode})",
        f"model: {checkpoint.absolute() if checkpoint.exists() else m.checkpoint}: {e.num_hidden_layers} layers, "
        f"hidden {e.hidden_size}, {m.dtype}{', encoder frozen' if m.freeze_encoder else ''}",
        f"tasks: {sizes}; data from {Path(config.data.data_dir).absolute()}, token cache "
        f"{data_lib.token_cache_dir(config)}",
        f"sampler {t.sampler}, losses {t.loss_combination}, surgery {t.surgery}, updates {t.updates}, SMART "
        + (f"on ({', '.join(smart.tasks or [task.name for task in config.run_tasks if smart.smooths(task)])})"
           if smart.enabled else "off"),
        f"batch {t.batch_size} per task" + (f" in {t.accumulation_steps} micro-batches" if t.accumulation_steps > 1
                                            else "")
        + f", lr {t.lr:g} {t.schedule}" + (f" (warm-up {t.warmup_ratio:g})" if t.warmup_ratio else "")
        + f", weight decay {t.weight_decay:g}" + (" on every parameter" if t.decay_norms_and_biases else "")
        + f"; best checkpoint by dev {t.select_by}",
        f"steps: {sum(steps):,}" + (" (" + ", ".join(f"{s.name or 'stage'} {n:,}" for s, n in zip(stages, steps)) + ")"
                                    if config.stages else f" in {t.epochs} epoch(s)")
        + (f"; {carried} stage(s) carry the optimizer of the stage before" if carried else "")
        + (f", train.max_steps {t.max_steps} per stage" if t.max_steps is not None else ""),
        f"devices: {mesh.devices.size} × {mesh.devices.flat[0].platform}; seed(s) {', '.join(map(str, seeds))}"
        + (" vmapped in one program" if t.vmap_seeds else " one after another" if len(seeds) > 1 else "")
        + f"; compilation cache {compilation.cache_folder(config) or 'off'}",
    ]
    if config.sweep:
        points = sweep_points(config)
        lines.append(f"sweep: {len(points)} point(s) × {len(seeds)} seed(s), {len(points) * len(seeds)} members in one "
                     f"program, each into {out.absolute()}/<point>/seed<k>: "
                     + "; ".join(f"{key} {', '.join(f'{v:g}' for v in values)}" for key, values in config.sweep.items()))
    return lines


def log_seed_summary(run_members: list[Member], results: dict[Any, dict[str, Any]], select_by: str,
                     log: Callable[[str], None]) -> None:
    """One line per sweep point (the run, without a sweep): its seeds' best dev score, mean ± sample std."""
    points: dict[str, list[Member]] = {}
    for member in run_members:
        points.setdefault(point_name(member.point), []).append(member)
    for name, group in points.items():
        scored = [(m.seed, selection_score(results[m.key]["metrics"]["dev"], select_by)) for m in group
                  if results[m.key]["metrics"].get("dev")]
        scored = [(seed, score) for seed, score in scored if score is not None]
        seeds, scores = zip(*scored) if scored else ((), ())
        if len(scores) == 1:
            log(f"{name + ': ' if name else ''}seed {seeds[0]}: best dev {select_by} {scores[0]:.4f}")
        elif scores:
            log(f"{name + ': ' if name else ''}{len(scores)} seeds {min(seeds)}-{max(seeds)}: best dev {select_by} "
                f"{np.mean(scores):.4f} ± {np.std(scores, ddof=1):.4f} (mean ± sample std), per seed "
                f"{', '.join(f'{s:.4f}' for s in scores)}")


class _NoWriter:
    """The TensorBoard writer of a process that writes no files."""

    def add_scalar(self, *args) -> None:
        pass

    def close(self) -> None:
        pass


def _summary_writer(path: Path):
    from tensorboardX import SummaryWriter

    return SummaryWriter(str(path))
