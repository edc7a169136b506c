"""Typed run configuration, the bottom layer of the library: frozen dataclasses filled from YAML files and
`--key=value` overrides, strictly, and checked once, here, when a config loads.

Its sections are the specs the library takes (`MultitaskBert` reads `HeadsConfig`, the step `TrainConfig`,
`LossConfig` and `SmartConfig`), so every field is declared once. It imports no JAX, and of jaxbert only the
task registry and the choice lists. An unknown key or a value of the wrong type is an error naming it with its
path (`stages[1].lr`). On the command line a field is `--section.key=value` (`--train.lr=3e-5`) and an item of a
mapping `--train.loss_weights.sst=2`; the short forms are the explicit `ALIASES` (`--lr=3e-5`) and `SHORTHANDS`
(`--pcgrad`), and an unknown name is an error that suggests the closest keys. A run's `stages` are set in YAML, the
user's own tasks (`task_defs`, each a `TaskDef` that becomes a `Task` like the built-ins') there or a field at a
time. The comment on a field is its documentation: `help_text` (`python train.py --help`) reads it from the source.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import inspect
import io
import itertools
import math
import re
import tokenize
import types
import typing
from pathlib import Path
from typing import Any, Sequence

import yaml

from jaxbert import choices
from jaxbert import tasks as task_registry
from jaxbert.errors import UserError
from jaxbert.tasks import HubSource, Task


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    checkpoint: str = "checkpoints/bert-base-uncased"  # a converted folder, a Hugging Face folder or a Hub id
    dtype: str = "float32"  # compute dtype (params stay float32)
    freeze_encoder: bool = False  # train the heads only (and the PALs, unless freeze_pals)
    freeze_pals: bool = False  # leave the projected attention layers as they are (a run with heads.pal_size)
    hidden_dropout: float | None = None  # the encoder's hidden dropout rate (null: the checkpoint's)
    attention_dropout: float | None = None  # (null: the checkpoint's; 0: fused kernels in training too)
    attention: str = "auto"  # kernel of dropout-free attention (auto: cuDNN on GPU in bf16)
    remat: bool = False  # recompute each encoder layer's activations in the backward pass (less memory)


@dataclasses.dataclass(frozen=True)
class HeadsConfig:
    """The heads on the shared encoder: how each task's sentences are encoded and pooled, and what reads them."""

    dropout: float = 0.1  # on the pooled embeddings each head reads
    sst_pooling: str = "cls"  # pooling of every single-sentence task
    pair_pooling: str = "cls"  # pooling of the sentences of pairs and triplets
    para_encoding: str = "cross"  # para's pairs: both sentences in one input (cross) or each alone (bi)
    sts_encoding: str = "bi"  # sts's pairs: both sentences in one input (cross) or each alone (bi)
    sts_head: str = "cosine"  # sts's head (linear: the only choice with cross encoding)
    cosine_scale: float = 20.0  # sigmoid_cosine: 5·sigmoid(scale·cos(u, v)), 20 in report 002
    hidden_layers: int = 0  # MLP hidden layers before each head's output layer (0: linear heads)
    task_hidden_layers: dict[str, int] = dataclasses.field(default_factory=dict)  # per task: {sts: 1}
    hidden_size: int | None = None  # their width (None: the encoder's hidden size)
    activation: str = "relu"  # of the heads' hidden layers
    classifier_activation: str = "none"  # on every softmax classifier's logits (report 001)
    para_prompt: str | None = None  # text placed before a cross-encoded paraphrase pair
    pal_size: int = 0  # projected attention layers: each task's low-rank attention width (0: off; 204 in the paper)
    pal_heads: int = 12  # attention heads of each projected attention layer
    pal_function: str = "attention"  # g of TS(h) = V^D g(V^E h) (report 004: identity)

    def encoding(self, task: Task) -> str:
        """single | cross | bi | triplet: the task's own, or for the course's pair tasks their switch."""
        return {"para": self.para_encoding, "sts": self.sts_encoding}.get(task.name, task.encoding)

    def pooling(self, task: Task) -> str:
        """`sst_pooling` for one sentence, `pair_pooling` for the sentences of a pair or triplet."""
        return self.sst_pooling if self.encoding(task) == "single" else self.pair_pooling

    def prompt(self, task: Task) -> str | None:
        """The text placed before `task`'s cross-encoded pairs: `para_prompt` for para."""
        return self.para_prompt if task.name == "para" else None

    def regression_head(self, task: Task) -> str:
        """The head of a regression task: `sts_head` for sts; for another a cosine of its bi-encoded sentences,
        or a linear regressor on a cross-encoded pair."""
        if task.name == "sts":
            return self.sts_head
        return "cosine" if self.encoding(task) == "bi" else "linear"

    def layers(self, task: Task) -> int:
        """Hidden layers of the head `task` trains."""
        return self.task_hidden_layers.get(task.owner, self.hidden_layers)

    def cosine(self, task: Task) -> bool:
        """Whether `task`'s head scores the cosine of its two sentence embeddings (a bi-encoded regression)."""
        return (task.kind == "regression" and self.encoding(task) == "bi"
                and self.regression_head(task) in choices.COSINE_HEADS)

    def projects(self, task: Task, owner: Task) -> bool:
        """Whether `task`'s sentence embeddings pass a learned projection (its head's hidden layers) before a
        cosine: report 002's "linear layer on each embedding, then cosine", report 001's layer shared with NLI.
        `owner` is the task whose head `task` trains."""
        return self.cosine(owner) and self.encoding(task) in ("bi", "triplet") and self.layers(task) > 0


@dataclasses.dataclass(frozen=True)
class DataConfig:
    data_dir: str = "data"  # the folder of the tasks' files
    source: str = "auto"  # auto: per task, its files in data_dir, else its Hugging Face source
    files: dict[str, dict[str, str]] = dataclasses.field(default_factory=dict)  # files of yours: {sst: {train: path}}
    max_length: int = 128  # tokens of an encoder input (longer ones are truncated)
    buckets: list[int] = dataclasses.field(default_factory=lambda: [32, 64, 128])  # the lengths a batch pads to
    step_shapes: str = "per_task"  # a step's tasks pad to their own buckets, or all to its longest (fewer compiles)
    cache_dir: str | None = None  # token cache (None: $XDG_CACHE_HOME/jaxbert/tokens or ~/.cache/jaxbert/tokens)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    sampler: str = "roundrobin"  # the tasks of each step: every one, one after another, or drawn by size
    epoch_length: str = "min"  # roundrobin: the smallest task's batches, the largest's, or steps_per_epoch
    steps_per_epoch: int | None = None  # for epoch_length steps, or proportional and annealed (null: all batches)
    loss_combination: str = "sum"  # of the tasks' losses: weights uses loss_weights, balanced ω_t = ΣL / L_t
    loss_weights: dict[str, float] = dataclasses.field(default_factory=dict)  # per task: {sst: 1, para: 2, sts: 1}
    surgery: str = "none"  # gradient surgery on the encoder's per-task gradients (`--pcgrad`, ...)
    gradvac_beta: float = 0.01  # EMA rate of GradVac's cosine targets
    gradvac_ema: str = "raw"  # their source: raw cos(g_i, g_j) | projected: Algorithm 1's φ of the adjusted g_i
    updates: str = "joint"  # joint: one optimizer update per step | per_task: one per task's loss, in turn
    epochs: int = 10  # of each stage
    max_steps: int | None = None  # caps each stage, its LR schedule included
    batch_size: int = 32  # per task, across all devices
    accumulation_steps: int = 1  # micro-batches per optimizer step: each task's batch is split into this many
    eval_batch_size: int = 128  # examples per evaluation and prediction batch
    lr: float = 2e-5  # AdamW's peak learning rate
    schedule: str = "constant"  # of the learning rate (linear: warm-up, then linear decay to 0)
    warmup_ratio: float = 0.0  # the share of the updates that warm the learning rate up
    weight_decay: float = 0.0  # AdamW's decoupled weight decay
    decay_norms_and_biases: bool = False  # decay biases and LayerNorm too, as the course's AdamW (false: BERT's mask)
    clip_norm: float | None = None  # the gradient's largest global norm (null: no clipping)
    eps: float = 1e-6  # AdamW's epsilon
    seed: int = 0  # head initialization and dropout; the batch order too unless `data_seed`
    seeds: int | list[int] = 1  # N: seed … seed+N-1; a list: those, the first its seed; each into <out>/seed<k>/
    vmap_seeds: bool = False  # train the seeds in one program, vmapped over a seed axis (`--vmap-seeds`)
    data_seed: int | None = None  # seed of the batch order (None: `seed`; in a vmapped run the first seed's)
    group_by_length: int = 0  # sort each run of N batches by length so batches pad little (0: off)
    checkpoint_every: int = 0  # also checkpoint every N steps inside an epoch (0: at epoch ends only)
    log_every: int = 10  # log the train loss every N steps
    compilation_cache: str | None = "auto"  # JAX's persistent compilation cache (auto: the user's; null, off: none)
    select_by: str = "overall"  # the dev score that picks the best checkpoint: overall | mean | a task's metric
    stage_cycles: int = 1  # run the whole list of `stages` this many times
    nonfinite: str = "stop"  # a step with a non-finite loss or gradient: stop the run, or skip its update
    max_nonfinite: int = 10  # skip: the run stops after this many skipped steps in a row

    def __post_init__(self):
        # One form per set of seeds, so the code may take `seed` for the first: a list overrides `seed`, and a
        # consecutive ascending one is the count it stands for.
        if isinstance(self.seeds, list) and self.seeds:
            object.__setattr__(self, "seed", self.seeds[0])
            if self.seeds == list(range(self.seed, self.seed + len(self.seeds))):
                object.__setattr__(self, "seeds", len(self.seeds))

    @property
    def seed_list(self) -> list[int]:
        """The seeds the run trains, `seed` first."""
        return parse_seeds(self.seeds, "train.seeds", self.seed)

    @property
    def reduction(self) -> str:
        """How gradient surgery sums its per-task gradients: as `loss_combination` combines the losses."""
        return "mean" if self.loss_combination == "mean" else "sum"


