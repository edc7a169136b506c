"""The jitted, data-parallel multitask train and predict steps, as pure functions.

State is a pytree in and a new pytree out, always stacked over a leading seed axis (`[seeds, ...]`, size 1 for
one seed): the step is vmapped over it, every seed on the same batches with its own dropout and surgery keys.
Data parallelism is a `data` mesh axis: batches are sharded along it, the state is replicated, and `jax.jit`
inserts the gradient all-reduce.

One step of one seed: each task's loss on its batch (`task_loss_fns`), their gradients, averaged over
micro-batches (`accumulate`), combined into one update (`joint_update`: the combined loss's gradient, or each
task's gradient combined on the encoder by a `SURGERIES` method) or applied task after task
(`per_task_update`), then SMART's teacher follows the params. A surgery method is a function of the tasks'
encoder gradients plus its entry in `SURGERIES`.
"""

from __future__ import annotations

import dataclasses
from functools import partial
from typing import Any, Callable, Collection, Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxbert import gradients, losses, smart
from jaxbert.config import Config, TrainConfig, get
from jaxbert.heads import MultitaskBert

Batches = dict[str, dict[str, jax.Array]]  # task → arrays with a leading batch axis


@flax.struct.dataclass
class TrainState:
    """Everything a step changes, every leaf `[seeds, ...]`. Dropout keys are derived from `step`, so no key
    needs carrying. `extra` holds what a method carries between steps (GradVac's targets, SMART's EMA teacher)
    and the non-finite guard's counts (`guard_nonfinite`)."""

    step: jax.Array
    params: Any
    opt_state: Any
    extra: dict[str, Any] = flax.struct.field(default_factory=dict)

    def checkpoint_items(self) -> dict[str, Any]:
        return {"step": self.step, "params": self.params, "opt_state": self.opt_state, "extra": self.extra}


def create_train_state(params: Any, tx: optax.GradientTransformation, extra: dict[str, Any] | None = None) -> TrainState:
    """One seed's state (no seed axis); `build.train_state` stacks them. `extra` gets a fresh non-finite guard
    (`guard_nonfinite`)."""
    guard = {"frozen": jnp.zeros((), bool), "in_a_row": jnp.zeros((), jnp.int32), "skipped": jnp.zeros((), jnp.int32)}
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                      extra={**(extra or {}), "guard": guard})


def initial_extra(params: Any, config: Config) -> dict[str, Any]:
    """One seed's `TrainState.extra` at the start of a stage."""
    surgery = SURGERIES.get(config.train.surgery)
    extra = surgery.init(len(config.tasks)) if surgery and surgery.init else {}
    if config.smart.teacher:
        extra["teacher"] = jax.tree.map(jnp.array, params)  # its own buffers: the step donates the state
    return extra


def partly_frozen_optimizer(tx: optax.GradientTransformation, params: Any,
                            frozen: Collection[str]) -> optax.GradientTransformation:
    """Leaves the top-level params named in `frozen` (`"bert"`, a head) exactly where they are (no update, no
    weight decay) and trains the others with `tx`."""
    labels = {name: "frozen" if name in frozen else "train" for name in params}
    return optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels)


def untouched(model: MultitaskBert, params: Any, tasks: Collection[str]) -> Any:
    """A pytree of bools with the structure of `params`: True where no loss of `tasks` reaches the leaf.

    Those are the heads and PALs of the other tasks, and the encoder's pooler when none of `tasks` pools with
    it. An update leaves them exactly as they were, optimizer moments and update counts included, as PyTorch's
    optimizers skip a parameter whose gradient is None: a zero gradient would still move them by Adam's momentum
    and weight decay.
    """
    touched = {"bert"} | {name for task in tasks for name in (model.task(task).owner, f"pal_{model.task(task).owner}")}
    pooler = any(model.heads.pooling(model.task(task)) == "pooler" for task in tasks)
    return {name: jax.tree_util.tree_map_with_path(
        lambda path, _, name=name: name not in touched or (name == "bert" and not pooler
                                                           and path[0] == jax.tree_util.DictKey("pooler")), tree)
            for name, tree in params.items()}


