"""Typed run configuration: dataclasses filled from YAML files and `--key=value` overrides, strictly.

An unknown key or a value of the wrong type is an error that names it (`stages[1].lr` inside a list).
Overrides address a field by its dotted path (`--train.lr=3e-5`) or, when the name is unique across sections,
by its bare name (`--lr=3e-5`, `--sampler=roundrobin`); a bare `--flag` sets a boolean to true. A run's
`stages` are set in YAML.
"""

from __future__ import annotations

import copy
import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Sequence

import yaml

from jaxbert.heads import HEAD_ACTIVATIONS, SHARED_HEADS
from jaxbert.modeling import ATTENTION_KERNELS, PAL_FUNCTIONS
from jaxbert.smart import ASCENTS, NORMS, TASK_KIND as SMART_TASK_KIND, SmartConfig
from jaxbert.train_step import SURGERIES, UPDATES


@dataclasses.dataclass
class ModelConfig:
    checkpoint: str = "checkpoints/bert-base-uncased"  # converted folder, Hugging Face folder or Hub id
    dtype: str = "float32"  # compute dtype: float32 | bfloat16 (params stay float32)
    freeze_encoder: bool = False  # train the heads only
    hidden_dropout: float | None = None  # override the checkpoint's dropout rates
    attention_dropout: float | None = None  # 0 lets training use the fused attention kernel too
    attention: str = "auto"  # auto | xla | cudnn: kernel of dropout-free attention (auto: cuDNN on GPU in bf16)
    remat: bool = False  # recompute each encoder layer's activations in the backward pass (less memory)


@dataclasses.dataclass
class HeadsConfig:
    dropout: float = 0.1
    sst_pooling: str = "cls"  # cls | pooler | mean | max
    pair_pooling: str = "cls"
    para_encoding: str = "cross"  # cross | bi
    sts_encoding: str = "bi"  # bi | cross
    sts_head: str = "cosine"  # cosine | sigmoid_cosine | cosine_concat | linear (the only choice with cross encoding)
    cosine_scale: float = 20.0  # sigmoid_cosine: 5·sigmoid(scale·cos(u, v)), 20 in report 002
    hidden_layers: int = 0  # MLP hidden layers before each head's output layer (0: linear heads)
    task_hidden_layers: dict[str, int] = dataclasses.field(default_factory=dict)  # per-task overrides: {sts: 1}
    hidden_size: int | None = None  # their width (None: the encoder's hidden size)
    activation: str = "relu"  # relu | gelu | tanh | squared_relu
    classifier_activation: str = "none"  # none or one of those, on the sentiment logits (report 001: squared_relu)
    para_prompt: str | None = None  # text placed before a cross-encoded paraphrase pair
    pal_size: int = 0  # projected attention layers: each task's low-rank attention width (0: off; 204 in the paper)
    pal_heads: int = 12
    pal_function: str = "attention"  # attention | identity: g of TS(h) = V^D g(V^E h) (report 004: identity)


@dataclasses.dataclass
class DataConfig:
    data_dir: str = "data"
    source: str = "local"  # local | hf (Hugging Face datasets: SST-5, GLUE QQP, STS-B)
    files: dict[str, dict[str, str]] = dataclasses.field(default_factory=dict)  # {sst: {train: path}} overrides
    max_length: int = 128
    buckets: list[int] = dataclasses.field(default_factory=lambda: [32, 64, 128])
    cache_dir: str | None = "data/.cache"