@dataclasses.dataclass(frozen=True)
class LossConfig:
    """What each task's loss is made of, beyond its head's default (see `jaxbert.losses.task_loss`)."""

    sst: str = "ce"  # the loss of every softmax classification head (sst, cfimdb, tweet)
    label_smoothing: float = 0.0  # of ce
    ordinal_alpha: float = 1.0  # OLL's distance exponent
    supcon_weight: float = 0.0  # supervised contrastive loss on two dropout views of each sentiment batch
    supcon_temperature: float = 0.07  # its temperature
    simcse_weight: float = 0.0  # unsupervised SimCSE on two dropout views of `simcse_tasks`' sentences
    simcse_tasks: list[str] = dataclasses.field(default_factory=lambda: ["sst"])  # whose sentences SimCSE sees
    simcse_temperature: float = 0.05  # also nli's supervised SimCSE
    sts: str = "mse"  # sts's loss (cosine_embedding: on the pair's embeddings, report 002)
    cosine_embedding_threshold: float = 2.5  # an STS pair scored at least this is a positive
    cosine_embedding_margin: float = 0.0  # negatives cost max(0, cos − margin)

    def regression_loss(self, task: Task) -> str:
        """mse | cosine_embedding: `sts` for the sts task, the squared error for every other regression."""
        return self.sts if task.name == "sts" else "mse"

    def supcon(self, task: Task) -> bool:
        """Whether `task` gets the supervised contrastive term: every softmax classification task."""
        return self.supcon_weight > 0 and task.kind == "classification" and not task.binary

    def simcse(self, task: Task) -> bool:
        return self.simcse_weight > 0 and task.name in self.simcse_tasks

    def two_views(self, task: Task) -> bool:
        """Whether `task`'s batch runs twice in one call, so dropout gives the contrastive terms two views."""
        return self.supcon(task) or self.simcse(task)


@dataclasses.dataclass(frozen=True)
class SmartConfig:
    """SMART (Jiang et al. 2020); the defaults are the paper's (σ = ε = 1e-5, η = 1e-3, K = 1, β = 0.99)."""

    enabled: bool = False  # the smoothness term and its Bregman proximal point (`--smart`)
    weight: float = 1.0  # λ_s
    noise_std: float = 1e-5  # σ of the initial perturbation δ₀ ~ N(0, σ²)
    step_size: float = 1e-3  # η of each ascent step
    epsilon: float = 1e-5  # ε, radius of the perturbation ball
    steps: int = 1  # K ascent steps (0: the random start alone)
    samples: int = 1  # random starts, the largest divergence kept per example (report 001: 7)
    norm: str = "inf"  # of the ball and the gradient normalization
    ascent: str = "projected"  # projected: the paper's | normalized: smart-pytorch's (ε guards a division)
    bregman_weight: float = 1.0  # μ (0: no proximal term and no teacher)
    teacher_momentum: float = 0.99  # β of the EMA teacher θ̃ ← β θ̃ + (1 − β) θ
    tasks: list[str] | None = None  # the tasks regularized (None: every one with a prediction; report 001: [sst])

    def smooths(self, task: Task) -> bool:
        """Whether SMART regularizes `task`: a task with a prediction to smooth, among `tasks` if given."""
        return (self.enabled and task.divergence is not None
                and (self.tasks is None or task.name in self.tasks))

    @property
    def teacher(self) -> bool:
        """Whether the run keeps an EMA teacher for the Bregman proximal term."""
        return self.enabled and self.bregman_weight > 0


@dataclasses.dataclass(frozen=True)
class StageConfig:
    """One stage of a staged run. Every `None` field inherits the run's value: `tasks` the top-level list,
    `freeze_encoder` and `freeze_pals` the `model` field, `smart` `smart.enabled`, the weights their `losses`
    field, the others the `train` field of the same name (but a stage of one task trains without surgery:
    `resolve_stage`).

    `optimizer: carry` continues the optimizer of the stage trained just before (in a run of `stage_cycles`,
    the first stage of a cycle carries the last one's; the run's very first stage has none to carry and starts
    one): one AdamW, its moments and update count, and one learning-rate schedule laid over the updates of
    every stage it spans. Those stages must agree on every optimizer setting (`CARRIED_SETTINGS`)."""

    name: str = ""  # "" names it stage<k>, k its 1-based position in `stages`
    tasks: list[str] | None = None  # a subset of the run's tasks (the model has one head per run task)
    sampler: str | None = None
    epoch_length: str | None = None
    steps_per_epoch: int | None = None
    epochs: int | None = None
    max_steps: int | None = None
    lr: float | None = None
    batch_size: int | None = None
    freeze_encoder: bool | None = None
    freeze_pals: bool | None = None
    loss_combination: str | None = None
    surgery: str | None = None
    smart: bool | None = None  # smart.enabled in this stage
    supcon_weight: float | None = None  # losses.supcon_weight in this stage
    simcse_weight: float | None = None  # losses.simcse_weight in this stage
    optimizer: str = "fresh"  # fresh: a new AdamW | carry: the stage before's, its moments and update count


@dataclasses.dataclass(frozen=True)
class HubConfig:
    """A user task's Hugging Face source: `columns` maps each of the task's columns (text and label) to the
    dataset's (a column it leaves out has the same name there), `splits` each of ours to the dataset's."""

    dataset: str = ""  # its Hub id, owner/name
    config: str | None = None  # its configuration, if it has several
    splits: dict[str, str] = dataclasses.field(
        default_factory=lambda: {"train": "train", "dev": "validation", "test": "test"})  # ours: the dataset's
    columns: dict[str, str] = dataclasses.field(default_factory=dict)  # ours: the dataset's


@dataclasses.dataclass(frozen=True)
class TaskDef:
    """A task of the user's (`task_defs: {name: ...}`), trained through the same heads, losses, samplers,
    surgery, SMART, metrics and predictions as the built-ins."""

    kind: str = ""  # classification: integer labels 0..num_classes-1 | regression: float scores in label_range
    text: list[str] = dataclasses.field(default_factory=list)  # one column: a single sentence; two: a pair
    label: str = ""  # the label column (a test file may lack it: predicted, not scored)
    files: dict[str, str] = dataclasses.field(default_factory=dict)  # {train, dev, test} under data.data_dir
    num_classes: int = 0  # classification: at least 2
    label_range: list[float] | None = None  # regression: [lo, hi]; labels outside are skipped and counted
    encoding: str | None = None  # pairs: cross | bi (default cross)
    binary: bool = False  # 2 classes as one logit and a sigmoid cross-entropy, as para's head (default: 2 logits)
    delimiter: str = "\t"  # the files' field separator
    auxiliary: bool = False  # trained and reported, counted in no aggregate score
    hf: HubConfig | None = None  # its Hugging Face source

    def task(self, name: str) -> Task:
        """The task this entry defines under `name`."""
        columns = (*self.text, self.label)
        hub = None if self.hf is None else HubSource(
            self.hf.dataset, {c: self.hf.columns.get(c, c) for c in columns}, self.hf.config, dict(self.hf.splits))
        return Task(name, name, tuple(self.text), self.label, self.kind, dict(self.files),
                    num_classes=self.num_classes if self.kind == "classification" else 0, binary=self.binary,
                    score_range=tuple(self.label_range) if self.kind == "regression" and self.label_range else None,
                    encoding="single" if len(self.text) == 1 else self.encoding or "cross", auxiliary=self.auxiliary,
                    prediction_header=f"Predicted_{self.label}", hub=hub, delimiter=self.delimiter,
                    defined_in=f"task_defs.{name}")