def restore_untouched(tx: optax.GradientTransformation, new_state: TrainState, old_state: TrainState,
                      mask: Any) -> TrainState:
    """`new_state` with the params where `mask` is True, and their slices of the optimizer state (Adam's moments
    and update counts, not the schedule's count), as they are in `old_state`."""
    if not any(jax.tree.leaves(mask)):
        return new_state
    masked = lambda x: isinstance(x, optax.MaskedNode)  # noqa: E731  a frozen group's absent state
    from_old = optax.tree_utils.tree_map_params(tx, lambda leaf, old: leaf if masked(leaf) else old,
                                                new_state.opt_state, mask,
                                                transform_non_params=lambda _: False, is_leaf=masked)
    pick = lambda use_old, new, old: old if use_old else new  # noqa: E731
    return new_state.replace(params=jax.tree.map(pick, mask, new_state.params, old_state.params),
                             opt_state=jax.tree.map(pick, from_old, new_state.opt_state, old_state.opt_state))


# ------------------------------------------------------------------------------------------------- losses


def _twice(batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
    return {k: jnp.concatenate([v, v]) for k, v in batch.items() if k != "labels"}


def task_loss_fns(model: MultitaskBert, batches: Batches, dropout_key: jax.Array, config: Config,
                  teacher: Any = None, sweep: dict[str, jax.Array] | None = None) -> dict[str, Callable]:
    """`{task: params -> (loss, parts)}`: each task's loss on its own batch, with its own dropout stream.

    `parts` names the loss's terms (`head`, `supcon`, `simcse`, `smart`, `bregman`) for the metrics. The
    contrastive terms see two dropout views of every sentence, made by running the batch twice in one call;
    SMART adds its adversarial term and, with a `teacher`, its proximal term against it. A sweep member's values
    (`sweep`, `{key: scalar}`) stand for the config's weights of the keys it varies; which terms exist is the
    config's decision, the same for every member.
    """
    loss_config, smart_config = config.losses, config.smart
    weight = lambda key: (sweep or {}).get(key, get(config, key))  # noqa: E731

    def loss_fn(name, batch, key):
        task = model.task(name)
        dropout_key, smart_key = jax.random.split(key)
        labels, rows = batch.get("labels"), batch["input_ids"].shape[0]
        views = 2 if loss_config.two_views(task) else 1
        inputs = _twice(batch) if views == 2 else batch

        def forward(params, perturbation=None):
            return model.apply({"params": params}, name, inputs, deterministic=False, perturbation=perturbation,
                               return_embeddings=True, rngs={"dropout": dropout_key})

        def loss(params):
            output, embeddings = forward(params)
            # Rows of `embeddings` are [group][view][row]: a bi-encoded pair has two groups (its sentences), a triplet 3.
            grouped = embeddings.reshape(-1, views, rows, embeddings.shape[-1])
            parts = {"head": losses.head_loss(task, loss_config, output[:rows], labels, grouped[:, 0])}
            if views == 2:
                first, second = (grouped[:, view].reshape(-1, grouped.shape[-1]) for view in (0, 1))
                if loss_config.supcon(task):
                    parts["supcon"] = weight("losses.supcon_weight") * losses.supervised_contrastive_loss(
                        embeddings, jnp.concatenate([labels, labels]), loss_config.supcon_temperature)
                if loss_config.simcse(task):
                    parts["simcse"] = weight("losses.simcse_weight") * losses.simcse_loss(
                        first, second, loss_config.simcse_temperature)
            if smart_config.smooths(task):
                adversarial = smart.adversarial_loss(lambda d: forward(params, d)[0], output,
                                                     model.encoder_input_shape(name, inputs), task.divergence,
                                                     smart_key, smart_config)
                parts["smart"] = weight("smart.weight") * adversarial
                if teacher is not None:
                    teacher_output, _ = forward(teacher)
                    parts["bregman"] = weight("smart.bregman_weight") * smart.bregman_loss(output, teacher_output,
                                                                                            task.divergence)
            return sum(parts.values()), parts

        return loss

    return {name: loss_fn(name, batch, jax.random.fold_in(dropout_key, i))
            for i, (name, batch) in enumerate(sorted(batches.items()))}


# ---------------------------------------------------------------------------------------------- gradients


def joint_gradient(loss_fns, params, train: TrainConfig):
    """One backward pass through the combined loss: `(results, grads)`."""
    def total(p):
        results = {task: fn(p) for task, fn in loss_fns.items()}
        task_losses = {task: loss for task, (loss, _) in results.items()}
        return losses.combine_losses(task_losses, train.loss_combination, train.loss_weights), results

    grads, results = jax.grad(total, has_aux=True)(params)
    return results, grads


def per_task_gradients(loss_fns, params):
    """Each task's own gradient, from its own backward pass: together the same work as the joint one."""
    results, task_grads = {}, {}
    for task, fn in loss_fns.items():
        results[task], task_grads[task] = jax.value_and_grad(fn, has_aux=True)(params)
    return results, task_grads


def combine_task_gradients(task_grads, params, encoder_grad):
    """The encoder takes `encoder_grad`; every other parameter (a head, a task's adapters) belongs to one task, or
    to the tasks that train it (`Task.head`), so summing over tasks gives it exactly their gradient."""
    encoder_grad = jax.tree.map(lambda g, p: g.astype(p.dtype), encoder_grad, params["bert"])
    return {name: encoder_grad if name == "bert" else jax.tree.map(lambda *g: sum(g), *[g[name] for g in task_grads])
            for name in params}


def accumulate(gradients_of: Callable[[Batches, jax.Array], Any], batches: Batches, dropout_key: jax.Array,
               steps: int) -> Any:
    """`gradients_of(batches, dropout_key)` (a pytree of losses and gradients) averaged over `steps` micro-batches.

    Micro-batch m holds rows m, m + steps, m + 2·steps, ... of every task's batch, so each device's slice of a
    batch sharded on `data` splits on the device itself, and every micro-batch is still spread over all devices
    (the config and the trainer check that the batch divides). Each loss is a mean over its rows, so with equal
    micro-batches the average is the whole batch's loss and gradient, up to dropout (each micro-batch draws its
    own masks) and to the in-batch terms (SupCon and SimCSE contrast a row with its micro-batch only).
    `lax.scan` keeps one micro-batch's activations alive. On several devices XLA all-reduces each
    micro-batch's gradient inside the loop, not once per step.
    """
    if steps == 1:
        return gradients_of(batches, dropout_key)

    def split(x):  # [rows, ...] → [steps, rows / steps, ...]
        return jnp.swapaxes(x.reshape(x.shape[0] // steps, steps, *x.shape[1:]), 0, 1)

    micro = jax.tree.map(split, batches)
    keys = jax.random.split(dropout_key, steps)

    def add(total, xs):
        return jax.tree.map(jnp.add, total, gradients_of(*xs)), None

    shapes = jax.eval_shape(gradients_of, jax.tree.map(lambda x: x[0], micro), keys[0])
    total, _ = jax.lax.scan(add, jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes), (micro, keys))
    return jax.tree.map(lambda x: x / steps, total)


# ------------------------------------------------------------------------------------------ gradient surgery


@dataclasses.dataclass(frozen=True)
class Surgery:
    """A gradient-surgery method on the shared encoder.

    `directions(encoder_grads, key, extra, train)` takes the tasks' encoder gradients (sorted task order) and
    returns the encoder gradient of each optimizer update the step makes (in order) and the new
    `TrainState.extra`; every head keeps its own task's gradient. `init(num_tasks)` gives the `extra` entries
    the method carries between steps.
    """

    directions: Callable[[list, jax.Array, dict, TrainConfig], tuple[list, dict]]
    updates: int = 1
    init: Callable[[int], dict[str, Any]] | None = None


def _pcgrad(grads, key, extra, train):
    return [gradients.pcgrad(grads, key, train.reduction)], extra


def _pcgrad_two_updates(grads, key, extra, train):
    """Report 002's "gradient surgery experiment": a PCGrad update, then a plain one with the combined gradient,
    both gradients taken at the step's start (two optimizer steps, one backward pass per task)."""
    return [gradients.pcgrad(grads, key, train.reduction), gradients.aggregate(train.reduction, grads)], extra


def _gradvac(grads, key, extra, train):
    encoder, targets = gradients.gradvac(grads, key, extra["gradvac_targets"], train.gradvac_beta, train.reduction,
                                         ema_from_projected=train.gradvac_ema == "projected")
    return [encoder], {**extra, "gradvac_targets": targets}


def _aggregator(name: str):
    return lambda grads, key, extra, train: ([gradients.aggregate(name, grads, key)], extra)


SURGERIES: dict[str, Surgery] = {  # the names of `choices.SURGERIES` but "none"
    "pcgrad": Surgery(_pcgrad),
    "pcgrad_two_updates": Surgery(_pcgrad_two_updates, updates=2),
    "gradvac": Surgery(_gradvac, init=lambda num_tasks: {"gradvac_targets": gradients.gradvac_init(num_tasks)}),
    "cagrad": Surgery(_aggregator("cagrad")),
    "mgda": Surgery(_aggregator("mgda")),
    "imtl_g": Surgery(_aggregator("imtl_g")),
}


def updates_per_step(train: TrainConfig, num_tasks: int) -> int:
    """Optimizer updates one step applies to a batch of `num_tasks` tasks. The LR schedule counts updates."""
    if train.updates == "per_task":
        return num_tasks
    return SURGERIES[train.surgery].updates if train.surgery in SURGERIES else 1


# ----------------------------------------------------------------------------------------------- the step


def apply_update(state: TrainState, grads: Any, tasks: Collection[str], *, model: MultitaskBert,
                 tx: optax.GradientTransformation) -> TrainState:
    """One optimizer update from `grads`, the gradient of `tasks`' losses (see `untouched`)."""
    deltas, opt_state = tx.update(grads, state.opt_state, state.params)
    new_state = state.replace(params=optax.apply_updates(state.params, deltas), opt_state=opt_state)
    return restore_untouched(tx, new_state, state, untouched(model, state.params, tasks))


def joint_update(state: TrainState, batches: Batches, dropout_key: jax.Array, surgery_key: jax.Array, *,
                 model: MultitaskBert, tx: optax.GradientTransformation, config: Config,
                 sweep: dict[str, jax.Array] | None = None):
    """`(state, results, grads, loss)` of the step's one update from every task's loss; with gradient surgery,
    the updates its method makes from the per-task gradients, and its new `extra`."""
    train, teacher = config.train, state.extra.get("teacher")
    apply = partial(apply_update, tasks=batches, model=model, tx=tx)
    fns = lambda b, key: task_loss_fns(model, b, key, config, teacher, sweep)  # noqa: E731
    if train.surgery == "none":
        results, grads = accumulate(lambda b, key: joint_gradient(fns(b, key), state.params, train), batches,
                                    dropout_key, train.accumulation_steps)
        task_losses = {t: loss for t, (loss, _) in results.items()}
        return (apply(state, grads), results, grads,
                losses.combine_losses(task_losses, train.loss_combination, train.loss_weights))
    results, task_grads = accumulate(lambda b, key: per_task_gradients(fns(b, key), state.params), batches,
                                     dropout_key, train.accumulation_steps)
    directions, extra = SURGERIES[train.surgery].directions([task_grads[t]["bert"] for t in sorted(batches)],
                                                            surgery_key, state.extra, train)
    updates = [combine_task_gradients(list(task_grads.values()), state.params, encoder) for encoder in directions]
    new_state = state.replace(extra=extra)
    for update in updates:
        new_state = apply(new_state, update)
    return (new_state, results, updates[0],  # the first update's gradient is the step's surgery-combined one
            losses.combine_losses({t: loss for t, (loss, _) in results.items()}, train.reduction))


def per_task_update(state: TrainState, batches: Batches, dropout_key: jax.Array, *, model: MultitaskBert,
                    tx: optax.GradientTransformation, config: Config, sweep: dict[str, jax.Array] | None = None):
    """`(state, results, grads, loss)` of one update per task, tasks in sorted order, each from that task's loss
    (times its weight under `loss_combination` "weights") at the params the previous task's update left, with
    the dropout stream a joint step gives it: the course baseline's loop (report 002's "Baseline")."""
    train, teacher = config.train, state.extra.get("teacher")
    weights = train.loss_weights if train.loss_combination == "weights" else {}

    def task_gradient(task, params, b, key):
        fn = task_loss_fns(model, b, key, config, teacher, sweep)[task]

        def weighted(p):
            task_loss, parts = fn(p)
            return weights.get(task, 1.0) * task_loss, (task_loss, parts)

        (_, result), grad = jax.value_and_grad(weighted, has_aux=True)(params)
        return result, grad

    new_state, results, applied = state, {}, []
    for task in sorted(batches):
        results[task], grad = accumulate(partial(task_gradient, task, new_state.params), batches, dropout_key,
                                         train.accumulation_steps)
        new_state = apply_update(new_state, grad, [task], model=model, tx=tx)
        applied.append(grad)
    loss = losses.combine_losses({t: loss for t, (loss, _) in results.items()}, train.loss_combination,
                                 train.loss_weights)
    return new_state, results, jax.tree.map(lambda *g: sum(g), *applied), loss


def step_keys(base_key: jax.Array, step: jax.Array, num_tasks: int) -> tuple[jax.Array, jax.Array]:
    """The dropout and surgery keys of `step`: `fold_in(base_key, step)`, and from it the stream
    `fold_in(·, num_tasks)` that no task's dropout stream (`fold_in(·, i)`, i < num_tasks) uses."""
    dropout_key = jax.random.fold_in(base_key, step)
    return dropout_key, jax.random.fold_in(dropout_key, num_tasks)


def seed_step(state: TrainState, batches: Batches, base_key: jax.Array, sweep: dict[str, jax.Array] | None = None, *,
              model: MultitaskBert, tx: optax.GradientTransformation, config: Config,
              lr_optimizer: Callable[[jax.Array], optax.GradientTransformation] | None = None
              ) -> tuple[TrainState, dict[str, jax.Array]]:
    """One step of one member (no member axis): the new state and the step's metrics. `sweep` holds the member's
    values of the keys a sweep varies (`{key: scalar}`); a swept `train.lr` takes the optimizer `lr_optimizer`
    makes of it (the same transformation as `tx`, whose state the member's is)."""
    dropout_key, surgery_key = step_keys(base_key, state.step, len(batches))
    if sweep and "train.lr" in sweep:
        tx = lr_optimizer(sweep["train.lr"])
    if config.train.updates == "per_task":
        new_state, results, grads, loss = per_task_update(state, batches, dropout_key, model=model, tx=tx,
                                                          config=config, sweep=sweep)
    else:
        new_state, results, grads, loss = joint_update(state, batches, dropout_key, surgery_key, model=model, tx=tx,
                                                       config=config, sweep=sweep)
    extra = dict(new_state.extra)
    if "teacher" in extra:
        extra["teacher"] = smart.update_teacher(extra["teacher"], new_state.params, config.smart.teacher_momentum)
    new_state = new_state.replace(step=state.step + 1, extra=extra)
    metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads)}
    for task, (task_loss, parts) in results.items():
        metrics[f"loss/{task}"] = task_loss
        metrics.update({f"loss/{task}/{name}": value for name, value in parts.items() if len(parts) > 1})
    return guard_nonfinite(state, new_state, metrics, config.train)