@dataclasses.dataclass
class TrainConfig:
    sampler: str = "roundrobin"  # roundrobin | sequential | proportional | annealed
    epoch_length: str = "min"  # roundrobin: min | max | steps
    steps_per_epoch: int | None = None
    loss_combination: str = "sum"  # sum | mean | weights | balanced
    loss_weights: dict[str, float] = dataclasses.field(default_factory=dict)
    surgery: str = "none"  # none | pcgrad | pcgrad_two_updates | gradvac | cagrad | mgda | imtl_g (`--pcgrad`, ...)
    gradvac_beta: float = 0.01  # EMA rate of GradVac's cosine targets
    updates: str = "joint"  # joint: one optimizer update per step | per_task: one per task's loss, in turn
    epochs: int = 10
    max_steps: int | None = None  # caps the whole run, the LR schedule included
    batch_size: int = 32  # per task, across all devices
    accumulation_steps: int = 1  # micro-batches per optimizer step: each task's batch is split into this many
    eval_batch_size: int = 128
    lr: float = 2e-5
    schedule: str = "constant"  # constant | linear (warm-up then linear decay)
    warmup_ratio: float = 0.0
    weight_decay: float = 0.0
    clip_norm: float | None = None
    eps: float = 1e-6
    seed: int = 0  # head initialization and dropout; the batch order too unless `data_seed`
    seeds: int = 1  # train seeds seed, seed+1, ..., seed+N-1, each into <out>/seed<k>/ (`--seeds N`)
    vmap_seeds: bool = False  # train the seeds in one program, vmapped over a seed axis (`--vmap-seeds`)
    data_seed: int | None = None  # seed of the batch order (None: `seed`; in a vmapped run the first seed's)
    group_by_length: int = 0  # sort each run of N batches by length so batches pad little (0: off)
    checkpoint_every: int = 0  # also checkpoint every N steps inside an epoch (0: at epoch ends only)
    log_every: int = 10
    stage_cycles: int = 1  # run the whole list of `stages` this many times


@dataclasses.dataclass
class LossConfig:
    sst: str = "ce"  # ce | ordinal (the ordinal log loss, for any sentiment task)
    label_smoothing: float = 0.0  # for ce
    ordinal_alpha: float = 1.0  # OLL's distance exponent
    supcon_weight: float = 0.0  # supervised contrastive loss on two dropout views of each sentiment batch
    supcon_temperature: float = 0.07
    simcse_weight: float = 0.0  # unsupervised SimCSE on two dropout views of `simcse_tasks`' sentences
    simcse_tasks: list[str] = dataclasses.field(default_factory=lambda: ["sst"])
    simcse_temperature: float = 0.05  # also nli's supervised SimCSE
    sts: str = "mse"  # mse | cosine_embedding (on the pair's embeddings, report 002)
    cosine_embedding_threshold: float = 2.5  # an STS pair scored at least this is a positive
    cosine_embedding_margin: float = 0.0  # negatives cost max(0, cos − margin)


@dataclasses.dataclass
class SmartOptions:
    enabled: bool = False  # `--smart`
    weight: float = 1.0  # λ_s
    noise_std: float = 1e-5  # σ
    step_size: float = 1e-3  # η
    epsilon: float = 1e-5  # ε
    steps: int = 1  # K (0: the random start alone)
    samples: int = 1  # random starts, the largest divergence kept per example (report 001: 7)
    norm: str = "inf"  # inf | l2
    ascent: str = "projected"  # projected (the paper) | normalized (smart-pytorch: ε guards a division)
    bregman_weight: float = 1.0  # μ (0: no proximal term and no teacher)
    teacher_momentum: float = 0.99  # β of the EMA teacher
    tasks: list[str] | None = None  # the tasks regularized (None: every one with a prediction; report 001: [sst])


@dataclasses.dataclass
class StageConfig:
    """One stage of a staged run. Every `None` field inherits the run's value: `tasks` the top-level list,
    `freeze_encoder` `model.freeze_encoder`, the others the `train` field of the same name."""

    name: str = ""  # "" names it stage<k>, k its 1-based position in `stages`
    tasks: list[str] | None = None  # a subset of the run's tasks (the model has one head per run task)
    sampler: str | None = None
    epoch_length: str | None = None
    steps_per_epoch: int | None = None
    epochs: int | None = None
    max_steps: int | None = None  # caps this stage, its LR schedule included
    lr: float | None = None
    batch_size: int | None = None
    freeze_encoder: bool | None = None
    loss_combination: str | None = None
    surgery: str | None = None