@dataclasses.dataclass(frozen=True)
class DistributedConfig:
    """Several processes (hosts) training one run, joined by `jax.distributed.initialize` (`jaxbert.distributed`)."""

    auto: bool = False  # let JAX find the processes itself: SLURM, Open MPI, Cloud TPU, Kubernetes
    coordinator_address: str | None = None  # host:port of process 0, which every process reaches
    num_processes: int | None = None  # how many processes take part
    process_id: int | None = None  # this process's rank, 0 .. num_processes-1 (0 writes the run folder)


@dataclasses.dataclass(frozen=True)
class Config:
    tasks: list[str] = dataclasses.field(default_factory=lambda: ["sst", "para", "sts"])  # in order: built-in or yours
    task_defs: dict[str, TaskDef] = dataclasses.field(default_factory=dict)  # the user's own tasks, by name
    out: str = "runs/default"  # the run folder
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)  # the encoder
    heads: HeadsConfig = dataclasses.field(default_factory=HeadsConfig)  # what reads the encoder, per task
    data: DataConfig = dataclasses.field(default_factory=DataConfig)  # the tasks' files and their encoding
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)  # sampling, optimizer, surgery, seeds
    losses: LossConfig = dataclasses.field(default_factory=LossConfig)  # what each task's loss is made of
    smart: SmartConfig = dataclasses.field(default_factory=SmartConfig)  # SMART (Jiang et al. 2020)
    stages: list[StageConfig] = dataclasses.field(default_factory=list)  # empty: one stage, the run's own settings
    distributed: DistributedConfig = dataclasses.field(default_factory=DistributedConfig)  # several processes
    sweep: dict[str, list[float]] = dataclasses.field(default_factory=dict)  # {train.lr: [1e-5, 2e-5]}: one program

    def task(self, name: str) -> Task:
        """The task named `name`: one of `task_defs`, or a built-in."""
        if name in self.task_defs:
            return self.task_defs[name].task(name)
        return task_registry.get(name)

    @property
    def known_tasks(self) -> tuple[str, ...]:
        """Every task a run of this config may name: the built-ins, then `task_defs`."""
        return (*task_registry.TASKS, *self.task_defs)

    @property
    def run_tasks(self) -> tuple[Task, ...]:
        """The run's tasks, in the order of `tasks`."""
        return tuple(self.task(name) for name in self.tasks)


class ConfigError(UserError, ValueError):
    """A config file, key, value or option combination that cannot be; the message names the file and key."""


# ------------------------------------------------------------------------------------------ reading values


def _is_dataclass_type(tp) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _field_types(cls) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


# The words a boolean takes, in a file or on the command line.
BOOLEANS = {"true": True, "false": False, "yes": True, "no": False, "1": True, "0": False}


