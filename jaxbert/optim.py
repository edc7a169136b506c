"""AdamW exactly as in the minBERT course's reference optimizer, as an Optax transformation.

The reference (``optimizer.py`` of the minBERT assignment) differs from ``optax.adamw`` in
two ways that change the trajectory, so ``optax.adamw`` cannot stand in for it:

* bias correction uses the "efficient" form of Kingma & Ba (2015, Sec. 2), which folds the
  correction into the step size and leaves ``eps`` *uncorrected*::

      alpha_t = lr_t * sqrt(1 - b2**t) / (1 - b1**t)
      p'      = p - alpha_t * m_t / (sqrt(v_t) + eps)

  (``optax.adamw`` uses ``m_hat / (sqrt(v_hat) + eps)``, i.e. a different effective ``eps``);
* decoupled weight decay is applied *after* the Adam step, to the already-updated parameter::

      p_next  = p' - lr_t * weight_decay * p'

  (``optax.adamw`` decays the old parameter ``p``).

Like the reference, which keeps ``state["step"]`` per parameter, ``t`` counts each parameter's own updates: a
head that sits out an update (``jaxbert.train_step.untouched``) keeps its count, so its first update has the
bias correction of ``t = 1`` however late it comes. The learning-rate schedule follows the count of all updates.

Optax applies updates as ``p_next = p + u``, hence ``u = -a - lr_t * wd * (p - a)`` with
``a = alpha_t * m_t / (sqrt(v_t) + eps)``; this is why ``update`` needs ``params``.
"""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple, Optional, Union

import jax
import jax.numpy as jnp
import optax

from jaxbert.choices import SCHEDULES

__all__ = [
    "ScaleByRefAdamWState",
    "adamw",
    "decay_mask",
    "learning_rate_schedule",
    "linear_warmup_decay",
    "make_optimizer",
]

ScalarOrSchedule = Union[float, optax.Schedule]
MaskOrFn = Optional[Union[Any, Callable[[optax.Params], Any]]]



class ScaleByRefAdamWState(NamedTuple):
    """State of :func:`adamw`.

    Attributes:
      count: number of updates applied so far (int32): the learning-rate schedule's step.
      counts: each leaf's own number of updates (int32 scalars, the structure of the params): its bias
        correction's ``t``, as the reference keeps a step count per parameter. They move together with
        ``count`` unless an update leaves some leaves out (see ``jaxbert.train_step.untouched``).
      mu: first moments, one per parameter leaf (float32, or the parameter dtype if wider).
      nu: second moments, same structure and dtypes as ``mu``.
    """

    count: jax.Array
    counts: optax.Updates
    mu: optax.Updates
    nu: optax.Updates


def _moment_dtype(x: jax.Array) -> jnp.dtype:
    # Low-precision params (bf16/fp16) would make v underflow and m drift, so moments are
    # held in at least float32; float64 params (x64 mode) keep float64.
    return jnp.promote_types(x.dtype, jnp.float32)


def _one_minus_pow(b: float, t: jax.Array) -> jax.Array:
    # 1 - b**t for t >= 1. Evaluating b**t in float32 first rounds b (0.999 -> 0.99900001)
    # and then cancels, leaving ~1e-5 relative error at t=1; expm1 of a log taken in
    # Python double precision keeps it at float32 rounding, like the reference's doubles.
    return -jnp.expm1(t * (math.log(b) if b > 0 else -math.inf))