@dataclasses.dataclass
class Config:
    tasks: list[str] = dataclasses.field(default_factory=lambda: ["sst", "para", "sts"])
    out: str = "runs/default"
    resume: bool = False
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    heads: HeadsConfig = dataclasses.field(default_factory=HeadsConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    losses: LossConfig = dataclasses.field(default_factory=LossConfig)
    smart: SmartOptions = dataclasses.field(default_factory=SmartOptions)
    stages: list[StageConfig] = dataclasses.field(default_factory=list)  # empty: one stage, the run's own settings


class ConfigError(ValueError):
    pass


def smart_options(options: SmartOptions) -> dict[str, Any]:
    """The `SmartConfig` fields of the `smart` section: all but the switch and the choice of tasks."""
    return {k: v for k, v in dataclasses.asdict(options).items() if k not in ("enabled", "tasks")}


def _is_dataclass_type(tp) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Checks `value` against the annotation `tp`, converting strings from the command line."""
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
            value = [v for v in value.split(",") if v]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return {_coerce(k, args[0], key): _coerce(v, args[1], f"{key}.{k}") for k, v in value.items()}
    if _is_dataclass_type(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping of {tp.__name__} fields, got {value!r}")
        obj = tp()
        _apply(obj, value, f"{key}.")
        return obj
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
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


def _field_types(cls) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _apply(obj, updates: dict[str, Any], prefix: str = "") -> None:
    """Sets nested fields of `obj` from a (possibly nested) mapping, strictly."""
    types_ = _field_types(type(obj))
    for name, value in updates.items():
        key = f"{prefix}{name}"
        if name not in types_:
            raise ConfigError(f"unknown config key {key!r}; known keys here: {', '.join(types_)}")
        tp = types_[name]
        if _is_dataclass_type(tp):
            if not isinstance(value, dict):
                raise ConfigError(f"{key}: expected a mapping of {tp.__name__} fields, got {value!r}")
            _apply(getattr(obj, name), value, f"{key}.")
        else:
            setattr(obj, name, _coerce(value, tp, key))


def leaf_paths(cls=Config, prefix: str = "") -> dict[str, Any]:
    """`{"train.lr": float, ...}` for every settable field."""
    paths = {}
    for name, tp in _field_types(cls).items():
        if _is_dataclass_type(tp):
            paths.update(leaf_paths(tp, f"{prefix}{name}."))
        else:
            paths[f"{prefix}{name}"] = tp
    return paths


def resolve_key(name: str) -> str:
    """Maps `lr` or `train.lr` to the dotted path of exactly one field."""
    name = name.replace("-", "_")
    paths = leaf_paths()
    if name in paths:
        return name
    matches = [p for p in paths if p.rsplit(".", 1)[-1] == name]
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise ConfigError(f"--{name} is ambiguous: say one of {', '.join('--' + m for m in matches)}")
    raise ConfigError(f"unknown option --{name}")


def parse_overrides(argv: Sequence[str]) -> dict[str, Any]:
    """`['--sampler=roundrobin', '--tasks', 'sst', '--pcgrad']` → `{"train.sampler": "roundrobin", ...}`.

    Values stay strings here; they are typed when applied.
    """
    overrides, i = {}, 0
    paths = leaf_paths()
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("--"):
            raise ConfigError(f"unexpected argument {arg!r}: options look like --key=value")
        name, eq, value = arg[2:].partition("=")
        if not eq and name.replace("-", "_") in SHORTHANDS:
            key, value = SHORTHANDS[name.replace("-", "_")]
            overrides[key] = value
            i += 1
            continue
        key = resolve_key(name)
        if not eq:
            takes_value = paths[key] is not bool
            if i + 1 < len(argv) and not argv[i + 1].startswith("--") and (
                    takes_value or argv[i + 1].lower() in ("true", "false")):
                value, i = argv[i + 1], i + 1
            elif takes_value:
                raise ConfigError(f"--{name} needs a value")
            else:
                value = "true"
        overrides[key] = value
        i += 1
    return overrides


def nest(flat: dict[str, Any]) -> dict[str, Any]:
    nested: dict[str, Any] = {}
    for key, value in flat.items():
        *parents, leaf = key.split(".")
        node = nested
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return nested


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> Config:
    """Defaults, then the YAML file (which may name a `base:` file it extends), then the overrides."""
    config = Config()
    for layer in _yaml_layers(Path(path)) if path else []:
        _apply(config, layer)
    _apply(config, nest(overrides or {}))
    validate(config)
    return config


def _yaml_layers(path: Path, seen: tuple[Path, ...] = ()) -> list[dict[str, Any]]:
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    if path.resolve() in seen:
        raise ConfigError(f"config file {path} extends itself through `base:`")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    base = data.pop("base", None)
    layers = _yaml_layers(path.parent / base, (*seen, path.resolve())) if base else []
    try:
        _apply(Config(), data)  # strict check with the file named in the message
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
    return [*layers, data]


CHOICES = {
    "model.dtype": ("float32", "bfloat16"),
    "model.attention": ATTENTION_KERNELS,
    "heads.sst_pooling": ("cls", "pooler", "mean", "max"),
    "heads.pair_pooling": ("cls", "pooler", "mean", "max"),
    "heads.para_encoding": ("cross", "bi"),
    "heads.sts_encoding": ("bi", "cross"),
    "heads.sts_head": ("cosine", "sigmoid_cosine", "cosine_concat", "linear"),
    "heads.activation": tuple(HEAD_ACTIVATIONS),
    "heads.classifier_activation": ("none", *HEAD_ACTIVATIONS),
    "heads.pal_function": PAL_FUNCTIONS,
    "data.source": ("local", "hf"),
    "train.sampler": ("roundrobin", "sequential", "proportional", "annealed"),
    "train.epoch_length": ("min", "max", "steps"),
    "train.loss_combination": ("sum", "mean", "weights", "balanced"),
    "train.schedule": ("constant", "linear"),
    "train.updates": UPDATES,
    "train.surgery": SURGERIES,
    "losses.sst": ("ce", "ordinal"),
    "losses.sts": ("mse", "cosine_embedding"),
    "smart.norm": NORMS,
    "smart.ascent": ASCENTS,
}
# Bare flags that stand for a setting: `--pcgrad` is `--train.surgery=pcgrad`, `--smart` is `--smart.enabled`.
SHORTHANDS = {**{name: ("train.surgery", name) for name in CHOICES["train.surgery"] if name != "none"},
              "smart": ("smart.enabled", "true")}
KNOWN_TASKS = ("sst", "cfimdb", "para", "sts", "nli", "tweet")
# Where each StageConfig field's inherited value lives in Config: `train.<field>` unless named here.
_STAGE_HOMES = {"tasks": "tasks", "freeze_encoder": "model.freeze_encoder"}
STAGE_FIELDS = {f.name: _STAGE_HOMES.get(f.name, f"train.{f.name}") for f in dataclasses.fields(StageConfig)
                if f.name != "name"}


def stage_names(config: Config) -> list[str]:
    return [stage.name or f"stage{k + 1}" for k, stage in enumerate(config.stages)]


def resolve_stage(config: Config, stage: StageConfig) -> Config:
    """The run's config with `stage`'s fields applied: a single-stage config describing that stage.

    `train.loss_weights` keeps the weights of the stage's tasks only.
    """
    resolved = copy.deepcopy(config)
    resolved.stages, resolved.train.stage_cycles = [], 1
    for field, key in STAGE_FIELDS.items():
        value = getattr(stage, field)
        if value is not None:
            section, _, leaf = key.rpartition(".")
            setattr(get(resolved, section) if section else resolved, leaf, copy.deepcopy(value))
    resolved.train.loss_weights = {t: w for t, w in resolved.train.loss_weights.items() if t in resolved.tasks}
    return resolved


def get(config: Any, key: str) -> Any:
    node = config
    for part in key.split("."):
        node = getattr(node, part)
    return node


def validate(config: Config) -> None:
    for key, allowed in CHOICES.items():
        if get(config, key) not in allowed:
            raise ConfigError(f"{key} is {get(config, key)!r}; allowed: {', '.join(allowed)}")
    unknown = [t for t in config.tasks if t not in KNOWN_TASKS]
    if unknown or not config.tasks:
        raise ConfigError(f"tasks {config.tasks} must be a non-empty subset of {', '.join(KNOWN_TASKS)}")
    if config.heads.sts_encoding == "cross" and config.heads.sts_head != "linear":
        raise ConfigError("heads.sts_head must be 'linear' when heads.sts_encoding is 'cross' (no sentence pair to "
                          "take a cosine of)")
    if config.train.epoch_length == "steps" and not config.train.steps_per_epoch:
        raise ConfigError("train.epoch_length 'steps' needs train.steps_per_epoch")
    if config.train.seeds < 1:
        raise ConfigError(f"train.seeds must be at least 1, got {config.train.seeds}")
    if config.data.max_length not in config.data.buckets:
        raise ConfigError(f"data.buckets {config.data.buckets} must include data.max_length {config.data.max_length}")
    steps = config.train.accumulation_steps
    if steps < 1 or config.train.batch_size % steps:
        raise ConfigError(f"train.accumulation_steps {steps} must be a positive divisor of train.batch_size "
                          f"{config.train.batch_size} (every micro-batch has the same size)")
    if steps > 1 and config.train.loss_combination == "balanced":
        raise ConfigError("train.loss_combination 'balanced' weighs each task by the whole batch's losses, which no "
                          "micro-batch sees: it needs train.accumulation_steps 1")
    if config.train.surgery != "none" and config.train.loss_combination not in ("sum", "mean"):
        raise ConfigError(f"train.surgery {config.train.surgery!r} combines raw task gradients: "
                          f"train.loss_combination must be sum or mean, not {config.train.loss_combination!r}")
    if config.train.updates == "per_task" and (config.train.surgery != "none"
                                               or config.train.loss_combination not in ("sum", "weights")):
        raise ConfigError(f"train.updates 'per_task' applies each task's own loss: it needs train.surgery none (got "
                          f"{config.train.surgery!r}) and train.loss_combination sum or weights (got "
                          f"{config.train.loss_combination!r})")
    try:
        SmartConfig(**smart_options(config.smart))
    except ValueError as e:
        raise ConfigError(f"smart: {e}") from None
    smoothable = [t for t in config.tasks if t in SMART_TASK_KIND]
    if config.smart.tasks is not None and (not config.smart.tasks or not set(config.smart.tasks) <= set(smoothable)):
        raise ConfigError(f"smart.tasks {config.smart.tasks} must be a non-empty subset of the run's tasks with a "
                          f"prediction to smooth: {', '.join(smoothable)}")
    unknown = [t for t in config.losses.simcse_tasks if t not in KNOWN_TASKS]
    if unknown:
        raise ConfigError(f"losses.simcse_tasks {unknown} are not tasks; known: {', '.join(KNOWN_TASKS)}")
    if "nli" in config.losses.simcse_tasks:
        raise ConfigError("losses.simcse_tasks cannot include nli: its triplets are trained with supervised SimCSE "
                          "already")
    _validate_heads(config)
    for key in ("losses.label_smoothing",):
        if not 0.0 <= get(config, key) < 1.0:
            raise ConfigError(f"{key} must be in [0, 1), got {get(config, key)}")
    for key in ("losses.supcon_weight", "losses.simcse_weight", "losses.supcon_temperature",
                "losses.simcse_temperature", "train.gradvac_beta"):
        if get(config, key) < 0:
            raise ConfigError(f"{key} must be non-negative, got {get(config, key)}")
    weights = config.train.loss_weights
    if config.train.loss_combination == "weights" and set(weights) != set(config.tasks):
        raise ConfigError(f"train.loss_weights must give a weight for each task {config.tasks}, got {weights}")
    validate_stages(config)


def validate_stages(config: Config) -> None:
    """Each stage's own fields, then the stage as the single-stage run it resolves to."""
    cycles = config.train.stage_cycles
    if cycles < 1:
        raise ConfigError(f"train.stage_cycles must be at least 1, got {cycles}")
    if cycles > 1 and not config.stages:
        raise ConfigError(f"train.stage_cycles repeats the list of stages: without stages it must be 1, got {cycles}")
    names = stage_names(config)
    if len(set(names)) < len(names):
        raise ConfigError(f"stage names must differ from each other, got {names}")
    for k, (name, stage) in enumerate(zip(names, config.stages)):
        for field, key in STAGE_FIELDS.items():
            value = getattr(stage, field)
            if value is not None and key in CHOICES and value not in CHOICES[key]:
                raise ConfigError(f"stages[{k}].{field} is {value!r}; allowed: {', '.join(CHOICES[key])}")
        if stage.tasks is not None and (not stage.tasks or not set(stage.tasks) <= set(config.tasks)):
            raise ConfigError(f"stages[{k}].tasks {stage.tasks} must be a non-empty subset of the run's tasks "
                              f"{config.tasks} (the model has one head per run task)")
        try:
            validate(resolve_stage(config, stage))
        except ConfigError as e:
            raise ConfigError(f"stages[{k}] ({name}): {e}") from None


def _validate_heads(config: Config) -> None:
    heads, losses = config.heads, config.losses
    if heads.hidden_layers < 0:
        raise ConfigError(f"heads.hidden_layers must be non-negative, got {heads.hidden_layers}")
    for task, layers in heads.task_hidden_layers.items():
        if task not in KNOWN_TASKS or task in SHARED_HEADS:
            owners = [t for t in KNOWN_TASKS if t not in SHARED_HEADS]
            shared = ", ".join(f"{t} trains the {o} head" for t, o in SHARED_HEADS.items())
            raise ConfigError(f"heads.task_hidden_layers: {task!r} is not a task with a head of its own ({shared}); "
                              f"known: {', '.join(owners)}")
        if layers < 0:
            raise ConfigError(f"heads.task_hidden_layers.{task} must be non-negative, got {layers}")
    if heads.hidden_size is not None and heads.hidden_size < 1:
        raise ConfigError(f"heads.hidden_size must be positive or null, got {heads.hidden_size}")
    if not heads.cosine_scale > 0:
        raise ConfigError(f"heads.cosine_scale must be positive, got {heads.cosine_scale}")
    if losses.sts == "cosine_embedding" and not (heads.sts_encoding == "bi"
                                                 and heads.sts_head in ("cosine", "sigmoid_cosine")):
        raise ConfigError(f"losses.sts 'cosine_embedding' reads the cosine of the pair's embeddings: it needs "
                          f"heads.sts_encoding 'bi' and heads.sts_head 'cosine' or 'sigmoid_cosine', not "
                          f"{heads.sts_encoding!r} and {heads.sts_head!r} (whose parameters it would not train)")
    if not 0.0 <= losses.cosine_embedding_threshold <= 5.0:
        raise ConfigError(f"losses.cosine_embedding_threshold must be on the 0-5 similarity scale, got "
                          f"{losses.cosine_embedding_threshold}")
    if not -1.0 <= losses.cosine_embedding_margin <= 1.0:
        raise ConfigError(f"losses.cosine_embedding_margin must be in [-1, 1], got {losses.cosine_embedding_margin}")


def to_dict(config: Config) -> dict[str, Any]:
    return dataclasses.asdict(config)


def save_config(config: Config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(config), sort_keys=False))