def guard_nonfinite(old: TrainState, new: TrainState, metrics: dict[str, jax.Array],
                    train: TrainConfig) -> tuple[TrainState, dict[str, jax.Array]]:
    """`new`, unless a loss term or the gradient norm in `metrics` is not finite: then `old` (params, optimizer
    state and `extra` unchanged) one step on.

    The decision stays on the device, so no step waits for the host. `extra["guard"]` counts the skipped steps
    and those in a row; once `train.nonfinite` says the run must end (the first one under stop, `max_nonfinite`
    in a row under skip) it is `frozen`: every later step leaves the state as it is, so that when the host looks
    (at its next log step, checkpoint or evaluation) it finds the last good state and stops the run there.
    """
    guard = old.extra["guard"]
    finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(value)) for value in metrics.values()]))
    in_a_row = jnp.where(finite, 0, guard["in_a_row"] + 1)
    frozen = guard["frozen"] | (in_a_row >= (1 if train.nonfinite == "stop" else train.max_nonfinite))
    keep = frozen | ~finite
    pick = lambda new_leaf, old_leaf: jnp.where(keep, old_leaf, new_leaf)  # noqa: E731
    carried = {name: value for name, value in new.extra.items() if name != "guard"}
    extra = jax.tree.map(pick, carried, {name: old.extra[name] for name in carried})
    skipped = guard["skipped"] + (~finite).astype(jnp.int32)
    state = new.replace(params=jax.tree.map(pick, new.params, old.params),
                        opt_state=jax.tree.map(pick, new.opt_state, old.opt_state),
                        extra={**extra, "guard": {"frozen": frozen, "in_a_row": in_a_row, "skipped": skipped}})
    return state, {**metrics, "skipped": skipped, "frozen": frozen}


