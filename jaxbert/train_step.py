"""The jitted, data-parallel multitask train and predict steps.

State is a pytree in and a new pytree out. Data parallelism is a `data` mesh axis: batches are sharded along
it, the state is replicated, and `jax.jit` inserts the gradient all-reduce.

Several seeds train in one program as one state stacked over a leading seed axis (`stack_seeds`): the step and
the predictions are vmapped over it, every seed on the same batches with its own dropout and surgery keys.
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
from jaxbert.heads import NUM_CLASSES, MultitaskBert, head_of
from jaxbert.losses import TASK_LOSS, combine_losses
from jaxbert.smart import SmartConfig

Batches = dict[str, dict[str, jax.Array]]  # task → arrays with a leading batch axis


@flax.struct.dataclass
class TrainState:
    """Everything a step changes. Dropout keys are derived from `step`, so no key needs carrying.

    `extra` holds what a method carries between steps: GradVac's cosine targets, SMART's EMA teacher.
    """

    step: jax.Array
    params: Any
    opt_state: Any
    extra: dict[str, Any] = flax.struct.field(default_factory=dict)

    def checkpoint_items(self) -> dict[str, Any]:
        return {"step": self.step, "params": self.params, "opt_state": self.opt_state,
                **({"extra": self.extra} if self.extra else {})}


@dataclasses.dataclass(frozen=True)
class Objective:
    """What each task's loss is made of, beyond its head's loss. Static: it shapes the compiled step.

    `sts_loss` is STS's head loss: `mse` on the head's score, or `cosine_embedding` on the pair's embeddings
    (similar when the score is at least `cosine_embedding_threshold`). `nli` triplets are trained with
    supervised SimCSE at `simcse_temperature`, the contradictions as hard negatives. `supcon_weight` adds the
    supervised contrastive loss on the sentence embeddings of the classification tasks, `simcse_weight`
    unsupervised SimCSE on the sentences of `simcse_tasks`; both see two dropout views of every sentence, made by
    running each batch twice in one call. `smart` adds SMART's adversarial term and, with `bregman_weight` > 0,
    its proximal term against an EMA teacher, to each task of `smart_tasks` (None: every task with a prediction
    to smooth, which nli has not).
    """

    sst_loss: str = "ce"  # ce | ordinal
    label_smoothing: float = 0.0
    ordinal_alpha: float = 1.0
    supcon_weight: float = 0.0
    supcon_temperature: float = 0.07
    simcse_weight: float = 0.0
    simcse_tasks: tuple[str, ...] = ()
    simcse_temperature: float = 0.05
    smart: SmartConfig | None = None
    smart_tasks: tuple[str, ...] | None = None
    sts_loss: str = "mse"  # mse | cosine_embedding
    cosine_embedding_threshold: float = 2.5
    cosine_embedding_margin: float = 0.0

    def two_views(self, task: str) -> bool:
        supcon = self.supcon_weight > 0 and task in NUM_CLASSES
        return supcon or (self.simcse_weight > 0 and task in self.simcse_tasks)

    def smooths(self, task: str) -> bool:
        """Whether SMART regularizes `task`."""
        return (self.smart is not None and task in smart.TASK_KIND
                and (self.smart_tasks is None or task in self.smart_tasks))

    def head_loss(self, task: str, output: jax.Array, labels: jax.Array | None, sentences: jax.Array) -> jax.Array:
        """The loss of `task`'s head output `[batch, ...]`, or of its sentence embeddings `sentences`
        `[sentences per example, batch, d]` for the losses that read them."""
        if task == "nli":
            premises, entailments, contradictions = sentences
            return losses.simcse_loss(premises, entailments, self.simcse_temperature, hard_negatives=contradictions)
        if task == "sts" and self.sts_loss == "cosine_embedding":
            targets = jnp.where(labels >= self.cosine_embedding_threshold, 1, -1)
            return losses.cosine_embedding_loss(sentences[0], sentences[1], targets, self.cosine_embedding_margin)
        if task in NUM_CLASSES:
            if self.sst_loss == "ordinal":
                return losses.ordinal_log_loss(output, labels, self.ordinal_alpha)
            return losses.label_smoothed_cross_entropy(output, labels, self.label_smoothing)
        return TASK_LOSS[task](output, labels)


def create_train_state(params: Any, tx: optax.GradientTransformation,
                       extra: dict[str, Any] | None = None) -> TrainState:
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params), extra=extra or {})


def initial_extra(params: Any, num_tasks: int, surgery: str, objective: Objective) -> dict[str, Any]:
    """The `TrainState.extra` a run starts from."""
    extra = {}
    if surgery == "gradvac":
        extra["gradvac_targets"] = gradients.gradvac_init(num_tasks)
    if objective.smart is not None and objective.smart.bregman_weight > 0:
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
    touched = {"bert"} | {name for task in tasks for name in (head_of(task), f"pal_{head_of(task)}")}
    pooler = any(model.pooling(task) == "pooler" for task in tasks)
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


def _twice(batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
    return {k: jnp.concatenate([v, v]) for k, v in batch.items() if k != "labels"}


def task_loss_fns(model: MultitaskBert, batches: Batches, dropout_key: jax.Array, objective: Objective = Objective(),
                  teacher: Any = None) -> dict[str, Callable]:
    """`{task: params -> (loss, parts)}`: each task's loss on its own batch, with its own dropout stream.

    `parts` names the loss's terms (`head`, `supcon`, `simcse`, `smart`, `bregman`) for the metrics.
    """

    def loss_fn(task, batch, key):
        dropout_key, smart_key = jax.random.split(key)
        labels, rows = batch.get("labels"), batch["input_ids"].shape[0]
        views = 2 if objective.two_views(task) else 1
        inputs = _twice(batch) if views == 2 else batch

        def forward(params, perturbation=None):
            return model.apply({"params": params}, task, inputs, deterministic=False, perturbation=perturbation,
                               return_embeddings=True, rngs={"dropout": dropout_key})

        def loss(params):
            output, embeddings = forward(params)
            # Rows of `embeddings` are [group][view][row]: a bi-encoded pair has two groups (its sentences), a triplet 3.
            grouped = embeddings.reshape(-1, views, rows, embeddings.shape[-1])
            parts = {"head": objective.head_loss(task, output[:rows], labels, grouped[:, 0])}
            if views == 2:
                first, second = (grouped[:, view].reshape(-1, grouped.shape[-1]) for view in (0, 1))
                if objective.supcon_weight > 0 and task in NUM_CLASSES:
                    parts["supcon"] = objective.supcon_weight * losses.supervised_contrastive_loss(
                        embeddings, jnp.concatenate([labels, labels]), objective.supcon_temperature)
                if objective.simcse_weight > 0 and task in objective.simcse_tasks:
                    parts["simcse"] = objective.simcse_weight * losses.simcse_loss(
                        first, second, objective.simcse_temperature)
            if objective.smooths(task):
                cfg, kind = objective.smart, smart.TASK_KIND[task]
                adversarial = smart.adversarial_loss(lambda d: forward(params, d)[0], output,
                                                     model.encoder_input_shape(task, inputs), kind, smart_key, cfg)
                parts["smart"] = cfg.weight * adversarial
                if teacher is not None:
                    teacher_output, _ = forward(teacher)
                    parts["bregman"] = cfg.bregman_weight * smart.bregman_loss(output, teacher_output, kind)
            return sum(parts.values()), parts

        return loss

    return {task: loss_fn(task, batch, jax.random.fold_in(dropout_key, i))
            for i, (task, batch) in enumerate(sorted(batches.items()))}


def joint_gradient(loss_fns, params, loss_combination, loss_weights):
    """One backward pass through the combined loss: `(results, grads)`."""
    def total(p):
        results = {task: fn(p) for task, fn in loss_fns.items()}
        task_losses = {task: loss for task, (loss, _) in results.items()}
        return combine_losses(task_losses, loss_combination, loss_weights), results

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
    to the tasks that share it (`heads.SHARED_HEADS`), so summing over tasks gives it exactly their gradient."""
    encoder_grad = jax.tree.map(lambda g, p: g.astype(p.dtype), encoder_grad, params["bert"])
    return {name: encoder_grad if name == "bert" else jax.tree.map(lambda *g: sum(g), *[g[name] for g in task_grads])
            for name in params}