def _flow(value: str, key: str) -> Any:
    """A list or mapping given on the command line in YAML's flow style: `[0, 1, 5]`, `{sst: 1, para: 2}`."""
    try:
        return yaml.safe_load(value)
    except yaml.YAMLError:
        raise ConfigError(f"{key}: {value!r} is not YAML flow style, such as [0, 1] or {{sst: 1, para: 2}}") from None


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Checks `value` against the annotation `tp`, converting strings from the command line: a list is
    `a,b,c` or `[a, b, c]`, a mapping `{name: value, ...}`."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            if type(None) in args:
                return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0])
    if origin is list:
        if isinstance(value, str):
            value = _flow(value, key) if value.lstrip().startswith("[") else [v for v in value.split(",") if v]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict or _is_dataclass_type(tp):
        if isinstance(value, str):
            value = _flow(value, key) if value.strip() else {}
        if _is_dataclass_type(tp):
            return _build(tp, value, key)
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping ({{name: value, ...}}), got {value!r}")
        return {_coerce(k, args[0], key): _coerce(v, args[1], f"{key}.{k}") for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in BOOLEANS:
            return BOOLEANS[value.lower()]
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    raise TypeError(f"{key}: unsupported annotation {tp}")


def parse_seeds(value: Any, where: str = "train.seeds", first: int = 0) -> list[int]:
    """The seeds `value` names, the one meaning of `train.seeds` and of a suite's `seeds:` and `--seeds`: a number
    N (`3`, `"3"`) is the N seeds `first` … `first+N-1`, a list (`[0, 1, 5]`, `"0,1,5"`) exactly those (distinct,
    non-negative). A ConfigError names `where`."""
    try:
        seeds = _coerce(value, int | list[int], where)
    except ConfigError:
        raise ConfigError(f"{where} must be a number of seeds (3) or a list of seeds (0,1,5), got {value!r}") from None
    if isinstance(seeds, int):
        _check(seeds >= 1, f"{where} must be at least 1, got {seeds}")
        return list(range(first, first + seeds))
    _check(bool(seeds), f"{where} must name at least one seed, got []")
    for seed in seeds:
        _check(seed >= 0, f"{where}: {seed} is not a non-negative integer")
    _check(len(set(seeds)) == len(seeds), f"{where}: {seeds} repeats a seed")
    return seeds


def _build(cls, mapping: Any, key: str = ""):
    """An instance of the dataclass `cls` from a (nested) mapping of its fields, strictly; missing fields keep
    their defaults."""
    if not isinstance(mapping, dict):
        raise ConfigError(f"{key}: expected a mapping of {cls.__name__} fields, got {mapping!r}")
    types_ = _field_types(cls)
    prefix = f"{key}." if key else ""
    unknown = [name for name in mapping if name not in types_]
    if unknown:
        raise ConfigError(f"unknown config key {prefix + str(unknown[0])!r}; known keys here: {', '.join(types_)}")
    return cls(**{name: _coerce(value, types_[name], prefix + name) for name, value in mapping.items()})


def _merge(cls, base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """`update` over `base`, both mappings of `cls` fields: sections merge key by key, any other field (a list,
    a mapping such as `train.loss_weights`) is replaced whole."""
    types_ = _field_types(cls)
    merged = dict(base)
    for name, value in update.items():
        tp = types_.get(name)
        if _is_dataclass_type(tp) and isinstance(value, dict) and isinstance(merged.get(name), dict):
            merged[name] = _merge(tp, merged[name], value)
        else:
            merged[name] = value
    return merged


def to_dict(config: Config) -> dict[str, Any]:
    return dataclasses.asdict(config)


def save_config(config: Config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(config), sort_keys=False))


def _override(data: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """`data`, a mapping of `Config` fields, with each dotted key of `overrides` set. A field (`train.lr`,
    `train.loss_weights`) is replaced as a file's is; an item of a mapping field (`train.loss_weights.sst`,
    `task_defs.mine.hf.dataset`) merges into the mapping `data` holds there, or the field's default."""
    for key, value in overrides.items():
        data = _set(Config, data, key.split("."), value, key)
    return data


def _set(tp: Any, node: dict[str, Any], parts: list[str], value: Any, key: str) -> dict[str, Any]:
    """A copy of `node`, a mapping of annotation `tp` (a dataclass or `dict[str, ...]`), with the path `parts` (the
    end of `key`) set to `value`. A key that names no field is set all the same: `_build` names it."""
    tp = _without_none(tp)
    name, node = parts[0], dict(node)
    if _is_dataclass_type(tp):
        child_tp = _field_types(tp).get(name)
    else:
        child_tp = typing.get_args(tp)[1] if typing.get_origin(tp) is dict else None
    if len(parts) == 1:
        if _is_dataclass_type(child_tp) and isinstance(value, dict) and isinstance(node.get(name), dict):
            value = _merge(child_tp, node[name], value)
        node[name] = value
        return node
    child = node[name] if name in node else _default(tp, name)
    where = key[:-len(".".join(parts[1:])) - 1]
    if isinstance(child, str):  # the mapping as an earlier option gave it: `--task_defs.mine={kind: ...}`
        child = _flow(child, where) if child.strip() else {}
    if child is not None and not isinstance(child, dict):
        raise ConfigError(f"{key}: {where} is {child!r}, not a mapping with items")
    node[name] = _set(child_tp, child or {}, parts[1:], value, key)
    return node


def _without_none(tp: Any) -> Any:
    """`X` of an annotation `X | None`."""
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    return args[0] if typing.get_origin(tp) in (typing.Union, types.UnionType) and len(args) == 1 else tp


def _default(cls: Any, name: str) -> Any:
    """The default of `cls`'s mapping field `name` (`{}` for a section, whose `_build` fills in the defaults)."""
    fields = {f.name: f for f in dataclasses.fields(cls)} if _is_dataclass_type(cls) else {}
    if name not in fields or _is_dataclass_type(_without_none(_field_types(cls)[name])):
        return {}
    field = fields[name]
    return field.default if field.default_factory is dataclasses.MISSING else field.default_factory()


def replace(config: Config, overrides: dict[str, Any]) -> Config:
    """`config` with dotted-key `overrides` (typed as on the command line), not validated: `load_config` and
    `validate` check whole configs."""
    return _build(Config, _override(to_dict(config), overrides))


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> Config:
    """Defaults, then the YAML file (which may name a `base:` file it extends), then the overrides; validated."""
    data: dict[str, Any] = {}
    for layer in _yaml_layers(Path(path)) if path else []:
        data = _merge(Config, data, layer)
    config = _build(Config, _override(data, overrides or {}))
    validate(config)
    return config


def _yaml_layers(path: Path, seen: tuple[Path, ...] = ()) -> list[dict[str, Any]]:
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    if path.resolve() in seen:
        raise ConfigError(f"config file {path} extends itself through `base:`")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    if "resume" in data:
        raise ConfigError(f"{path}: `resume:` is no config key: --resume is a flag of train.py's command line (an "
                          "older run folder's config.yaml holds `resume: false`: delete that line)")
    base = data.pop("base", None)
    layers = _yaml_layers(path.parent / base, (*seen, path.resolve())) if base else []
    try:
        _build(Config, data)  # strict check with the file named in the message
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
    return [*layers, data]


# ------------------------------------------------------------------------------------------ the command line


def leaf_paths(cls=Config, prefix: str = "") -> dict[str, Any]:
    """`{"train.lr": float, ...}` for every settable field."""
    paths = {}
    for name, tp in _field_types(cls).items():
        if _is_dataclass_type(tp):
            paths.update(leaf_paths(tp, f"{prefix}{name}."))
        else:
            paths[f"{prefix}{name}"] = tp
    return paths


# The short forms of `--section.key`, each the README and `--help` document. A field added later never takes
# one by accident, so a suite file stays unambiguous.
ALIASES = {
    "tasks": "tasks", "out": "out",
    "checkpoint": "model.checkpoint", "dtype": "model.dtype", "freeze_encoder": "model.freeze_encoder",
    "hidden_dropout": "model.hidden_dropout", "attention_dropout": "model.attention_dropout",
    "remat": "model.remat",
    "sts_head": "heads.sts_head", "hidden_layers": "heads.hidden_layers", "activation": "heads.activation",
    "data_dir": "data.data_dir",
    "sampler": "train.sampler", "surgery": "train.surgery", "lr": "train.lr", "epochs": "train.epochs",
    "max_steps": "train.max_steps", "batch_size": "train.batch_size", "accumulation_steps": "train.accumulation_steps",
    "seed": "train.seed", "seeds": "train.seeds", "vmap_seeds": "train.vmap_seeds",
}
# Bare flags that stand for a setting: `--pcgrad` is `--train.surgery=pcgrad`, `--smart` is `--smart.enabled`.
SHORTHANDS = {**{name: ("train.surgery", name) for name in choices.SURGERIES if name != "none"},
              "smart": ("smart.enabled", "true")}


def resolve_key(name: str) -> str:
    """The dotted path of the setting `name` stands for: a field (`train.lr`), an `ALIASES` entry (`lr`), or an
    item of a mapping field (`train.loss_weights.sst`, `task_defs.mine.hf.dataset`: item names as written)."""
    key, paths = name.replace("-", "_"), leaf_paths()
    if key in paths:
        return key
    if key in ALIASES:
        return ALIASES[key]
    parts = name.split(".")
    for i in range(len(parts) - 1, 0, -1):
        field = ".".join(parts[:i]).replace("-", "_")
        if field in paths:
            return _item_key(name, field, parts[i:])
    # A key is `section.field` or `field`: what follows is an item, kept on each suggestion.
    n = 2 if _is_dataclass_type(_field_types(Config).get(parts[0].replace("-", "_"))) else 1
    head = ".".join(parts[:n]).replace("-", "_")
    raise ConfigError(f"unknown option --{name}{_suggestion(head, paths, name[len(head):])}")


def _item_key(name: str, field: str, items: list[str]) -> str:
    """The path of the item `items` of the mapping field `field` (and of a field of an item that is a dataclass)."""
    key, tp = field, leaf_paths()[field]
    for item in items:
        tp = _without_none(tp)
        if typing.get_origin(tp) is dict:
            key, tp = f"{key}.{item}", typing.get_args(tp)[1]
            continue
        fields = _field_types(tp) if _is_dataclass_type(tp) else {}
        if item.replace("-", "_") not in fields:
            what = f"has the fields {', '.join(fields)}" if fields else f"is a {_type_name(tp)} setting, without items"
            raise ConfigError(f"unknown option --{name}: {key} {what}")
        key, tp = f"{key}.{item.replace('-', '_')}", fields[item.replace("-", "_")]
    return key


def _path_type(key: str) -> Any:
    """The annotation of the setting at the dotted `key` (a `resolve_key` result)."""
    tp: Any = Config
    for part in key.split("."):
        tp = _without_none(tp)
        tp = _field_types(tp)[part] if _is_dataclass_type(tp) else typing.get_args(tp)[1]
    return tp


def _suggestion(name: str, paths: dict[str, Any], tail: str = "") -> str:
    """`; did you mean --smart.steps, --train.steps_per_epoch?`: the keys named `name`, then those whose name
    starts with it or contains it, then the closest spellings; each followed by `tail`."""
    leaf = name.rsplit(".", 1)[-1]
    keys = [*paths, *ALIASES]
    named = [k for k in paths if k.rsplit(".", 1)[-1] == leaf]
    starting = [k for k in keys if k.rsplit(".", 1)[-1].startswith(leaf)]
    containing = [k for k in keys if leaf in k.rsplit(".", 1)[-1]]
    close = difflib.get_close_matches(name, keys, n=3, cutoff=0.75)
    found = list(dict.fromkeys([*named, *starting, *containing, *close]))[:5]
    return f"; did you mean {', '.join('--' + k + tail for k in found)}?" if found else ""


def parse_command_line(argv: Sequence[str], flags: dict[str, type] | None = None
                       ) -> tuple[dict[str, Any], dict[str, Any]]:
    """`argv` as config overrides, and the calling script's own `flags` (`{"resume": bool, "config": str}`: no
    config keys, never saved): `['--sampler=roundrobin', '--tasks', 'sst', '--pcgrad', '--resume']` →
    `({"train.sampler": "roundrobin", "tasks": "sst", "train.surgery": "pcgrad"}, {"resume": True})`.

    An option is `--name=value` or `--name value`. A boolean one (a bool field, a shorthand, a bool flag) alone
    is true, and takes one of `BOOLEANS` (`--smart=false`, `--remat true`). Override values stay strings, typed
    when applied. Two options that give one setting different values are an error naming both.
    """
    flags = flags or {}
    overrides: dict[str, Any] = {}
    flag_values: dict[str, Any] = {}
    given: dict[str, tuple[str, Any]] = {}  # setting → (the first option that gave it, its typed value)
    i = 0
    while i < len(argv):
        option = argv[i]
        if not option.startswith("--"):
            raise ConfigError(f"unexpected argument {option!r}: options look like --key=value")
        name, eq, value = option[2:].partition("=")
        bare = name.replace("-", "_")
        if bare in flags:
            key, tp = bare, flags[bare]
        elif bare in SHORTHANDS:
            key, tp = SHORTHANDS[bare][0], bool
        else:
            key = resolve_key(name)
            tp = _path_type(key)
        if not eq:
            following = argv[i + 1] if i + 1 < len(argv) else "--"
            if not following.startswith("--") and (tp is not bool or following.lower() in BOOLEANS):
                value, option, i = following, f"{option} {following}", i + 1
            elif tp is not bool:
                raise ConfigError(f"--{name} needs a value")
            else:
                value = "true"
        if tp is bool and value.lower() not in BOOLEANS:
            raise ConfigError(f"--{name}: expected true or false, got {value!r}")
        if bare in flags:
            value = BOOLEANS[value.lower()] if tp is bool else value
        elif bare in SHORTHANDS:
            on = BOOLEANS[value.lower()]
            if not on and _path_type(key) is not bool:  # `--pcgrad` picks one of the choices of its key
                short = next((alias for alias, k in ALIASES.items() if k == key), key)
                raise ConfigError(f"{option}: --{name} can only turn its method on; to train without one, use "
                                  f"--{short}={CHOICES[key][0]}")
            value = SHORTHANDS[bare][1] if on else "false"
        elif tp is bool:
            value = "true" if BOOLEANS[value.lower()] else "false"
        typed = value if bare in flags else _typed(value, tp, key)
        if key in given and given[key][1] != typed:
            setting = f"--{name}" if bare in flags else key
            raise ConfigError(f"{given[key][0]} and {option} give {setting} two values: give one")
        given.setdefault(key, (option, typed))
        (flag_values if bare in flags else overrides)[key] = value
        i += 1
    return overrides, flag_values


def _typed(value: str, tp: Any, key: str) -> Any:
    """`value` as the setting will hold it, to tell two spellings of one value apart from two values."""
    try:
        return _coerce(value, tp, key)
    except ConfigError:  # said when the config is built, with the key
        return value


def parse_overrides(argv: Sequence[str]) -> dict[str, Any]:
    """The config overrides of `argv`, which holds nothing else (see `parse_command_line`)."""
    return parse_command_line(argv)[0]


# ------------------------------------------------------------------------------------------ --help


def _type_name(tp: Any) -> str:
    """An annotation as a user reads it: `int | list[int]`, `float | null`, `dict[str, int]`, `mapping`."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in args)
    if origin in (list, dict):
        return f"{origin.__name__}[{', '.join(_type_name(a) for a in args)}]"
    if tp is type(None):
        return "null"
    return "mapping" if _is_dataclass_type(tp) else tp.__name__


def _class_source(cls: Any) -> str:
    """The source of the top-level class `cls`: from its `class` line to the next top-level line. Read from the
    file, not through `inspect.getsource`, whose `ast.parse` of the module can fail on CPython 3.11.7
    ("AST constructor recursion depth mismatch") in a process that recursed deeply before."""
    lines = Path(inspect.getsourcefile(cls)).read_text().splitlines(keepends=True)
    start = next(i for i, line in enumerate(lines) if re.match(rf"class {cls.__name__}\b", line))
    end = next((i for i in range(start + 1, len(lines)) if lines[i][:1] not in ("", " ", "\n", "#")), len(lines))
    return "".join(lines[start:end])


@functools.cache
def _comments(cls: Any) -> dict[str, str]:
    """The comment on each field of the dataclass `cls`, read from its source: the one place a field is described."""
    comments: dict[str, str] = {}
    line: list[tokenize.TokenInfo] = []
    indent = None
    for token in tokenize.generate_tokens(io.StringIO(_class_source(cls)).readline):
        if token.type == tokenize.INDENT and indent is None:
            indent = len(token.string)  # the class body's
        if token.type == tokenize.NEWLINE:  # the end of a statement
            code = [t for t in line if t.type != tokenize.COMMENT]
            if len(code) > 1 and code[0].type == tokenize.NAME and code[0].start[1] == indent and code[1].string == ":":
                comments[code[0].string] = " ".join(t.string.lstrip("#").strip() for t in line
                                                    if t.type == tokenize.COMMENT and t.start[0] >= code[0].start[0])
            line = []
        elif token.type not in (tokenize.NL, tokenize.INDENT, tokenize.DEDENT):
            line.append(token)
    return comments


def describe(cls: Any, name: str) -> str:
    """What the field `name` of the dataclass `cls` is for: the comment on it, or for a stage's field that has
    none, its home field's (`StageConfig.lr`: `train.lr`'s)."""
    if cls is StageConfig and not _comments(cls).get(name):
        *section, field = STAGE_FIELDS[name].split(".")
        return describe(_field_types(Config)[section[0]] if section else Config, field)
    return _comments(cls).get(name, "")


def _show(value: Any) -> str:
    """A default as YAML writes it: `null`, `true`, `[32, 64, 128]`, `''`."""
    return yaml.safe_dump(value, default_flow_style=True, sort_keys=False, width=1000).removesuffix("...\n").strip()


def _rows(cls: Any, prefix: str, choices_of=lambda key: CHOICES.get(key, ())) -> list[tuple[str, str, str]]:
    """(key, type and default, description and allowed values) of each field of `cls` but sections."""
    rows, defaults = [], cls()
    for name, tp in _field_types(cls).items():
        if _is_dataclass_type(tp):  # a section of its own
            continue
        allowed = choices_of(prefix + name)
        rows.append((prefix + name, f"{_type_name(tp)} = {_show(getattr(defaults, name))}",
                     describe(cls, name) + (f" [{' | '.join(allowed)}]" if allowed else "")))
    return rows


def _help_sections() -> dict[str, tuple[str, list[tuple[str, str, str]]]]:
    """`--help`'s sections: name → (heading, rows)."""
    run = [row for row in _rows(Config, "") if row[0] not in ("stages", "task_defs")]
    sections = {"run": ("the run (--KEY=VALUE)", run)}
    for name, tp in _field_types(Config).items():
        if _is_dataclass_type(tp):
            sections[name] = (f"{describe(Config, name)} (--{name}.KEY=VALUE)", _rows(tp, f"{name}."))
    home = lambda key: STAGE_FIELDS.get(key.removeprefix("stages[k]."), "")  # noqa: E731  the inherited key
    stage_rows = [(key, type_default.replace("= null", f"= {home(key)}") if home(key) else type_default, text)
                  for key, type_default, text in _rows(StageConfig, "stages[k].", lambda k: CHOICES.get(home(k), ()))]
    sections["stages"] = (f"YAML only: a list of stages ({describe(Config, 'stages')}), each a mapping of these; "
                          "a field left out (null) takes the run's value, the key after =", stage_rows)
    sections["task_defs"] = (f"{describe(Config, 'task_defs')}: in YAML, or a field at a time, "
                             "--task_defs.NAME.FIELD=value", [*_rows(TaskDef, "task_defs.NAME."),
                                                              *_rows(HubConfig, "task_defs.NAME.hf.")])
    sections["aliases"] = ("short forms: --ALIAS=VALUE is --KEY=VALUE; a shorthand alone (or =true) is a setting", [
        *((f"--{alias.replace('_', '-')}", f"--{key}", "") for alias, key in ALIASES.items() if alias != key),
        *((f"--{name}", f"--{key}={value}", f"(--{name}=false: off)" if _path_type(key) is bool else "")
          for name, (key, value) in SHORTHANDS.items())])
    return sections


def help_text(section: str | None = None) -> str:
    """Every setting of a config: each key with its type, default, allowed values (`CHOICES`) and what it is for
    (the comment on its field), by section; then `ALIASES` and `SHORTHANDS`. `section` narrows it to one."""
    sections = _help_sections()
    if section is not None and section not in sections:
        raise ConfigError(f"--help {section}: no such section; sections: {', '.join(sections)}")
    lines = [] if section else [
        "Config keys: --KEY=VALUE or --KEY VALUE on the command line (--train.lr=3e-5), the same keys nested in a",
        "YAML file (train: {lr: 3.0e-5}). A boolean alone is true (--remat; --smart=false); a list is a,b,c or",
        "[a, b, c]; a mapping {name: value, ...}, or one item of it (--train.loss_weights.sst=2). Two values for",
        f"one key are an error. --help SECTION shows one section: {', '.join(sections)}.", ""]
    for name, (heading, rows) in sections.items():
        if section in (None, name):
            width = max(len(key) for key, _, _ in rows)
            types_width = min(max(len(t) for _, t, _ in rows), 36)
            lines += [f"{name}: {heading}", *(f"  {key:<{width}}  {t:<{types_width}}  {text}".rstrip()
                                              for key, t, text in rows), ""]
    return "\n".join(lines).rstrip() + "\n"


# ---------------------------------------------------------------------------------------------- stages


# Where each StageConfig field's inherited value lives in Config: `train.<field>` unless named here.
_STAGE_HOMES = {"tasks": "tasks", "freeze_encoder": "model.freeze_encoder", "freeze_pals": "model.freeze_pals",
                "smart": "smart.enabled", "supcon_weight": "losses.supcon_weight",
                "simcse_weight": "losses.simcse_weight"}
STAGE_FIELDS = {f.name: _STAGE_HOMES.get(f.name, f"train.{f.name}") for f in dataclasses.fields(StageConfig)
                if f.name not in ("name", "optimizer")}
# What a carried optimizer is made of: a stage may carry the one before's only if it resolves these the same.
CARRIED_SETTINGS = ("train.lr", "train.schedule", "train.warmup_ratio", "train.weight_decay",
                    "train.decay_norms_and_biases", "train.eps", "train.clip_norm", "model.freeze_encoder",
                    "model.freeze_pals")


def stage_names(config: Config) -> list[str]:
    return [stage.name or f"stage{k + 1}" for k, stage in enumerate(config.stages)]


def resolve_stage(config: Config, stage: StageConfig) -> Config:
    """The run's config with `stage`'s fields applied: a single-stage config describing that stage.

    `train.loss_weights` keeps the weights of the stage's tasks only. A stage of one task that leaves `surgery`
    unset trains without surgery: it has no two gradients to combine, and the methods would not all leave one be
    (`pcgrad_two_updates` makes two updates of it, `cagrad` scales it).
    """
    fields = {key: getattr(stage, field) for field, key in STAGE_FIELDS.items() if getattr(stage, field) is not None}
    if stage.surgery is None and len(stage.tasks if stage.tasks is not None else config.tasks) == 1:
        fields["train.surgery"] = "none"
    resolved = replace(dataclasses.replace(config, stages=[]), {**fields, "train.stage_cycles": 1})
    weights = {t: w for t, w in resolved.train.loss_weights.items() if t in resolved.tasks}
    return dataclasses.replace(resolved, train=dataclasses.replace(resolved.train, loss_weights=weights))


def get(config: Any, key: str) -> Any:
    node = config
    for part in key.split("."):
        node = getattr(node, part)
    return node


# ---------------------------------------------------------------------------------------------- the rules


CHOICES = {
    "model.dtype": choices.DTYPES,
    "model.attention": choices.ATTENTION_KERNELS,
    "heads.sst_pooling": choices.POOLINGS,
    "heads.pair_pooling": choices.POOLINGS,
    "heads.para_encoding": choices.PAIR_ENCODINGS,
    "heads.sts_encoding": choices.PAIR_ENCODINGS,
    "heads.sts_head": choices.STS_HEADS,
    "heads.activation": choices.HEAD_ACTIVATIONS,
    "heads.classifier_activation": ("none", *choices.HEAD_ACTIVATIONS),
    "heads.pal_function": choices.PAL_FUNCTIONS,
    "data.source": choices.DATA_SOURCES,
    "data.step_shapes": choices.STEP_SHAPES,
    "train.sampler": choices.SAMPLERS,
    "train.epoch_length": choices.EPOCH_LENGTHS,
    "train.loss_combination": choices.LOSS_COMBINATIONS,
    "train.schedule": choices.SCHEDULES,
    "train.updates": choices.UPDATES,
    "train.nonfinite": choices.NONFINITE,
    "train.gradvac_ema": choices.GRADVAC_EMAS,
    "train.surgery": choices.SURGERIES,
    "losses.sst": choices.CLASSIFICATION_LOSSES,
    "losses.sts": choices.STS_LOSSES,
    "smart.norm": choices.SMART_NORMS,
    "smart.ascent": choices.SMART_ASCENTS,
}


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def validate(config: Config) -> None:
    """Every rule the config alone decides, with the key's path in the message. Rules that need the run's
    facts (the device count, a file's columns) are checked where those are known, before anything is written."""
    _validate_settings(config)
    _validate_effects(config)
    _validate_distributed(config)
    _validate_stages(config)
    _validate_selection(config)
    _validate_sweep(config)


def sweep_points(config: Config) -> list[dict[str, float]]:
    """The grid of `config.sweep`: one `{key: value}` per point, the first key's values varying slowest, in the
    order given (`[{}]` without a sweep). Keys are dotted paths (an alias such as `lr` resolved)."""
    keys = [resolve_key(key) for key in config.sweep]
    return [dict(zip(keys, values)) for values in itertools.product(*config.sweep.values())]


# A weight of 0 switches its term off, and with it what the term needs (SupCon and SimCSE a second dropout view of
# the batch, the Bregman term its EMA teacher): the program of such a member is another one.
_SWITCHING_WEIGHTS = ("losses.supcon_weight", "losses.simcse_weight", "smart.weight", "smart.bregman_weight")


def _validate_sweep(config: Config) -> None:
    """A sweep varies only `choices.SWEEP_KEYS`, by values that leave the program's shapes and structure alone,
    and every point of its grid is a valid run of its own."""
    swept = {}
    for key, values in config.sweep.items():
        try:
            path = resolve_key(key)
        except ConfigError as e:
            raise ConfigError(f"sweep: {e}") from None
        _check(path not in swept.values(), f"sweep: {path} is given twice")
        swept[key] = path
        if path.endswith("_dropout") or path == "heads.dropout":
            raise ConfigError(f"sweep: {path} is a constant of the compiled model (and 0 takes attention to a kernel "
                              "without dropout), not a number one program can vary: train each rate as its own run "
                              "or suite row")
        _check(path in choices.SWEEP_KEYS,
               f"sweep: {path} changes the program's shapes or structure, or is not a number the step multiplies "
               f"by; a sweep varies {', '.join(choices.SWEEP_KEYS)}: train other values as runs or suite rows of "
               "their own")
        _check(bool(values) and len(set(values)) == len(values),
               f"sweep: {key}: expected a list of distinct numbers, got {values}")
        _check(not path.startswith("smart.") or config.smart.enabled or any(st.smart for st in config.stages),
               f"sweep: {path}: SMART is off in every stage of the run, so no member would feel it: add --smart")
        _check(path not in _SWITCHING_WEIGHTS or all(v > 0 for v in values),
               f"sweep: {key}: {values} holds 0 or less; a weight of 0 switches its term off (SupCon and SimCSE "
               "their second dropout view, the Bregman term its teacher), which makes another program: sweep weights "
               "above 0, and train 0 as a run of its own")
    for k, (name, stage) in enumerate(zip(stage_names(config), config.stages)):
        set_here = [path for field, path in STAGE_FIELDS.items() if getattr(stage, field) is not None
                    and path in swept.values()]
        _check(not set_here, f"sweep: stages[{k}] ({name}) sets {', '.join(set_here)}, which the sweep varies: the "
                             "stage's value would overrule every point's; sweep a run without that stage field")
    for point in sweep_points(config) if config.sweep else []:
        try:
            validate(replace(config, {**point, "sweep": {}}))
        except ConfigError as e:
            shown = ", ".join(f"{key}={value:g}" for key, value in point.items())
            raise ConfigError(f"sweep point {shown}: {e}") from None


def _validate_selection(config: Config) -> None:
    """`train.select_by` against the whole run's tasks (a stage evaluates every task of the run)."""
    scored = [t.name for t in config.run_tasks if t.metric is not None]
    select_by = config.train.select_by
    _check(select_by in ("overall", "mean", *scored),
           f"train.select_by is {select_by!r}; allowed: overall, mean, or a scored task of the run: {', '.join(scored)}")


def _validate_settings(config: Config) -> None:
    """The rules of a single-stage run, which every resolved stage passes too."""
    for key, allowed in CHOICES.items():
        _check(get(config, key) in allowed, f"{key} is {get(config, key)!r}; allowed: {', '.join(allowed)}")
    for name, definition in config.task_defs.items():
        _validate_task_def(name, definition)
    unknown = [t for t in config.tasks if t not in config.known_tasks]
    _check(bool(config.tasks) and not unknown,
           f"tasks {config.tasks} must be a non-empty subset of the known tasks: {', '.join(config.known_tasks)}"
           + (" (a task of your own is defined under task_defs)" if unknown else ""))
    _check(len(set(config.tasks)) == len(config.tasks), f"tasks {config.tasks} names a task twice")
    _validate_model_and_data(config)
    _validate_heads(config)
    _validate_losses(config)
    _validate_smart(config)
    _validate_train(config)


def _validate_effects(config: Config) -> None:
    """A method switched on that no task of the run would feel is an error, not a silent no-op. The run's tasks
    decide: a stage without the tasks a method acts on trains without it."""
    tasks, losses = config.run_tasks, config.losses
    _check(not config.smart.enabled or any(t.divergence is not None for t in tasks),
           f"smart.enabled: SMART smooths a task's prediction, and none of the run's tasks {config.tasks} has one: "
           "add such a task or drop --smart")
    _check(losses.supcon_weight == 0 or any(losses.supcon(t) for t in tasks),
           f"losses.supcon_weight {losses.supcon_weight}: the supervised contrastive term acts on softmax "
           f"classification tasks, and the run's tasks {config.tasks} hold none: add one or set it to 0")
    _check(losses.simcse_weight == 0 or bool(set(losses.simcse_tasks) & set(config.tasks)),
           f"losses.simcse_weight {losses.simcse_weight}: none of losses.simcse_tasks {losses.simcse_tasks} is a task "
           f"of the run {config.tasks}: name one in losses.simcse_tasks or set the weight to 0")


TASK_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]*")
# Names the model's params or the dev metrics already use: a task of that name would collide with them.
RESERVED_NAMES = ("bert", "dropout", "head", "pal", "overall", "mean")