def train_step(state: TrainState, batches: Batches, base_keys: jax.Array, *, model: MultitaskBert,
               tx: optax.GradientTransformation, config: Config, sweep: dict[str, jax.Array] | None = None,
               lr_optimizer: Callable[[jax.Array], optax.GradientTransformation] | None = None
               ) -> tuple[TrainState, dict[str, jax.Array]]:
    """`seed_step` vmapped over the member axis of `state`, of the typed keys `base_keys` `[members]` and of a
    sweep's values `{key: [members]}`, on shared `batches`: step `s` of member k draws its keys from
    `fold_in(base_keys[k], s)`. Every metric is `[members]`."""
    return jax.vmap(partial(seed_step, model=model, tx=tx, config=config, lr_optimizer=lr_optimizer),
                    in_axes=(0, None, 0, 0))(state, batches, base_keys, sweep or {})


def predict(params: Any, batch: dict[str, jax.Array], *, model: MultitaskBert, task: str) -> jax.Array:
    """The head's raw outputs (logits or scores), deterministic, for params stacked over seeds: `[batch, seeds,
    ...]`, batch first, so it is sharded like the batch and split into examples as the batch is."""
    one = lambda p: model.apply({"params": p}, task, batch, deterministic=True)  # noqa: E731
    return jnp.moveaxis(jax.vmap(one)(params), 0, 1)


