"""`train_and_evaluate(config)`: the multitask fine-tuning job behind `train.py`.

A run is a list of stages (one, unless the config has `stages`), each with its own tasks, sampler, optimizer
and frozen or trainable encoder; params and the step count carry from one to the next. Per epoch of a stage:
the sampler's plan of batches, the jitted step over the `data` mesh, a dev evaluation, metrics to
`metrics.jsonl` and TensorBoard, and checkpoints (latest and best). At the end: `results.json` from the best
checkpoint of the whole run, prediction files in the course's format, and a plot of the dev curves.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh
from tqdm import tqdm

from jaxbert import data as data_lib
from jaxbert.checkpoint import CheckpointStore
from jaxbert.config import Config, resolve_stage, save_config, stage_names, to_dict
from jaxbert.convert import load_pretrained, resolve_hf_folder, PARAMS_DIR
from jaxbert.heads import HeadSpec, MultitaskBert
from jaxbert.metrics import summarize, task_metric
from jaxbert.modeling import Execution
from jaxbert.optim import make_optimizer
from jaxbert.prefetch import prefetch
from jaxbert.samplers import epoch_plan
from jaxbert.tokenization import BertTokenizer
from jaxbert.smart import SmartConfig
from jaxbert.train_step import (Objective, TrainState, create_train_state, data_mesh, initial_extra, jit_predict_step,
                                jit_train_step, make_predict_step, make_train_step, partly_frozen_optimizer, replicate,
                                shard_batch)

# The course's prediction-file headers, kept verbatim (typo included) so its scripts read our files.
PREDICTION_HEADERS = {"sst": "Predicted_Sentiment", "cfimdb": "Predicted_Sentiment", "para": "Predicted_Is_Paraphrase",
                      "sts": "Predicted_Similiarity", "tweet": "Predicted_Sentiment"}


def build_model(config: Config, log: Callable[[str], None]) -> tuple[MultitaskBert, dict, Path]:
    """The multitask model, its initial params (pretrained encoder, fresh heads) and the vocab file."""
    bert_config, bert_params = load_pretrained(config.model.checkpoint, log)
    overrides = {"hidden_dropout_prob": config.model.hidden_dropout,
                 "attention_probs_dropout_prob": config.model.attention_dropout}
    bert_config = dataclasses.replace(bert_config, **{k: v for k, v in overrides.items() if v is not None})
    heads = HeadSpec(**{f.name: getattr(config.heads, f.name) for f in dataclasses.fields(HeadSpec)})
    # Every batch comes from `data_lib`, which pads on the right: masks can travel as lengths.
    execution = Execution(config.model.attention, right_padded=True, remat=config.model.remat)
    model = MultitaskBert(bert_config, tuple(config.tasks), heads, config.model.freeze_encoder,
                          dtype=jnp.dtype(config.model.dtype), execution=execution)
    dummy = {k: jnp.zeros((1, 4), jnp.int32) for k in ("input_ids", "attention_mask", "token_type_ids")}
    dummy.update({k + suffix: v for k, v in dummy.items() for suffix in ("_b", "_c")})
    init_key = jax.random.key(config.train.seed)
    params = {}
    for task in config.tasks:
        params.update(jax.jit(lambda key, t=task: model.init(key, t, dummy))(init_key)["params"])
    params["bert"] = bert_params
    checkpoint = Path(config.model.checkpoint)
    vocab = checkpoint / "vocab.txt" if (checkpoint / PARAMS_DIR).is_dir() else \
        resolve_hf_folder(config.model.checkpoint, log) / "vocab.txt"
    return model, params, vocab


def steps_in_run(config: Config, train: dict[str, data_lib.Encoded]) -> list[int]:
    """Steps in each epoch, with `max_steps` applied; the LR schedule is laid out over their sum."""
    counts, remaining = [], config.train.max_steps if config.train.max_steps is not None else math.inf
    for epoch in range(config.train.epochs):
        n = min(len(plan_for(config, train, epoch)), remaining)
        counts.append(int(n))
        remaining -= n
    return counts


def plan_for(config: Config, train: dict[str, data_lib.Encoded], epoch: int,
             seed: int | None = None) -> list[dict[str, np.ndarray]]:
    """The batches of 0-based `epoch`, drawn with `seed` (default `train.seed`)."""
    t = config.train
    steps = t.steps_per_epoch if t.sampler in ("proportional", "annealed") or t.epoch_length == "steps" else None
    return epoch_plan(t.sampler, {task: len(e) for task, e in train.items()}, t.batch_size, epoch=epoch + 1,
                      num_epochs=t.epochs, seed=t.seed if seed is None else seed, epoch_length=t.epoch_length,
                      steps_per_epoch=steps, lengths={task: e.lengths for task, e in train.items()},
                      group_batches=t.group_by_length)


def step_batches(train: dict[str, data_lib.Encoded], step: dict[str, np.ndarray], buckets: list[int]) -> dict:
    """Host arrays for one step, each task padded to the bucket of its own longest example. The step compiles
    once per combination of buckets that occurs; length-grouped plans keep the combinations few."""
    return {task: data_lib.make_batch(train[task], idx, data_lib.batch_length(train[task], idx, buckets))
            for task, idx in step.items()}


def predict_split(encoded: data_lib.Encoded, predict: Callable, params: Any, mesh, batch_size: int,
                  buckets: list[int]) -> np.ndarray:
    """Raw head outputs for every example of a split, in file order.

    Examples are batched shortest first, so each batch pads only to the bucket of similar lengths."""
    order = np.argsort(encoded.lengths, kind="stable")
    outputs = []
    for start in range(0, len(encoded), batch_size):
        padded, valid = data_lib.pad_indices(order[start:start + batch_size], mesh.devices.size)
        length = data_lib.batch_length(encoded, padded, buckets)
        batch = {k: v for k, v in data_lib.make_batch(encoded, padded, length).items() if k != "labels"}
        outputs.append(np.asarray(jax.device_get(predict(params, shard_batch(batch, mesh))))[valid])
    if not outputs:
        return np.zeros((0,))
    result = np.empty_like(np.concatenate(outputs))
    result[order] = np.concatenate(outputs)
    return result


def to_predictions(task_kind: str, outputs: np.ndarray) -> np.ndarray:
    """Head outputs → what the course's files hold: class ids from logits, 0/1 from a logit, or the score."""
    if outputs.ndim == 2:  # one logit per class (sst, and cfimdb's two-way softmax)
        return outputs.argmax(-1)
    if task_kind == "binary":
        return (outputs > 0).astype(np.int64)
    return outputs