def _validate_task_def(name: str, d: TaskDef) -> None:
    """One `task_defs` entry, every message naming the task and the field."""
    where = f"task_defs.{name}"
    _check(name not in task_registry.TASKS, f"{where}: {name!r} is a built-in task; give yours another name")
    _check(bool(TASK_NAME.fullmatch(name)), f"{where}: a task name must start with a letter and hold only letters, "
                                            "digits, '_' and '-' (it names files)")
    _check(name not in RESERVED_NAMES and not name.startswith("pal_"),
           f"{where}: {name!r} is taken by the model's parameters or the dev metrics ({', '.join(RESERVED_NAMES)}, "
           "pal_*); give the task another name")
    _check(d.kind in choices.TASK_KINDS, f"{where}.kind " + ("is missing" if not d.kind else f"is {d.kind!r}")
           + f"; allowed: {', '.join(choices.TASK_KINDS)}")
    _check(len(d.text) in (1, 2) and all(c.strip() for c in d.text) and len(set(d.text)) == len(d.text),
           f"{where}.text must name one column (a single sentence) or two different ones (a pair), got {d.text}")
    _check(bool(d.label.strip()), f"{where}.label is missing: the label column's name")
    _check(d.label not in d.text and "id" not in (*d.text, d.label),
           f"{where}.label {d.label!r} and text {d.text} must be different columns, none of them 'id' (the "
           "optional column that keys predictions)")
    _check(set(d.files) <= set(task_registry.SPLITS) and all(f.strip() for f in d.files.values()),
           f"{where}.files {d.files}: the keys are splits ({', '.join(task_registry.SPLITS)}), the values file names")
    _check("train" in d.files or (d.hf is not None and "train" in d.hf.splits),
           f"{where}.files needs a train file (dev and test are optional), or the task an hf source with a train "
           "split")
    if d.kind == "classification":
        _check(d.num_classes >= 2, f"{where}.num_classes " + ("is missing" if not d.num_classes else
                                                              f"is {d.num_classes}") + ": a classification task "
               "needs at least 2 classes (labels 0..num_classes-1)")
        _check(d.label_range is None, f"{where}.label_range is for regression tasks; a classification task's labels "
                                      "are 0..num_classes-1")
        _check(not d.binary or d.num_classes == 2, f"{where}.binary needs num_classes 2, got {d.num_classes}")
    else:
        _check(d.label_range is not None and len(d.label_range) == 2 and d.label_range[0] < d.label_range[1],
               f"{where}.label_range must be [lo, hi] with lo < hi for a regression task, got {d.label_range}")
        _check(not d.num_classes and not d.binary, f"{where}.num_classes and binary are for classification tasks")
    _check(d.encoding is None or (len(d.text) == 2 and d.encoding in choices.PAIR_ENCODINGS),
           f"{where}.encoding {d.encoding!r}: only a pair task (two text columns) has one, cross or bi")
    _check(len(d.delimiter) == 1 and d.delimiter not in '"\r\n',
           f"{where}.delimiter must be one character other than a quote or a line break, got {d.delimiter!r}")
    if d.hf is not None:
        _check(bool(d.hf.dataset.strip()), f"{where}.hf.dataset is missing: the Hugging Face dataset's name")
        _check(set(d.hf.splits) <= set(task_registry.SPLITS),
               f"{where}.hf.splits {d.hf.splits}: the keys are our splits ({', '.join(task_registry.SPLITS)}), the "
               "values the dataset's")
        stray = [c for c in d.hf.columns if c not in (*d.text, d.label)]
        _check(not stray, f"{where}.hf.columns maps {stray}, which are not the task's columns {[*d.text, d.label]}")


