"""SMART regularization (Jiang et al. 2020): smoothness-inducing adversarial loss and Bregman proximal point.

The objective is L(θ) + λ_s R_s(θ) + μ D_Breg(θ, θ̃), with
  R_s(θ)      = mean_i max_{‖δ_i‖ ≤ ε} ℓ_s(f(x_i + δ_i; θ), f(x_i; θ))   (δ on the embedding-layer output)
  D_Breg(θ, θ̃) = mean_i ℓ_s(f(x_i; θ), f(x_i; θ̃))                       (θ̃ an EMA "teacher" of θ)
and ℓ_s a symmetric divergence between two outputs. All divergences are computed in float32.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp

from jaxbert.config import SmartConfig

Array = jax.Array
PyTree = Any

KINDS = ("classification", "binary", "regression")  # `Task.divergence`
_TINY = 1e-30  # keeps a zero gradient or zero perturbation from dividing by zero


def _log_probs(out: Array, kind: str) -> Array:
    """float32 log-probabilities `[batch, classes]`; a binary logit z is the two-class logits [z, 0]."""
    out = out.astype(jnp.float32)
    if kind == "binary":
        out = jnp.stack([out, jnp.zeros_like(out)], -1)  # log_softmax([z, 0]) = [log σ(z), log σ(−z)]
    return jax.nn.log_softmax(out, -1)


def divergence(p_out: Array, q_out: Array, kind: str) -> Array:
    """Symmetric divergence ℓ_s between two outputs of the same batch, averaged over it: float32 scalar (see
    `example_divergence`)."""
    return jnp.mean(example_divergence(p_out, q_out, kind))


def example_divergence(p_out: Array, q_out: Array, kind: str) -> Array:
    """Symmetric divergence ℓ_s between two outputs of the same batch, one per example: float32 `[batch]`.

    Args:
      p_out, q_out: logits `[batch, classes]` (classification), sigmoid logits `[batch]` (binary: the
        distribution [σ(z), 1 − σ(z)]) or scores `[batch]` (regression).
      kind: classification | binary | regression. Classification and binary give KL(p‖q) + KL(q‖p), regression
        the squared error (p − q)².

    Each KL direction holds its reference distribution constant, as MT-DNN's SymKlCriterion does: the gradient
    w.r.t. either side's logits is then softmax(own) − softmax(other), a bounded pull of the two
    together, whereas the full KL gradient adds log-ratio terms that grow without bound at saturated logits.
    """
    if kind not in KINDS:
        raise ValueError(f"kind {kind!r} is not one of {', '.join(KINDS)}")
    if kind == "regression":
        return (p_out.astype(jnp.float32) - q_out.astype(jnp.float32)) ** 2
    log_p, log_q = _log_probs(p_out, kind), _log_probs(q_out, kind)
    kl = lambda log_a, log_b: jnp.sum(jnp.exp(log_a) * (log_a - log_b), -1)  # noqa: E731
    return kl(jax.lax.stop_gradient(log_p), log_q) + kl(jax.lax.stop_gradient(log_q), log_p)


def _size(g: Array, norm: str) -> Array:
    """The norm of g `[sequences, seq, hidden]`: per token row's max |g| for inf (as MT-DNN), per example L2."""
    if norm == "inf":
        return jnp.max(jnp.abs(g), -1, keepdims=True)
    return jnp.sqrt(jnp.sum(g ** 2, axis=tuple(range(1, g.ndim)), keepdims=True))


def _unit(g: Array, norm: str) -> Array:
    return g / jnp.maximum(_size(g, norm), _TINY)


def _project(delta: Array, epsilon: float, norm: str) -> Array:
    """δ onto the ε-ball: clipped elementwise (inf) or rescaled per example (l2). ε = 0 gives δ = 0 exactly."""
    if norm == "inf":
        return jnp.clip(delta, -epsilon, epsilon)
    size = jnp.sqrt(jnp.sum(delta ** 2, axis=tuple(range(1, delta.ndim)), keepdims=True))
    return delta * jnp.minimum(1.0, epsilon / jnp.maximum(size, _TINY))