def accumulate(gradients_of: Callable[[Batches, jax.Array], Any], batches: Batches, dropout_key: jax.Array,
               steps: int) -> Any:
    """`gradients_of(batches, dropout_key)` (a pytree of losses and gradients) averaged over `steps` micro-batches.

    Micro-batch m holds rows m, m + steps, m + 2·steps, ... of every task's batch, so each device's slice of a
    batch sharded on `data` splits on the device itself, and every micro-batch is still spread over all devices.
    Each loss is a mean over its rows, so with equal micro-batches the average is the whole batch's loss and
    gradient, up to dropout (each micro-batch draws its own masks) and to the in-batch terms (SupCon and
    SimCSE contrast a row with its micro-batch only). `lax.scan` keeps one micro-batch's activations alive. On
    several devices XLA all-reduces each micro-batch's gradient inside the loop, not once per step.
    """
    if steps == 1:
        return gradients_of(batches, dropout_key)

    def split(x):  # [rows, ...] → [steps, rows / steps, ...]
        if x.shape[0] % steps:
            raise ValueError(f"a batch of {x.shape[0]} rows does not split into {steps} equal micro-batches")
        return jnp.swapaxes(x.reshape(x.shape[0] // steps, steps, *x.shape[1:]), 0, 1)

    micro = jax.tree.map(split, batches)
    keys = jax.random.split(dropout_key, steps)

    def add(total, xs):
        return jax.tree.map(jnp.add, total, gradients_of(*xs)), None

    shapes = jax.eval_shape(gradients_of, jax.tree.map(lambda x: x[0], micro), keys[0])
    total, _ = jax.lax.scan(add, jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes), (micro, keys))
    return jax.tree.map(lambda x: x / steps, total)


SURGERIES = ("none", "pcgrad", "pcgrad_two_updates", "gradvac", "cagrad", "mgda", "imtl_g")
UPDATES = ("joint", "per_task")


def updates_per_step(surgery: str, updates: str, num_tasks: int) -> int:
    """Optimizer updates one step applies to a batch of `num_tasks` tasks. The LR schedule counts updates."""
    if updates == "per_task":
        return num_tasks
    return 2 if surgery == "pcgrad_two_updates" else 1


def stack_seeds(trees: Sequence[Any]) -> Any:
    """One pytree per seed → one pytree whose leaves have a leading seed axis `[seeds, ...]`."""
    return jax.tree.map(lambda *leaves: jnp.stack(leaves), *trees)


def seed_slice(tree: Any, k: int) -> Any:
    """The `k`-th seed's pytree out of one stacked by `stack_seeds`."""
    return jax.tree.map(lambda leaf: leaf[k], tree)


def make_train_step(
    model: MultitaskBert,
    tx: optax.GradientTransformation,
    base_key: jax.Array,
    loss_combination: str = "sum",
    loss_weights: dict[str, float] | None = None,
    surgery: str = "none",
    objective: Objective = Objective(),
    gradvac_beta: float = 0.01,
    accumulation_steps: int = 1,
    updates: str = "joint",
) -> Callable[[TrainState, Batches], tuple[TrainState, dict[str, jax.Array]]]:
    """Builds `train_step(state, batches) -> (state, metrics)`, not yet jitted.

    `base_key` (a typed key, `jax.random.key`) seeds the step's randomness: step `s` draws its dropout and
    surgery keys from `fold_in(base_key, s)`. A stack of keys `[seeds]` trains a state stacked over seeds
    (`stack_seeds`): the step is vmapped over the leading seed axis of the state and of the keys, the batches are
    shared, and every metric gains the seed axis `[seeds]`.

    `surgery` "none" backpropagates the combined loss once. Any other value takes per-task gradients and
    combines the shared encoder's with that method of `jaxbert.gradients` (reduction `sum` or `mean` following
    `loss_combination`): `pcgrad`; `gradvac` with its targets in `state.extra`; `pcgrad_two_updates`, a PCGrad
    update followed in the same step by a plain update with the combined gradient, both gradients taken at the
    step's starting point (the "gradient surgery experiment" of the reports: two optimizer steps, one backward
    pass per task); `cagrad`, `mgda`, `imtl_g`.

    `updates` "per_task" makes one optimizer update per task instead, in turn (tasks in sorted order), each from
    that task's loss (times its weight under `loss_combination` "weights") at the params the previous task's
    update left: the course baseline's loop of backward and optimizer step per task (report 002's "Baseline").

    `accumulation_steps` > 1 splits every task's batch into that many micro-batches and averages their gradients
    (per task, for surgery) before the single update: see `accumulate`.
    """
    if surgery not in SURGERIES:
        raise ValueError(f"surgery {surgery!r} is not one of {', '.join(SURGERIES)}")
    if not jax.dtypes.issubdtype(base_key.dtype, jax.dtypes.prng_key) or base_key.ndim > 1:
        raise ValueError(f"base_key must be one typed key (jax.random.key) or a stack of them [seeds], got "
                         f"{base_key.dtype}{list(base_key.shape)}")
    if accumulation_steps > 1 and loss_combination == "balanced":
        raise ValueError("loss combination 'balanced' weighs tasks by the whole batch's losses: it cannot accumulate")
    if updates not in UPDATES:
        raise ValueError(f"updates {updates!r} is not one of {', '.join(UPDATES)}")
    if updates == "per_task" and (surgery != "none" or loss_combination not in ("sum", "weights")):
        raise ValueError(f"per-task updates apply each task's own loss: they take no surgery (got {surgery!r}) and "
                         f"loss combination sum or weights (got {loss_combination!r})")
    reduction = "mean" if loss_combination == "mean" else "sum"

    def apply(state, grads, tasks):
        """One optimizer update from `grads`, the gradient of `tasks`' losses (see `untouched`)."""
        deltas, opt_state = tx.update(grads, state.opt_state, state.params)
        new_state = state.replace(params=optax.apply_updates(state.params, deltas), opt_state=opt_state)
        return restore_untouched(tx, new_state, state, untouched(model, state.params, tasks))

    def gradients_of(params, teacher, batches, dropout_key):
        """`(results, grads)`: the combined loss's gradient, or with surgery each task's own."""
        fns = task_loss_fns(model, batches, dropout_key, objective, teacher)
        if surgery == "none":
            return joint_gradient(fns, params, loss_combination, loss_weights)
        return per_task_gradients(fns, params)

    def task_gradient(task, params, teacher, batches, dropout_key):
        """`(results, grad)` of `task`'s own loss; its dropout stream is the one a joint step gives it."""
        fn = task_loss_fns(model, batches, dropout_key, objective, teacher)[task]
        weight = loss_weights[task] if loss_combination == "weights" else 1.0

        def weighted(p):
            task_loss, parts = fn(p)
            return weight * task_loss, (task_loss, parts)

        (_, results), grad = jax.value_and_grad(weighted, has_aux=True)(params)
        return results, grad

    def per_task_update(state, batches, dropout_key):
        new_state, results, applied = state, {}, []
        for task in sorted(batches):
            results[task], grad = accumulate(partial(task_gradient, task, new_state.params,
                                                     state.extra.get("teacher")),
                                             batches, dropout_key, accumulation_steps)
            new_state = apply(new_state, grad, [task])
            applied.append(grad)
        loss = combine_losses({t: l for t, (l, _) in results.items()}, loss_combination, loss_weights)
        return new_state, results, jax.tree.map(lambda *g: sum(g), *applied), loss

    def joint_update(state, batches, dropout_key, surgery_key, extra):
        results, grads = accumulate(partial(gradients_of, state.params, state.extra.get("teacher")), batches,
                                    dropout_key, accumulation_steps)
        task_losses = {t: l for t, (l, _) in results.items()}
        if surgery == "none":
            return (apply(state, grads, batches), results, grads,
                    combine_losses(task_losses, loss_combination, loss_weights))
        task_grads = grads
        shared = [task_grads[t]["bert"] for t in sorted(batches)]
        if surgery in ("pcgrad", "pcgrad_two_updates"):
            encoder = gradients.pcgrad(shared, surgery_key, reduction)
        elif surgery == "gradvac":
            encoder, extra["gradvac_targets"] = gradients.gradvac(
                shared, surgery_key, state.extra["gradvac_targets"], gradvac_beta, reduction)
        else:
            encoder = gradients.aggregate(surgery, shared, surgery_key)
        grads = combine_task_gradients(list(task_grads.values()), state.params, encoder)
        new_state = apply(state, grads, batches)
        if surgery == "pcgrad_two_updates":
            plain = combine_task_gradients(list(task_grads.values()), state.params,
                                           gradients.aggregate(reduction, shared))
            new_state = apply(new_state, plain, batches)
        return new_state, results, grads, combine_losses(task_losses, reduction)

    def seed_step(state: TrainState, batches: Batches, base_key: jax.Array):
        dropout_key = jax.random.fold_in(base_key, state.step)
        surgery_key = jax.random.fold_in(dropout_key, len(batches))  # a stream the dropout keys do not use
        extra = dict(state.extra)
        if updates == "per_task":
            new_state, results, grads, loss = per_task_update(state, batches, dropout_key)
        else:
            new_state, results, grads, loss = joint_update(state, batches, dropout_key, surgery_key, extra)
        if "teacher" in extra:
            extra["teacher"] = smart.update_teacher(extra["teacher"], new_state.params,
                                                    objective.smart.teacher_momentum)
        new_state = new_state.replace(step=state.step + 1, extra=extra)
        metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads)}
        for task, (task_loss, parts) in results.items():
            metrics[f"loss/{task}"] = task_loss
            metrics.update({f"loss/{task}/{name}": value for name, value in parts.items() if len(parts) > 1})
        return new_state, metrics

    step = jax.vmap(seed_step, in_axes=(0, None, 0)) if base_key.ndim == 1 else seed_step

    def train_step(state: TrainState, batches: Batches):  # the name profiles and compile logs show
        return step(state, batches, base_key)

    return train_step


def make_predict_step(model: MultitaskBert, task: str,
                      seed_axis: bool = False) -> Callable[[Any, dict[str, jax.Array]], jax.Array]:
    """`predict(params, batch)` → the head's raw output (logits or scores) `[batch, ...]`, deterministic.

    With `seed_axis`, `params` are stacked over seeds and the output is `[batch, seeds, ...]`: batch first, so it
    is sharded like the batch and split into examples like an unstacked output.
    """
    def predict(params, batch):
        return model.apply({"params": params}, task, batch, deterministic=True)

    if seed_axis:
        return lambda params, batch: jnp.moveaxis(jax.vmap(predict, in_axes=(0, None))(params, batch), 0, 1)
    return predict


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