def _validate_distributed(config: Config) -> None:
    d = config.distributed
    explicit = (d.coordinator_address, d.num_processes, d.process_id)
    _check(not (d.auto and any(v is not None for v in explicit)),
           "distributed.auto finds the processes itself: leave distributed.coordinator_address, num_processes and "
           "process_id unset with it")
    _check(all(v is None for v in explicit) or all(v is not None for v in explicit),
           "distributed.coordinator_address, num_processes and process_id go together: give all three (or "
           "distributed.auto: true)")
    _check(d.num_processes is None or (d.num_processes >= 1 and 0 <= d.process_id < d.num_processes),
           f"distributed.process_id must be in 0..num_processes-1, got {d.process_id} of {d.num_processes}")


def _validate_model_and_data(config: Config) -> None:
    _check(not config.model.freeze_pals or config.heads.pal_size > 0,
           "model.freeze_pals: the run has no projected attention layers to freeze (heads.pal_size is 0)")
    for key in ("model.hidden_dropout", "model.attention_dropout", "heads.dropout"):
        value = get(config, key)
        _check(value is None or 0.0 <= value < 1.0, f"{key} must be in [0, 1), got {value}")
    data = config.data
    _check(data.max_length > 0, f"data.max_length must be positive, got {data.max_length}")
    _check(bool(data.buckets) and min(data.buckets) > 0 and max(data.buckets) == data.max_length,
           f"data.buckets {data.buckets} must be positive lengths, data.max_length {data.max_length} the largest "
           "(every example fits one)")
    hubless = [t.name for t in config.run_tasks if t.hub is None]
    _check(data.source != "hf" or not hubless,
           f"data.source 'hf' reads every task from its Hugging Face source, and {', '.join(hubless)} has none: use "
           "data.source auto or local, or give a task_defs entry an hf: source")
    for task, files in data.files.items():
        _check(task in config.known_tasks, f"data.files.{task}: {task!r} is not a task; known: "
                                           f"{', '.join(config.known_tasks)}")
        lacking = [split for split in files if not config.task(task).has_split(split)]
        _check(not lacking, f"data.files.{task}: the task has no {', '.join(lacking)} split")