def adamw(
    learning_rate: ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-6,
    weight_decay: float = 0.0,
    correct_bias: bool = True,
    mask: MaskOrFn = None,
) -> optax.GradientTransformation:
    """The minBERT reference AdamW update (see the module docstring for the exact formulas).

    Args:
      learning_rate: a constant step size, or an Optax schedule evaluated at the number of
        updates already applied (0 for the first update), as ``optax.scale_by_schedule`` does.
      b1: decay rate of the first moment.
      b2: decay rate of the second moment.
      eps: added to ``sqrt(v_t)`` (not to the bias-corrected ``sqrt(v_hat)``).
      weight_decay: decoupled weight decay coefficient, scaled by the plain ``lr_t`` (not by
        ``alpha_t``) and applied to the parameter after the Adam step.
      correct_bias: if False, ``alpha_t = lr_t`` (no bias correction).
      mask: which leaves get weight decay: a pytree of Python bools with the structure of
        the params (or a prefix of it), or a callable ``params -> such a pytree``, e.g.
        :func:`decay_mask`. True means decayed. ``None`` decays every leaf.

    Returns:
      An ``optax.GradientTransformation`` whose ``update`` must be given ``params`` whenever
      ``weight_decay != 0``.
    """

    def init_fn(params: optax.Params) -> ScaleByRefAdamWState:
        zeros = lambda p: jnp.zeros(jnp.shape(p), _moment_dtype(p))
        return ScaleByRefAdamWState(
            count=jnp.zeros([], jnp.int32),
            counts=jax.tree.map(lambda _: jnp.zeros([], jnp.int32), params),
            mu=jax.tree.map(zeros, params),
            nu=jax.tree.map(zeros, params),
        )

    def update_fn(updates, state, params=None):
        if weight_decay != 0.0 and params is None:
            raise ValueError(
                "adamw: weight_decay != 0 needs the current params; call "
                "update(grads, state, params)."
            )
        mu = jax.tree.map(
            lambda g, m: b1 * m + (1.0 - b1) * g.astype(m.dtype), updates, state.mu
        )
        nu = jax.tree.map(
            lambda g, v: b2 * v + (1.0 - b2) * jnp.square(g.astype(v.dtype)), updates, state.nu
        )
        # The schedule sees the pre-increment count, so step t uses schedule(t - 1).
        lr = learning_rate(state.count) if callable(learning_rate) else learning_rate
        counts = jax.tree.map(optax.safe_increment, state.counts)

        def leaf_update(g, m, v, count, p, decay):
            alpha = lr
            if correct_bias:
                t = count.astype(m.dtype)
                alpha = lr * jnp.sqrt(_one_minus_pow(b2, t)) / _one_minus_pow(b1, t)
            a = alpha * m / (jnp.sqrt(v) + eps)
            u = -a
            if decay:
                # Decay the post-Adam parameter p - a, as the reference does in place.
                u = u - lr * weight_decay * (p.astype(m.dtype) - a)
            return u.astype(g.dtype)

        if weight_decay == 0.0:
            new_updates = jax.tree.map(
                lambda g, m, v, t: leaf_update(g, m, v, t, None, False), updates, mu, nu, counts
            )
        else:
            decay = mask(params) if callable(mask) else mask
            if decay is None:
                decay = jax.tree.map(lambda _: True, params)
            else:
                # Broadcast a prefix mask (e.g. {"encoder": False}) down to every leaf.
                decay = jax.tree.map(lambda d, sub: jax.tree.map(lambda _: bool(d), sub),
                                     decay, params)
            new_updates = jax.tree.map(leaf_update, updates, mu, nu, counts, params, decay)
        return new_updates, ScaleByRefAdamWState(
            count=optax.safe_increment(state.count), counts=counts, mu=mu, nu=nu)

    return optax.GradientTransformation(init_fn, update_fn)


def _path_names(path) -> list[str]:
    names = []
    for key in path:
        for attr in ("key", "name", "idx"):  # DictKey / GetAttrKey / SequenceKey
            if hasattr(key, attr):
                names.append(str(getattr(key, attr)))
                break
    return names


def decay_mask(params: optax.Params) -> Any:
    """Weight-decay mask following the BERT convention: no decay for biases and LayerNorm.

    A leaf is exempt (False) if it is named ``bias`` or ``scale`` (Flax's LayerNorm gain), or
    if any enclosing module's name contains ``LayerNorm`` or ``layer_norm`` (case-insensitive).
    Everything else (kernels, embeddings) is decayed (True).

    Args:
      params: a parameter pytree (nested dicts as produced by Flax, or any pytree).

    Returns:
      A pytree of Python bools with the structure of ``params``.
    """

    def is_decayed(path, _):
        names = _path_names(path)
        if names and names[-1] in ("bias", "scale"):
            return False
        return not any("layernorm" in n.lower() or "layer_norm" in n.lower() for n in names)

    return jax.tree_util.tree_map_with_path(is_decayed, params)