def evaluate(data: dict[str, dict[str, data_lib.Encoded]], predictors: dict[str, Callable], params: Any, mesh,
             config: Config, split: str) -> tuple[dict[str, dict[str, float]], dict[str, np.ndarray]]:
    """Metrics on every labeled file of `split`, and the predictions of every file of it."""
    metrics, predictions = {}, {}
    for task, splits in data.items():
        if split not in splits:
            continue
        encoded = splits[split]
        outputs = predict_split(encoded, predictors[task], params, mesh, config.train.eval_batch_size,
                                config.data.buckets)
        predictions[task] = to_predictions(encoded.task.label_kind, outputs)
        if encoded.labels is not None:
            metrics[task] = task_metric(encoded.task.label_kind, predictions[task], encoded.labels)
    return summarize(metrics) if metrics else {}, predictions


def write_predictions(out: Path, data, predictions_by_split: dict[str, dict[str, np.ndarray]]) -> None:
    folder = out / "predictions"
    folder.mkdir(exist_ok=True)
    for split, predictions in predictions_by_split.items():
        for task, values in predictions.items():
            with open(folder / f"{task}-{split}-output.csv", "w") as f:
                f.write(f"id \t {PREDICTION_HEADERS[task]} \n")
                for example_id, value in zip(data[task][split].ids, values):
                    f.write(f"{example_id} , {value} \n")


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


def dev_score(dev_metrics: dict[str, Any]) -> float | None:
    """The number best-checkpoint selection maximizes: the course's overall score when it exists, else the mean;
    None when no task has a dev metric that counts (nli alone, say)."""
    for key in ("overall", "mean"):
        if key in dev_metrics:
            return float(dev_metrics[key])
    return None