def _validate_heads(config: Config) -> None:
    heads = config.heads
    _check(heads.hidden_layers >= 0, f"heads.hidden_layers must be non-negative, got {heads.hidden_layers}")
    for name, layers in heads.task_hidden_layers.items():
        task = config.task(name) if name in config.known_tasks else None
        if task is None or task.head:
            known = [config.task(t) for t in config.known_tasks]
            owners = [t.name for t in known if not t.head]
            shared = ", ".join(f"{t.name} trains the {t.head} head" for t in known if t.head)
            raise ConfigError(f"heads.task_hidden_layers: {name!r} is not a task with a head of its own ({shared}); "
                              f"known: {', '.join(owners)}")
        _check(layers >= 0, f"heads.task_hidden_layers.{name} must be non-negative, got {layers}")
    _check(heads.hidden_size is None or heads.hidden_size >= 1,
           f"heads.hidden_size must be positive or null, got {heads.hidden_size}")
    _check(heads.cosine_scale > 0, f"heads.cosine_scale must be positive, got {heads.cosine_scale}")
    _check(heads.sts_encoding == "bi" or heads.sts_head == "linear",
           "heads.sts_head must be 'linear' when heads.sts_encoding is 'cross' (no sentence pair to take a cosine of)")
    _check(heads.para_prompt is None or (bool(heads.para_prompt.strip()) and heads.para_encoding == "cross"),
           f"heads.para_prompt {heads.para_prompt!r} must be non-blank text, and needs heads.para_encoding 'cross' "
           "(it is placed before the pair's first sentence)")
    _check(heads.pal_heads >= 1, f"heads.pal_heads must be positive, got {heads.pal_heads}")
    _check(heads.pal_size >= 0 and heads.pal_size % heads.pal_heads == 0,
           f"heads.pal_size {heads.pal_size} is neither 0 (no PALs) nor a positive multiple of heads.pal_heads "
           f"{heads.pal_heads}")


def _validate_losses(config: Config) -> None:
    losses, heads = config.losses, config.heads
    _check(0.0 <= losses.label_smoothing < 1.0, f"losses.label_smoothing must be in [0, 1), got {losses.label_smoothing}")
    _check(losses.ordinal_alpha > 0, f"losses.ordinal_alpha must be positive, got {losses.ordinal_alpha}")
    for key in ("losses.supcon_weight", "losses.simcse_weight"):
        _check(get(config, key) >= 0, f"{key} must be non-negative, got {get(config, key)}")
    for key in ("losses.supcon_temperature", "losses.simcse_temperature"):
        _check(get(config, key) > 0, f"{key} must be positive, got {get(config, key)}")
    unknown = [t for t in losses.simcse_tasks if t not in config.known_tasks]
    _check(not unknown, f"losses.simcse_tasks {unknown} are not tasks; known: {', '.join(config.known_tasks)}")
    contrastive = [t for t in losses.simcse_tasks if config.task(t).kind == "contrastive"]
    _check(not contrastive, f"losses.simcse_tasks cannot include {', '.join(contrastive)}: its triplets are trained "
                            "with supervised SimCSE already")
    _check(losses.sts != "cosine_embedding" or (heads.sts_encoding == "bi" and heads.sts_head in choices.COSINE_HEADS),
           f"losses.sts 'cosine_embedding' reads the cosine of the pair's embeddings: it needs heads.sts_encoding "
           f"'bi' and heads.sts_head 'cosine' or 'sigmoid_cosine', not {heads.sts_encoding!r} and "
           f"{heads.sts_head!r} (whose parameters it would not train)")
    lo, hi = config.task("sts").score_range
    _check(lo <= losses.cosine_embedding_threshold <= hi,
           f"losses.cosine_embedding_threshold must be on the {lo:g}-{hi:g} similarity scale, got "
           f"{losses.cosine_embedding_threshold}")
    _check(-1.0 <= losses.cosine_embedding_margin <= 1.0,
           f"losses.cosine_embedding_margin must be in [-1, 1], got {losses.cosine_embedding_margin}")


