"""Everything a run computes with, built from a `Config`: the model on the pretrained encoder, its initial
params (every head in one init, stacked over seeds), a stage's optimizer, the train state and the jitted train
and predict steps. `jaxbert.training`, `benchmarks/bench_step.py` and the tests build through here only.

Seeds: seed k initializes the heads from `jax.random.key(k)` and draws its dropout and surgery keys from
`base_keys`' `fold_in(jax.random.key(k), 1)` (stream 0 initialized the heads).
"""

from __future__ import annotations

import dataclasses
from functools import partial
from pathlib import Path
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from jaxbert import train_step as step_lib
from jaxbert.config import Config
from jaxbert.convert import PARAMS_DIR, load_pretrained, resolve_hf_folder
from jaxbert.errors import MissingFileError, OfflineError
from jaxbert.heads import MultitaskBert
from jaxbert.modeling import BertConfig, Execution
from jaxbert.optim import make_optimizer


@dataclasses.dataclass(frozen=True)
class Encoder:
    """The pretrained encoder of `model.checkpoint`: its architecture (with the config's dropout rates), params
    and vocabulary file."""

    config: BertConfig
    params: Any
    vocab: Path


def load_encoder(config: Config, log: Callable[[str], None] = print) -> Encoder:
    """The encoder of `model.checkpoint`: a converted folder, a Hugging Face folder or a Hub id.

    Raises:
      MissingFileError: it is none of those (or the Hub cannot be reached), saying how to make the folder.
    """
    try:
        bert_config, params = load_pretrained(config.model.checkpoint, log)
    except (MissingFileError, OfflineError) as e:
        raise MissingFileError(f"model.checkpoint {config.model.checkpoint!r}: {e}. Run `python convert_weights.py` "
                               "(it writes checkpoints/bert-base-uncased), or pass --checkpoint DIR") from None
    overrides = {"hidden_dropout_prob": config.model.hidden_dropout,
                 "attention_probs_dropout_prob": config.model.attention_dropout}
    bert_config = dataclasses.replace(bert_config, **{k: v for k, v in overrides.items() if v is not None})
    checkpoint = Path(config.model.checkpoint)
    folder = checkpoint if (checkpoint / PARAMS_DIR).is_dir() else resolve_hf_folder(config.model.checkpoint, log)
    return Encoder(bert_config, params, folder / "vocab.txt")


def model(config: Config, bert_config: BertConfig) -> MultitaskBert:
    """The multitask model of `config`'s tasks and heads on an encoder of `bert_config`."""
    # Every batch comes from `jaxbert.data`, which pads on the right: masks can travel as lengths.
    execution = Execution(config.model.attention, right_padded=True, remat=config.model.remat)
    return MultitaskBert(bert_config, config.run_tasks, config.heads, config.model.freeze_encoder,
                         config.model.freeze_pals, dtype=jnp.dtype(config.model.dtype), execution=execution)


def random_params(model: MultitaskBert, key: jax.Array) -> Any:
    """Every parameter of `model` freshly initialized from `key` (one seed, no seed axis): one init through every
    task, so each head and PAL is initialized once, however many tasks train it."""
    dummy = {k: jnp.zeros((1, 4), jnp.int32) for k in ("input_ids", "attention_mask", "token_type_ids")}
    dummy.update({k + suffix: v for k, v in dummy.items() for suffix in ("_b", "_c")})
    every_task = lambda module, batch: [module(task.name, batch) for task in module.tasks]  # noqa: E731
    return model.init(key, dummy, method=every_task)["params"]


def initial_params(model: MultitaskBert, bert_params: Any, seeds: Sequence[int]) -> Any:
    """The pretrained encoder and each seed's fresh heads, stacked over `seeds`: `[seeds, ...]` leaves."""
    # The encoder's random init is dropped inside the program, so XLA never computes it.
    heads = jax.jit(lambda key: {name: p for name, p in random_params(model, key).items() if name != "bert"})
    return step_lib.stack_seeds([{**heads(jax.random.key(seed)), "bert": bert_params} for seed in seeds])


def base_keys(seeds: Sequence[int]) -> jax.Array:
    """The typed keys `[seeds]` each seed's dropout and surgery keys fold the step into."""
    return jnp.stack([jax.random.fold_in(jax.random.key(seed), 1) for seed in seeds])


def optimizer(config: Config, params: Any, total_updates: int,
              lr: float | jax.Array | None = None) -> optax.GradientTransformation:
    """The optimizer of the (stage-resolved) `config`: its learning rate (or `lr`, a sweep member's, traced in
    the step) and schedule laid out over `total_updates` (the stage's, or those of every stage that carries it),
    the encoder and the PALs left alone when they are frozen. The heads and PALs of tasks the stage does not train
    need no freezing: an update leaves every parameter without a loss in it untouched (`train_step.untouched`)."""
    t, m = config.train, config.model
    tx = make_optimizer(t.lr if lr is None else lr, max(total_updates, 1), warmup_ratio=t.warmup_ratio, schedule=t.schedule,
                        weight_decay=t.weight_decay, decay_all=t.decay_norms_and_biases, clip_norm=t.clip_norm,
                        eps=t.eps)
    frozen = {name for name in params if (name == "bert" and m.freeze_encoder)
              or (name.startswith("pal_") and m.freeze_pals)}
    return step_lib.partly_frozen_optimizer(tx, params, frozen) if frozen else tx


def train_state(params: Any, tx: optax.GradientTransformation, config: Config) -> step_lib.TrainState:
    """A fresh state for params `[seeds, ...]`: new optimizer moments and `extra`, every leaf stacked."""
    return jax.vmap(lambda p: step_lib.create_train_state(p, tx, step_lib.initial_extra(p, config)))(params)


def train_step(model: MultitaskBert, tx: optax.GradientTransformation, config: Config, seeds: Sequence[int],
               mesh: Mesh, sweep: dict[str, Any] | None = None,
               lr_optimizer: Callable[[jax.Array], optax.GradientTransformation] | None = None) -> Callable:
    """The jitted `step(state, batches) -> (state, metrics)` of the (stage-resolved) `config`: its tasks, loss
    combination, surgery, updates, frozen encoder or not; vmapped over the members of the state, whose `seeds`
    and, in a sweep, values of the swept keys (`sweep`, `{key: [members]}`) are given. A swept `train.lr` needs
    `lr_optimizer`, the optimizer of a learning rate."""
    model = model.clone(freeze_encoder=config.model.freeze_encoder, freeze_pals=config.model.freeze_pals)
    return step_lib.jit_train_step(partial(step_lib.train_step, base_keys=base_keys(seeds),
                                           sweep={key: jnp.asarray(v) for key, v in (sweep or {}).items()},
                                           model=model, tx=tx, config=config, lr_optimizer=lr_optimizer), mesh)


def predict_steps(model: MultitaskBert, mesh: Mesh) -> dict[str, Callable]:
    """`{task: jitted predict(params, batch) -> [batch, seeds, ...]}` for every task of the model."""
    return {task.name: step_lib.jit_predict_step(partial(step_lib.predict, model=model, task=task.name), mesh)
            for task in model.tasks}