# --------------------------------------------------------------------------------------- seeds and devices


def stack_seeds(trees: Sequence[Any]) -> Any:
    """One pytree per seed → one pytree whose leaves have a leading seed axis `[seeds, ...]`."""
    return jax.tree.map(lambda *leaves: jnp.stack(leaves), *trees)


def seed_slice(tree: Any, k: int) -> Any:
    """The `k`-th seed's pytree out of one stacked by `stack_seeds`."""
    return jax.tree.map(lambda leaf: leaf[k], tree)


def data_mesh(devices: list | None = None) -> Mesh:
    """A one-axis mesh named `data` over every device (or the given ones)."""
    devices = jax.devices() if devices is None else devices
    return Mesh(np.asarray(devices), ("data",))


def shard_batch(batch: Any, mesh: Mesh) -> Any:
    """Places the global batch's host arrays on the mesh, split along the leading (batch) axis.

    With several processes (multi-host, after `jax.distributed.initialize()`), every process holds the same
    global batch (the plan is a pure function of the seed) and contributes its contiguous slice of rows.
    """
    sharding = NamedSharding(mesh, P("data"))
    if jax.process_count() == 1:
        return jax.device_put(batch, sharding)

    def local_rows(x):
        rows = x.shape[0] // jax.process_count()
        start = jax.process_index() * rows
        return jax.make_array_from_process_local_data(sharding, x[start:start + rows], x.shape)

    return jax.tree.map(local_rows, batch)


def replicate(tree: Any, mesh: Mesh) -> Any:
    return jax.device_put(tree, NamedSharding(mesh, P()))


def jit_train_step(step: Callable, mesh: Mesh) -> Callable:
    """Jits `step(state, batches)` over the mesh; the old state's buffers are donated to the new one."""
    replicated, sharded = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
    return jax.jit(step, in_shardings=(replicated, sharded), out_shardings=(replicated, replicated),
                   donate_argnums=0)


def jit_predict_step(step: Callable, mesh: Mesh) -> Callable:
    """Jits `step(params, batch)` over the mesh: the outputs are sharded like the batch."""
    replicated, sharded = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
    return jax.jit(step, in_shardings=(replicated, sharded), out_shardings=sharded)
