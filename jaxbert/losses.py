"""Task losses and how the per-task losses of one step are combined. All in float32."""

from __future__ import annotations

from typing import Mapping

import jax
import jax.numpy as jnp
import optax

Array = jax.Array


def cross_entropy(logits: Array, labels: Array) -> Array:
    """Mean softmax cross-entropy; logits `[batch, classes]`, integer labels `[batch]`."""
    return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels).mean()


def binary_cross_entropy(logits: Array, labels: Array) -> Array:
    """Mean sigmoid cross-entropy on logits `[batch]` against 0/1 labels `[batch]`."""
    return optax.sigmoid_binary_cross_entropy(logits.astype(jnp.float32), labels.astype(jnp.float32)).mean()


def mean_squared_error(scores: Array, targets: Array) -> Array:
    return jnp.mean((scores.astype(jnp.float32) - targets.astype(jnp.float32)) ** 2)


TASK_LOSS = {"sst": cross_entropy, "cfimdb": cross_entropy, "para": binary_cross_entropy, "sts": mean_squared_error}


def combine_losses(losses: Mapping[str, Array], how: str = "sum", weights: Mapping[str, float] | None = None) -> Array:
    """One scalar from the per-task losses of a step.

    `balanced` weights task t by ω_t = (Σ_k L_k) / L_t under stop-gradient, so every task contributes the same
    amount of loss and a task whose loss is small is not drowned out by the others.
    """
    if how == "sum":
        return sum(losses.values())
    if how == "mean":
        return sum(losses.values()) / len(losses)
    if how == "weights":
        return sum(weights[task] * loss for task, loss in losses.items())
    if how == "balanced":
        total = jax.lax.stop_gradient(sum(losses.values()))
        return sum(total / jnp.maximum(jax.lax.stop_gradient(loss), 1e-12) * loss for loss in losses.values())
    raise ValueError(f"loss combination {how!r} is not one of sum, mean, weights, balanced")
