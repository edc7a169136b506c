"""Task losses and how the per-task losses of one step are combined. All in float32."""

from __future__ import annotations

from typing import Mapping

import jax
import jax.numpy as jnp
import optax

from jaxbert.config import LossConfig
from jaxbert.tasks import Task

Array = jax.Array


def cross_entropy(logits: Array, labels: Array) -> Array:
    """Mean softmax cross-entropy; logits `[batch, classes]`, integer labels `[batch]`."""
    return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels).mean()


def binary_cross_entropy(logits: Array, labels: Array) -> Array:
    """Mean sigmoid cross-entropy on logits `[batch]` against 0/1 labels `[batch]`."""
    return optax.sigmoid_binary_cross_entropy(logits.astype(jnp.float32), labels.astype(jnp.float32)).mean()


def mean_squared_error(scores: Array, targets: Array) -> Array:
    return jnp.mean((scores.astype(jnp.float32) - targets.astype(jnp.float32)) ** 2)


def head_loss(task: Task, config: LossConfig, output: Array, labels: Array | None, sentences: Array) -> Array:
    """The loss of `task`'s head output `[batch, ...]`, or of its sentence embeddings `sentences`
    `[sentences per example, batch, d]` for the losses that read them.

    A softmax classifier takes `config.sst` (cross-entropy with `label_smoothing`, or the ordinal log loss), a
    binary one the sigmoid cross-entropy; a regression the squared error of its score, or (sts with `config.sts`
    "cosine_embedding") the cosine-embedding loss of its pair's embeddings, pairs scored at least
    `cosine_embedding_threshold` counting as similar; contrastive triplets supervised SimCSE at
    `simcse_temperature`, the third sentences as hard negatives.
    """
    if task.kind == "contrastive":
        premises, entailments, contradictions = sentences
        return simcse_loss(premises, entailments, config.simcse_temperature, hard_negatives=contradictions)
    if task.kind == "regression":
        if config.regression_loss(task) == "cosine_embedding":
            targets = jnp.where(labels >= config.cosine_embedding_threshold, 1, -1)
            return cosine_embedding_loss(sentences[0], sentences[1], targets, config.cosine_embedding_margin)
        return mean_squared_error(output, labels)
    if task.binary:
        return binary_cross_entropy(output, labels)
    if config.sst == "ordinal":
        return ordinal_log_loss(output, labels, config.ordinal_alpha)
    return label_smoothed_cross_entropy(output, labels, config.label_smoothing)


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


def _check_shape(name: str, x: Array, expected: tuple, layout: str) -> None:
    if tuple(x.shape) != tuple(expected):
        raise ValueError(f"{name} must be {layout} = {tuple(expected)}, got shape {tuple(x.shape)}")


def _check_rows(name: str, x: Array, layout: str) -> None:
    if x.ndim != 2:
        raise ValueError(f"{name} must be {layout}, got shape {tuple(x.shape)}")


def _check_temperature(temperature: float) -> None:
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")


def _unit_rows(x: Array) -> Array:
    """Rows scaled to unit L2 norm in float32, `[n, d]` → `[n, d]`; an all-zero row stays zero."""
    x = x.astype(jnp.float32)
    # rsqrt of the clamped squared norm: the gradient of `norm` itself is NaN at an all-zero (padding) row.
    return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), 1e-16))


def label_smoothed_cross_entropy(logits: Array, labels: Array, smoothing: float) -> Array:
    """Mean softmax cross-entropy against the target (1 − s)·onehot(y) + s/K (Szegedy et al. 2016).

    Args:
      logits: `[batch, classes]`.
      labels: integer `[batch]`.
      smoothing: s in [0, 1]; 0 gives `cross_entropy`.
    """
    _check_rows("logits", logits, "[batch, classes]")
    _check_shape("labels", labels, logits.shape[:1], "[batch]")
    if not 0 <= smoothing <= 1:
        raise ValueError(f"smoothing must be in [0, 1], got {smoothing}")
    targets = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1], dtype=jnp.float32), smoothing)
    return optax.softmax_cross_entropy(logits.astype(jnp.float32), targets).mean()


def ordinal_log_loss(logits: Array, labels: Array, alpha: float = 1.0) -> Array:
    """Ordinal Log Loss (Castagnos et al. 2022): OLL_α = −Σ_i log(1 − p_i)·|i − y|^α, mean over the batch.

    Probability left on class i costs more the farther i lies from the label y; the label's own class costs 0.

    Args:
      logits: `[batch, classes]`, classes in their ordinal order.
      labels: integer `[batch]`.
      alpha: the distance exponent α > 0.
    """
    _check_rows("logits", logits, "[batch, classes]")
    _check_shape("labels", labels, logits.shape[:1], "[batch]")
    if not alpha > 0:
        raise ValueError(f"alpha must be positive, got {alpha}")  # 0**0 = 1 would charge the label's own class
    z = logits.astype(jnp.float32)
    batch, classes = z.shape
    # log(1 − p_i) = logsumexp_{j≠i} z_j − logsumexp_j z_j stays exact where p_i rounds to 1 in float32,
    # which log1p(−p_i) does not.
    others = ~jnp.eye(classes, dtype=bool)
    log_rest = jax.nn.logsumexp(jnp.broadcast_to(z[:, None, :], (batch, classes, classes)), axis=-1, where=others)
    log_not_p = log_rest - jax.nn.logsumexp(z, axis=-1, keepdims=True)
    distance = jnp.abs(jnp.arange(classes) - labels[:, None]).astype(jnp.float32) ** alpha
    return -(log_not_p * distance).sum(-1).mean()