def adversarial_loss(forward: Callable[[Array], Array], clean_output: Array, shape: tuple[int, ...], kind: str,
                     key: Array, cfg: SmartConfig) -> Array:
    """Smoothness-inducing regularizer R_s (SMART Algorithm 1), unweighted: the caller multiplies by `cfg.weight`.

    Args:
      forward: δ `shape` ↦ the model's output on the perturbed input, with the dropout key of `clean_output`.
      clean_output: the model's output without perturbation (what `forward(zeros)` returns).
      shape: `[sequences, seq, hidden]`, the embedding-layer output's shape.
      kind: classification | binary | regression (see `divergence`).
      key: PRNG key for δ₀.

    δ₀ ~ N(0, σ²); K times: δ ← Π_ε(δ + η g/‖g‖) with g = ∇_δ ℓ_s(f(x + δ), sg(f(x))) (K = 0: δ = Π_ε(δ₀)).
    `cfg.ascent` "normalized" takes the smart-pytorch library's step instead, δ ← (δ + η g) / (‖δ + η g‖ + ε): ε
    only guards the division, and δ ends at unit norm (per token for inf), not inside an ε-ball (K = 0: δ = δ₀).
    δ is then a constant and ℓ_s(f(x + δ), f(x)) sends gradients into θ through both outputs (MT-DNN's
    SymKlCriterion(logits, adv_logits): each KL direction into its log-probability side only). With
    `cfg.samples` S > 1, S starts are drawn and refined, and each example keeps the largest of its S divergences
    (report 001's max over random perturbations); S = 1 uses `key` itself. A projected δ ends in the ball, so
    ε = 0 gives δ = 0 and a loss of exactly 0. δ stays float32 whatever `forward` computes in, but a bfloat16 model
    adds it to embeddings of magnitude ~1 whose spacing is ~4e-3: the paper's ε = 1e-5 is mostly rounded away
    there and the loss is ~0.
    """
    target = jax.lax.stop_gradient(clean_output)
    # With the target constant the KL kinds reduce to ∇_δ KL(f(x)‖f(x + δ)) (see `divergence`), VAT's
    # power-iteration step.
    ascent = jax.grad(lambda d: divergence(forward(d), target, kind))

    normalized = cfg.ascent == "normalized"

    def perturbation(key):
        delta = cfg.noise_std * jax.random.normal(key, shape, jnp.float32)
        if not cfg.steps:
            return delta if normalized else _project(delta, cfg.epsilon, cfg.norm)
        for _ in range(cfg.steps):
            if normalized:
                step = delta + cfg.step_size * ascent(delta)
                delta = step / (_size(step, cfg.norm) + cfg.epsilon)
            else:
                delta = _project(delta + cfg.step_size * _unit(ascent(delta), cfg.norm), cfg.epsilon, cfg.norm)
        return delta

    keys = [key] if cfg.samples == 1 else list(jax.random.split(key, cfg.samples))
    per_sample = [example_divergence(forward(jax.lax.stop_gradient(perturbation(k))), clean_output, kind)
                  for k in keys]
    return jnp.mean(functools.reduce(jnp.maximum, per_sample))


def bregman_loss(output: Array, teacher_output: Array, kind: str) -> Array:
    """Bregman proximal point term ℓ_s(f(x; θ), f(x; θ̃)); the teacher's output is a constant. Unweighted (μ)."""
    return divergence(output, jax.lax.stop_gradient(teacher_output), kind)


def update_teacher(teacher_params: PyTree, params: PyTree, momentum: float | Array) -> PyTree:
    """θ̃ ← β θ̃ + (1 − β) θ leaf by leaf, in the teacher's dtypes (SMART's momentum Bregman proximal point)."""
    return jax.tree.map(lambda t, p: (momentum * t + (1 - momentum) * p).astype(t.dtype), teacher_params, params)