def objective_from_config(config: Config) -> Objective:
    losses, s = config.losses, config.smart
    smart = SmartConfig(s.weight, s.noise_std, s.step_size, s.epsilon, s.steps, s.norm, s.bregman_weight,
                        s.teacher_momentum) if s.enabled else None
    return Objective(losses.sst, losses.label_smoothing, losses.ordinal_alpha, losses.supcon_weight,
                     losses.supcon_temperature, losses.simcse_weight, tuple(losses.simcse_tasks),
                     losses.simcse_temperature, smart, sts_loss=losses.sts,
                     cosine_embedding_threshold=losses.cosine_embedding_threshold,
                     cosine_embedding_margin=losses.cosine_embedding_margin)


@dataclasses.dataclass(frozen=True)
class Stage:
    """One stage of a run, cycles unrolled.

    `config` is the run's config with the stage's fields applied. `plan_seed` seeds its data order: the first
    stage draws exactly as a run without stages would, every later one (each cycle's included) its own order.
    """

    index: int
    name: str  # "" for a run without `stages`
    config: Config
    plan_seed: int


def run_stages(config: Config) -> list[Stage]:
    """The stages `config` trains, in order: its `stages` repeated `train.stage_cycles` times, or one stage of
    its own settings when it has none."""
    if not config.stages:
        return [Stage(0, "", config, config.train.seed)]
    seed = config.train.seed
    stages = list(zip(stage_names(config), config.stages)) * config.train.stage_cycles
    return [Stage(k, name, resolve_stage(config, stage),
                  seed if k == 0 else int(np.random.SeedSequence([seed, k]).generate_state(1)[0]))
            for k, (name, stage) in enumerate(stages)]


@dataclasses.dataclass(frozen=True)
class Run:
    """What every stage of a run shares: the model, the data and devices, and where results go."""

    config: Config
    model: MultitaskBert
    data: dict[str, dict[str, data_lib.Encoded]]
    predictors: dict[str, Callable]
    mesh: Mesh
    store: CheckpointStore
    writer: Any
    base_key: jax.Array  # dropout keys fold in the global step, so they never repeat across stages
    log: Callable[[str], None]
    # Optimizer and jitted step of each entry of `config.stages`, built once: every cycle reuses them.
    steps: dict[int, tuple[optax.GradientTransformation, Callable]] = dataclasses.field(default_factory=dict)


def frozen_params(run_tasks: list[str], config: Config, params: Any) -> set[str]:
    """The top-level params a stage leaves exactly where they are: the encoder when it is frozen, and the
    heads and PALs of the run's tasks the stage does not train (which weight decay would otherwise shrink)."""
    left_out = [task for task in run_tasks if task not in config.tasks]
    frozen = {"bert"} if config.model.freeze_encoder else set()
    return frozen | {name for task in left_out for name in (task, f"pal_{task}") if name in params}


def stage_step(run: Run, stage: Stage, params: Any,
               total_steps: int) -> tuple[optax.GradientTransformation, Callable]:
    """The stage's optimizer (its learning rate and schedule laid out over its `total_steps`, its frozen params
    left alone) and its jitted train step (its tasks, loss combination, surgery, frozen encoder or not)."""
    entry = stage.index % max(len(run.config.stages), 1)
    if entry not in run.steps:
        config, t = stage.config, stage.config.train
        tx = make_optimizer(t.lr, max(total_steps, 1), warmup_ratio=t.warmup_ratio, schedule=t.schedule,
                            weight_decay=t.weight_decay, clip_norm=t.clip_norm, eps=t.eps)
        frozen = frozen_params(run.config.tasks, config, params)
        if frozen:
            tx = partly_frozen_optimizer(tx, params, frozen)
        model = run.model.clone(freeze_encoder=config.model.freeze_encoder)
        train_step = make_train_step(model, tx, run.base_key, t.loss_combination, t.loss_weights, t.surgery,
                                     objective_from_config(config), t.gradvac_beta, t.accumulation_steps)
        run.steps[entry] = tx, jit_train_step(train_step, run.mesh)
    return run.steps[entry]