def linear_warmup_decay(peak_lr: float, total_steps: int, warmup_steps: int) -> optax.Schedule:
    """Linear warm-up from 0 to ``peak_lr``, then linear decay to 0 at ``total_steps``.

    Same shape as Hugging Face's ``get_linear_schedule_with_warmup``; after ``total_steps``
    the rate stays 0.

    Args:
      peak_lr: learning rate reached at ``warmup_steps``.
      total_steps: step at which the rate reaches 0.
      warmup_steps: length of the warm-up; 0 starts directly at ``peak_lr``.

    Returns:
      A schedule mapping the step count (0-based) to the learning rate.
    """
    if total_steps <= 0 or not 0 <= warmup_steps <= total_steps:
        raise ValueError(
            f"need total_steps > 0 and 0 <= warmup_steps <= total_steps, got "
            f"total_steps={total_steps}, warmup_steps={warmup_steps}"
        )

    def schedule(count):
        warm = count / max(warmup_steps, 1)
        decay = (total_steps - count) / max(total_steps - warmup_steps, 1)
        return peak_lr * jnp.clip(jnp.where(count < warmup_steps, warm, decay), 0.0, 1.0)

    return schedule


def learning_rate_schedule(learning_rate: float, total_steps: int, warmup_ratio: float = 0.0,
                           schedule: str = "constant") -> ScalarOrSchedule:
    """The rate of :func:`make_optimizer`: ``learning_rate`` itself, or a schedule of the number of updates
    already applied (see there)."""
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got schedule={schedule!r}")
    warmup_steps = int(warmup_ratio * total_steps)
    if schedule == "linear":
        return linear_warmup_decay(learning_rate, total_steps, warmup_steps)
    if warmup_steps > 0:
        # linear_schedule holds its end value after the transition: warm-up, then constant.
        return optax.linear_schedule(0.0, learning_rate, warmup_steps)
    return learning_rate


def make_optimizer(
    learning_rate: float,
    total_steps: int,
    *,
    warmup_ratio: float = 0.0,
    schedule: str = "constant",
    weight_decay: float = 0.0,
    decay_all: bool = False,
    clip_norm: Optional[float] = None,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-6,
    correct_bias: bool = True,
) -> optax.GradientTransformation:
    """The training optimizer: optional global-norm clipping, then the reference AdamW.

    Weight decay spares biases and LayerNorm parameters (:func:`decay_mask`) unless ``decay_all``.

    Args:
      learning_rate: peak learning rate.
      total_steps: number of optimizer steps in the run (end of the ``"linear"`` decay).
      warmup_ratio: fraction of ``total_steps`` spent warming up linearly from 0.
      schedule: ``"constant"`` (warm-up, then hold the peak) or ``"linear"`` (warm-up, then
        decay linearly to 0 at ``total_steps``).
      weight_decay: decoupled weight decay coefficient.
      decay_all: decay every parameter, as the course's AdamW does (biases and LayerNorm included).
      clip_norm: if set, gradients are rescaled to at most this global L2 norm before Adam.
      b1, b2, eps, correct_bias: passed to :func:`adamw`.

    Returns:
      An ``optax.GradientTransformation`` (its ``update`` needs ``params``).
    """
    lr = learning_rate_schedule(learning_rate, total_steps, warmup_ratio, schedule)
    transforms = [] if clip_norm is None else [optax.clip_by_global_norm(clip_norm)]
    transforms.append(
        adamw(lr, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay,
              correct_bias=correct_bias, mask=None if decay_all else decay_mask)
    )
    return optax.chain(*transforms)
