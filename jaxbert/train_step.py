"""The jitted, data-parallel multitask train and predict steps.

State is a pytree in and a new pytree out. Data parallelism is a `data` mesh axis: batches are sharded along
it, the state is replicated, and `jax.jit` inserts the gradient all-reduce.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxbert import gradients
from jaxbert.heads import MultitaskBert
from jaxbert.losses import TASK_LOSS, combine_losses

Batches = dict[str, dict[str, jax.Array]]  # task → arrays with a leading batch axis


@flax.struct.dataclass
class TrainState:
    """Everything a step changes. Dropout keys are derived from `step`, so no key needs carrying."""

    step: jax.Array
    params: Any
    opt_state: Any

    def checkpoint_items(self) -> dict[str, Any]:
        return {"step": self.step, "params": self.params, "opt_state": self.opt_state}


def create_train_state(params: Any, tx: optax.GradientTransformation) -> TrainState:
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))


def frozen_encoder_optimizer(tx: optax.GradientTransformation, params: Any) -> optax.GradientTransformation:
    """Leaves the encoder exactly where it is (no update, no weight decay) and trains the heads with `tx`."""
    labels = {name: "frozen" if name == "bert" else "train" for name in params}
    return optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels)


def task_loss_fns(model: MultitaskBert, batches: Batches, dropout_key: jax.Array) -> dict[str, Callable]:
    """`{task: params -> mean loss on its own batch}`, each task with its own dropout stream."""

    def loss_fn(task, batch, key):
        def loss(params):
            output = model.apply({"params": params}, task, batch, deterministic=False, rngs={"dropout": key})
            return TASK_LOSS[task](output, batch["labels"])
        return loss

    return {task: loss_fn(task, batch, jax.random.fold_in(dropout_key, i))
            for i, (task, batch) in enumerate(sorted(batches.items()))}


def joint_gradient(losses_fns, params, loss_combination, loss_weights):
    """One backward pass through the combined loss."""
    def total(p):
        losses = {task: fn(p) for task, fn in losses_fns.items()}
        return combine_losses(losses, loss_combination, loss_weights), losses

    (loss, losses), grads = jax.value_and_grad(total, has_aux=True)(params)
    return loss, losses, grads


def surgery_gradient(losses_fns, params, loss_combination, surgery, key):
    """Each task's own gradient (its own backward pass: together the same work as the joint one), then the
    shared encoder's gradients are combined by `surgery` while every head keeps its own task's gradient."""
    losses, task_grads = {}, {}
    for task, fn in losses_fns.items():
        losses[task], task_grads[task] = jax.value_and_grad(fn)(params)
    tasks = list(task_grads)
    reduction = "mean" if loss_combination == "mean" else "sum"
    shared = [task_grads[t]["bert"] for t in tasks]
    if surgery == "pcgrad":
        encoder = gradients.pcgrad(shared, key, reduction)
    else:
        encoder = gradients.aggregate(surgery, shared, key)
    encoder = jax.tree.map(lambda g, p: g.astype(p.dtype), encoder, params["bert"])
    grads = {name: encoder if name == "bert" else task_grads[name][name] for name in params}
    loss = sum(losses.values()) / (len(losses) if reduction == "mean" else 1)
    return loss, losses, grads


SURGERIES = ("none", "pcgrad", "cagrad", "mgda", "imtl_g")


def make_train_step(
    model: MultitaskBert,
    tx: optax.GradientTransformation,
    base_key: jax.Array,
    loss_combination: str = "sum",
    loss_weights: dict[str, float] | None = None,
    surgery: str = "none",
) -> Callable[[TrainState, Batches], tuple[TrainState, dict[str, jax.Array]]]:
    """Builds `train_step(state, batches) -> (state, metrics)`, not yet jitted.

    `surgery` "none" backpropagates the combined loss once; any other value takes per-task gradients and
    combines the shared encoder's with that method of `jaxbert.gradients` (PCGrad with `sum`/`mean` reduction
    following `loss_combination`).
    """
    if surgery not in SURGERIES:
        raise ValueError(f"surgery {surgery!r} is not one of {', '.join(SURGERIES)}")

    def train_step(state: TrainState, batches: Batches):
        dropout_key = jax.random.fold_in(base_key, state.step)
        fns = task_loss_fns(model, batches, dropout_key)
        surgery_key = jax.random.fold_in(dropout_key, len(fns))  # a stream the dropout keys do not use
        if surgery == "none":
            loss, losses, grads = joint_gradient(fns, state.params, loss_combination, loss_weights)
        else:
            loss, losses, grads = surgery_gradient(fns, state.params, loss_combination, surgery, surgery_key)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        new_state = state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                                  opt_state=opt_state)
        metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads), **{f"loss/{t}": l for t, l in losses.items()}}
        return new_state, metrics

    return train_step


def make_predict_step(model: MultitaskBert, task: str) -> Callable[[Any, dict[str, jax.Array]], jax.Array]:
    """`predict(params, batch)` → the head's raw output (logits or scores), deterministic."""
    return lambda params, batch: model.apply({"params": params}, task, batch, deterministic=True)


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


def jit_train_step(train_step: Callable, mesh: Mesh) -> Callable:
    """Jits the step over the mesh; the old state's buffers are donated to the new one."""
    replicated, sharded = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
    return jax.jit(train_step, in_shardings=(replicated, sharded), out_shardings=(replicated, replicated),
                   donate_argnums=0)


def jit_predict_step(predict: Callable, mesh: Mesh) -> Callable:
    replicated, sharded = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
    return jax.jit(predict, in_shardings=(replicated, sharded), out_shardings=sharded)