def run_stage(run: Run, stage: Stage, params: Any, start_step: jax.Array, progress: dict[str, Any],
              resume: bool) -> tuple[TrainState, dict[str, Any]]:
    """Trains `stage` from where `progress` stands in it (its epoch, and the step within that epoch), with a dev
    evaluation, a `metrics.jsonl` record and checkpoints after every epoch.

    The stage starts from `params` (encoder and heads) and the global `start_step` of the stage before, with a new
    optimizer state and a new `TrainState.extra`: its learning rate and schedule are laid out over its own steps,
    and AdamW's moments and GradVac's or SMART's running values belong to the objective and parameters they
    were gathered for. With `resume`, the state is the latest checkpoint's, which this stage wrote.
    """
    config, t = stage.config, stage.config.train
    train = {task: splits["train"] for task, splits in run.data.items() if task in config.tasks}
    epoch_steps = steps_in_run(config, train)
    total_steps = sum(epoch_steps)
    if t.batch_size % (t.accumulation_steps * run.mesh.devices.size):
        raise ValueError(f"train.batch_size {t.batch_size} is not divisible by train.accumulation_steps "
                         f"{t.accumulation_steps} × the {run.mesh.devices.size} devices (each device's micro-batch)")
    tx, train_step = stage_step(run, stage, params, total_steps)
    extra = initial_extra(params, len(config.tasks), t.surgery, objective_from_config(config))
    state = replicate(create_train_state(params, tx, extra).replace(step=start_step), run.mesh)
    label = f"stage {stage.name}: " if stage.name else ""
    if resume:
        items, _ = run.store.restore(state.checkpoint_items())
        state = replicate(state.replace(**items), run.mesh)
        run.log(f"resumed from step {int(items['step'])} ({label}epoch {progress['epoch'] + 1}, "
                f"step {progress['step_in_epoch']} of it)")

    for epoch in range(progress["epoch"], t.epochs):
        if epoch_steps[epoch] == 0:
            break
        plan = plan_for(config, train, epoch, stage.plan_seed)[:epoch_steps[epoch]]
        first = progress["step_in_epoch"] if epoch == progress["epoch"] else 0
        bar = tqdm(range(first, len(plan)), desc=f"{label}epoch {epoch + 1}/{t.epochs}", initial=first,
                   total=len(plan), dynamic_ncols=True, disable=None)
        examples, tick = 0, time.time()
        device_batches = prefetch(shard_batch(step_batches(train, plan[i], config.data.buckets), run.mesh)
                                  for i in range(first, len(plan)))
        for i, batches in zip(bar, device_batches):
            state, step_metrics = train_step(state, batches)
            examples += sum(len(b["input_ids"]) for b in batches.values())
            step = i + 1
            if step % t.log_every == 0 or step == len(plan):
                host = {k: float(v) for k, v in jax.device_get(step_metrics).items()}
                rate = examples / max(time.time() - tick, 1e-9)
                bar.set_postfix(loss=f"{host['loss']:.4f}", ex_s=f"{rate:.0f}")
                done = sum(epoch_steps[:epoch]) + step
                if bar.disable:  # no terminal (a log file, CI): the same figures as plain lines
                    eta = (total_steps - done) * (time.time() - tick) / max(step - first, 1)
                    run.log(f"{label}step {done}/{total_steps} loss {host['loss']:.4f} "
                            f"{rate:.0f} examples/s, ETA {eta / 60:.1f} min (this epoch's rate)")
                for name, value in {**host, "examples_per_sec": rate}.items():
                    run.writer.add_scalar(f"train/{name}", value, int(jax.device_get(state.step)))
            if t.checkpoint_every and step % t.checkpoint_every == 0 and step < len(plan):
                run.store.save(state.checkpoint_items(), {**progress, "epoch": epoch, "step_in_epoch": step})
        bar.close()
        dev, _ = evaluate(run.data, run.predictors, state.params, run.mesh, config, "dev")
        score = dev_score(dev)
        run_epoch = len(progress["history"]) + 1  # epochs count on across stages
        record = {"epoch": run_epoch, "step": int(jax.device_get(state.step)), "dev": dev,
                  "train_examples_per_sec": examples / max(time.time() - tick, 1e-9)}
        if stage.name:
            record.update(stage=stage.index, stage_name=stage.name, stage_epoch=epoch + 1)
        progress["history"].append(record)
        # With no score to select by, no best checkpoint is kept and the final evaluation uses the latest state.
        is_best = score is not None and score > progress["best_score"]
        if is_best:
            progress["best_score"] = score
        progress.update(epoch=epoch + 1, step_in_epoch=0, score=score)
        run.store.save(state.checkpoint_items(), progress, best=is_best)
        with open(Path(run.config.out) / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        for task, metrics in dev.items():
            for name, value in (metrics.items() if isinstance(metrics, dict) else [("", metrics)]):
                run.writer.add_scalar(f"dev/{task}{'/' + name if name else ''}", value, run_epoch)
        run.log(f"{label}epoch {epoch + 1}: dev {json.dumps(dev)}{' (best)' if is_best else ''}")
    return state, progress


def train_and_evaluate(config: Config, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Runs (or resumes) the whole job, stage after stage, and returns the contents of `results.json`.

    Params (encoder and heads) and the step count carry from stage to stage; the best checkpoint is chosen
    over every epoch of every stage.
    """
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    save_config(config, out / "config.yaml")
    start_time = time.time()

    model, params, vocab = build_model(config, log)
    tokenizer = BertTokenizer(vocab)
    data = data_lib.load_task_data(
        config.tasks, ("train", "dev", "test"), config.data.data_dir, config.data.files, tokenizer,
        max_length=config.data.max_length, source=config.data.source,
        pair_encoding={"para": config.heads.para_encoding, "sts": config.heads.sts_encoding},
        prompt={"para": config.heads.para_prompt}, cache_dir=config.data.cache_dir, log=log)
    mesh = data_mesh()
    store = CheckpointStore(out / "checkpoints")
    predictors = {task: jit_predict_step(make_predict_step(model, task), mesh) for task in config.tasks}
    base_key = jax.random.fold_in(jax.random.key(config.train.seed), 1)  # stream 0 initialized the heads
    run = Run(config, model, data, predictors, mesh, store, _summary_writer(out / "tensorboard"), base_key, log)

    progress = {"stage": 0, "epoch": 0, "step_in_epoch": 0, "best_score": -math.inf, "history": [],
                "score": -math.inf}
    resume = False
    if config.resume:
        saved = store.progress()
        if saved is None:
            log(f"--resume: no checkpoint in {out / 'checkpoints'}, starting fresh")
        else:
            progress, resume = {"stage": 0, **saved}, True
    # The checkpoint's history is the record: a run stopped between a checkpoint and its line loses no line.
    (out / "metrics.jsonl").write_text("".join(json.dumps(record) + "\n" for record in progress["history"]))
    # Replicated once, so placing them in each stage's state copies nothing.
    params, step = replicate(params, mesh), jnp.zeros((), jnp.int32)
    for stage in run_stages(config)[progress["stage"]:]:
        state, progress = run_stage(run, stage, params, step, progress, resume)
        params, step, resume = state.params, state.step, False
        del state  # its optimizer state belonged to the stage that ended
        progress = {**progress, "stage": stage.index + 1, "epoch": 0, "step_in_epoch": 0}
    run.writer.close()

    best = store.restore({"params": params}, which="best", partial=True)
    best_params = replicate(best[0]["params"], mesh) if best else params
    store.close()
    results: dict[str, Any] = {"config": to_dict(config), "steps": int(jax.device_get(step)),
                               "best_epoch": None, "wall_time_sec": None, "metrics": {}}
    predictions_by_split = {}
    for split in ("dev", "test"):
        metrics, predictions = evaluate(data, predictors, best_params, mesh, config, split)
        predictions_by_split[split] = predictions
        if metrics:
            results["metrics"][split] = metrics
    history = progress["history"]
    if history:
        scored = [r for r in history if dev_score(r["dev"]) is not None]
        results["best_epoch"] = (max(scored, key=lambda r: dev_score(r["dev"])) if scored else history[-1])["epoch"]
        plot_curves(history, out / "dev_curves.png")
    write_predictions(out, data, predictions_by_split)
    results["wall_time_sec"] = time.time() - start_time
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    log(f"best dev (epoch {results['best_epoch']}): {json.dumps(results['metrics'].get('dev', {}))}")
    return results


def _summary_writer(path: Path):
    from tensorboardX import SummaryWriter

    return SummaryWriter(str(path))