def _validate_smart(config: Config) -> None:
    smart = config.smart
    for name in ("weight", "noise_std", "step_size", "epsilon", "bregman_weight", "teacher_momentum"):
        value = getattr(smart, name)
        _check(0 <= value < math.inf, f"smart.{name} must be a finite number >= 0, got {value!r}")
    _check(smart.teacher_momentum <= 1, f"smart.teacher_momentum must be in [0, 1], got {smart.teacher_momentum!r}")
    _check(smart.steps >= 0, f"smart.steps must be an integer >= 0, got {smart.steps!r}")
    _check(smart.samples >= 1, f"smart.samples must be an integer >= 1, got {smart.samples!r}")
    # A frozen encoder's output is a constant to the heads unless trainable PALs read it (`heads.MultitaskBert`):
    # no gradient reaches the perturbed embeddings then, and every ascent step would leave δ where it started.
    stopped = config.model.freeze_encoder and (config.heads.pal_size == 0 or config.model.freeze_pals)
    _check(not (smart.enabled and smart.steps > 0 and stopped),
           f"smart.steps {smart.steps}: with the encoder frozen and no PALs trained, no gradient reaches the "
           "perturbed embeddings and the ascent cannot move the perturbation: set smart.steps 0 (the random "
           "perturbation alone), train the encoder, or switch SMART off in this stage (smart: false)")
    smoothable = [t.name for t in config.run_tasks if t.divergence is not None]
    _check(smart.tasks is None or (bool(smart.tasks) and set(smart.tasks) <= set(smoothable)),
           f"smart.tasks {smart.tasks} must be a non-empty subset of the run's tasks with a prediction to smooth: "
           f"{', '.join(smoothable)}")


def _validate_train(config: Config) -> None:
    t = config.train
    _check(t.epochs >= 1, f"train.epochs must be at least 1, got {t.epochs}")
    _check(t.epoch_length != "steps" or bool(t.steps_per_epoch), "train.epoch_length 'steps' needs train.steps_per_epoch")
    _check(t.steps_per_epoch is None or t.steps_per_epoch >= 1,
           f"train.steps_per_epoch must be positive or null, got {t.steps_per_epoch}")
    _check(t.max_steps is None or t.max_steps >= 0, f"train.max_steps must be non-negative or null, got {t.max_steps}")
    seeds = parse_seeds(t.seeds, "train.seeds", t.seed)
    _check(not t.vmap_seeds or len(seeds) > 1, "train.vmap_seeds vmaps a run's seeds in one program, and this run "
                                              "trains one seed: train more (--seeds 2) or drop --vmap-seeds")
    _check(t.surgery == "none" or len(config.tasks) > 1,
           f"train.surgery {t.surgery!r} combines the gradients of two or more tasks, and {config.tasks[0]} trains "
           "alone: train more tasks, or surgery none (--surgery=none)")
    _check(t.seed >= 0 and (t.data_seed is None or t.data_seed >= 0),
           f"train.seed and train.data_seed must be non-negative, got {t.seed} and {t.data_seed}")
    _check(t.batch_size >= 1 and t.eval_batch_size >= 1,
           f"train.batch_size and train.eval_batch_size must be positive, got {t.batch_size} and {t.eval_batch_size}")
    _check(t.accumulation_steps >= 1 and t.batch_size % t.accumulation_steps == 0,
           f"train.accumulation_steps {t.accumulation_steps} must be a positive divisor of train.batch_size "
           f"{t.batch_size} (every micro-batch has the same size)")
    _check(t.accumulation_steps == 1 or t.loss_combination != "balanced",
           "train.loss_combination 'balanced' weighs each task by the whole batch's losses, which no micro-batch "
           "sees: it needs train.accumulation_steps 1")
    _check(t.surgery == "none" or t.loss_combination in ("sum", "mean"),
           f"train.surgery {t.surgery!r} combines raw task gradients: train.loss_combination must be sum or mean, "
           f"not {t.loss_combination!r}")
    _check(t.updates == "joint" or (t.surgery == "none" and t.loss_combination in ("sum", "weights")),
           f"train.updates 'per_task' applies each task's own loss: it needs train.surgery none (got {t.surgery!r}) "
           f"and train.loss_combination sum or weights (got {t.loss_combination!r})")
    _check(t.loss_combination != "weights" or set(t.loss_weights) == set(config.tasks),
           f"train.loss_weights must give a weight for each task {config.tasks}, got {t.loss_weights}")
    _check(0 <= t.gradvac_beta <= 1, f"train.gradvac_beta must be in [0, 1], got {t.gradvac_beta}")
    _check(0 <= t.warmup_ratio <= 1, f"train.warmup_ratio must be in [0, 1], got {t.warmup_ratio}")
    _check(t.lr >= 0 and t.weight_decay >= 0 and t.eps > 0,
           f"train.lr and train.weight_decay must be non-negative and train.eps positive, got {t.lr}, "
           f"{t.weight_decay} and {t.eps}")
    _check(t.clip_norm is None or t.clip_norm > 0, f"train.clip_norm must be positive or null, got {t.clip_norm}")
    _check(t.max_nonfinite >= 1, f"train.max_nonfinite must be at least 1, got {t.max_nonfinite}")
    _check(t.compilation_cache is None or bool(t.compilation_cache.strip()),
           "train.compilation_cache must name a folder, or be auto (the user's cache folder) or null (no cache)")
    _check(t.log_every >= 1 and t.checkpoint_every >= 0 and t.group_by_length >= 0,
           f"train.log_every must be positive, train.checkpoint_every and train.group_by_length non-negative, got "
           f"{t.log_every}, {t.checkpoint_every} and {t.group_by_length}")


def _validate_stages(config: Config) -> None:
    """Each stage's own fields, then the stage as the single-stage run it resolves to."""
    cycles = config.train.stage_cycles
    _check(cycles >= 1, f"train.stage_cycles must be at least 1, got {cycles}")
    _check(cycles == 1 or bool(config.stages),
           f"train.stage_cycles repeats the list of stages: without stages it must be 1, got {cycles}")
    names = stage_names(config)
    _check(len(set(names)) == len(names), f"stage names must differ from each other, got {names}")
    for k, (name, stage) in enumerate(zip(names, config.stages)):
        for field, key in STAGE_FIELDS.items():
            value = getattr(stage, field)
            _check(value is None or key not in CHOICES or value in CHOICES[key],
                   f"stages[{k}].{field} is {value!r}; allowed: {', '.join(CHOICES.get(key, ()))}")
        _check(stage.tasks is None or (bool(stage.tasks) and set(stage.tasks) <= set(config.tasks)),
               f"stages[{k}].tasks {stage.tasks} must be a non-empty subset of the run's tasks {config.tasks} (the "
               "model has one head per run task)")
        _check(stage.optimizer in choices.OPTIMIZER_CARRIES,
               f"stages[{k}].optimizer is {stage.optimizer!r}; allowed: {', '.join(choices.OPTIMIZER_CARRIES)}")
        if stage.optimizer == "carry":
            _check(k > 0 or cycles > 1, "stages[0].optimizer carry: the run's first stage has no stage before it "
                                        "whose optimizer it could carry (with train.stage_cycles > 1, each later "
                                        "cycle's first stage carries the last stage's)")
            before = config.stages[k - 1]  # stages[-1] for the first: the stage before it in the next cycle
            differ = [key for key in CARRIED_SETTINGS
                      if get(resolve_stage(config, stage), key) != get(resolve_stage(config, before), key)]
            _check(not differ, f"stages[{k}].optimizer carry: the optimizer it carries is another one, "
                               f"{', '.join(differ)} differ from the stage before's; give them the same values or "
                               "start a fresh optimizer")
        try:
            _validate_settings(resolve_stage(config, stage))
        except ConfigError as e:
            raise ConfigError(f"stages[{k}] ({name}): {e}") from None