def supervised_contrastive_loss(embeddings: Array, labels: Array, temperature: float = 0.07,
                                mask: Array | None = None) -> Array:
    """Supervised contrastive loss L^sup_out (Khosla et al. 2020, eq. 2) on L2-normalized embeddings.

    For anchor i with positives P(i) (the other rows of its label) and candidates A(i) (every other row):
    ℓ_i = −1/|P(i)| Σ_{p∈P(i)} log(exp(z_i·z_p/τ) / Σ_{a∈A(i)} exp(z_i·z_a/τ)). The loss is the mean of ℓ_i over
    anchors that have a positive, and 0 when none has. Two dropout views of a batch are passed concatenated, with
    the labels repeated. Under the jitted step the arrays are global (sharded on the `data` axis), so the
    candidates span every device: XLA gathers them for the `[n, n]` similarity matrix.

    Args:
      embeddings: `[n, d]`.
      labels: integer `[n]`.
      temperature: τ > 0.
      mask: `[n]`, true for real rows; other rows (batch padding) are neither anchors nor candidates.
    """
    _check_rows("embeddings", embeddings, "[n, d]")
    n = embeddings.shape[0]
    _check_shape("labels", labels, (n,), "[n]")
    _check_temperature(temperature)
    valid = jnp.ones(n, bool) if mask is None else mask.astype(bool)
    _check_shape("mask", valid, (n,), "[n]")
    z = _unit_rows(embeddings)
    logits = z @ z.T / temperature
    candidate = valid[None, :] & ~jnp.eye(n, dtype=bool)
    log_prob = logits - jax.nn.logsumexp(logits, axis=-1, where=candidate, keepdims=True)
    positive = candidate & (labels[:, None] == labels[None, :])
    count = positive.sum(-1)
    per_anchor = -jnp.where(positive, log_prob, 0.0).sum(-1) / jnp.maximum(count, 1)
    anchor = valid & (count > 0)
    return jnp.where(anchor, per_anchor, 0.0).sum() / jnp.maximum(anchor.sum(), 1)


def simcse_loss(u: Array, v: Array, temperature: float = 0.05, hard_negatives: Array | None = None) -> Array:
    """SimCSE's InfoNCE (Gao et al. 2021, eqs. 1 and 5): row i of `u` against every row of `v`, its positive on
    the diagonal and the other rows as in-batch negatives; cosine similarity / τ, cross-entropy, mean.

    Unsupervised: `u`, `v` are two dropout views of the same sentences. Supervised: `v` holds the entailment
    embeddings and `hard_negatives` the contradiction ones, which join the candidates of every anchor. Under the
    jitted step the arrays are global (sharded on the `data` axis), so the in-batch negatives span every device:
    XLA gathers `v` and `hard_negatives` for the similarity matrix, where SimCSE's PyTorch code all-gathers by
    hand.

    Args:
      u: `[n, d]` anchors.
      v: `[n, d]` positives.
      temperature: τ > 0.
      hard_negatives: optional `[n, d]`.
    """
    _check_rows("u", u, "[n, d]")
    _check_shape("v", v, u.shape, "[n, d] like u")
    _check_temperature(temperature)
    candidates = v
    if hard_negatives is not None:
        _check_shape("hard_negatives", hard_negatives, u.shape, "[n, d] like u")
        candidates = jnp.concatenate([v, hard_negatives.astype(v.dtype)])
    logits = _unit_rows(u) @ _unit_rows(candidates).T / temperature  # [n, n] or [n, 2n]
    return cross_entropy(logits, jnp.arange(u.shape[0]))


def cosine_embedding_loss(u: Array, v: Array, targets: Array, margin: float = 0.0) -> Array:
    """`torch.nn.CosineEmbeddingLoss` with mean reduction: 1 − cos(u_i, v_i) where target_i = 1, and
    max(0, cos(u_i, v_i) − margin) where target_i = −1.

    Report 002 trains STS with it, a pair being similar (1) when its 0–5 score reaches 2.5.

    Args:
      u: `[n, d]` first sentences.
      v: `[n, d]` second sentences.
      targets: `[n]`, 1 (similar) or −1 (dissimilar).
      margin: in [−1, 1]; dissimilar pairs cost nothing below it.
    """
    _check_rows("u", u, "[n, d]")
    _check_shape("v", v, u.shape, "[n, d] like u")
    _check_shape("targets", targets, u.shape[:1], "[n]")
    if not -1 <= margin <= 1:
        raise ValueError(f"margin must be in [-1, 1], got {margin}")
    cos = jnp.sum(_unit_rows(u) * _unit_rows(v), axis=-1)
    return jnp.where(targets > 0, 1.0 - cos, jax.nn.relu(cos - margin)).mean()
