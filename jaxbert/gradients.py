"""Multitask gradient aggregation (gradient surgery) as pure, jittable ``jnp`` functions.

Every aggregator takes ``task_grads``: a sequence of ``T`` pytrees with the same structure
(typically the gradients of each task's loss w.r.t. the *shared* encoder parameters) and
returns one pytree of that structure: the update direction to hand to the optimizer.

Conventions shared by all functions
-----------------------------------
* **Whole-pytree geometry.** Dot products, norms and cosines are taken over the entire pytree
  flattened into one vector (``sum over leaves of <a_leaf, b_leaf>``), never per tensor.
* **float32 math.** Leaves are cast to float32 before any product (so bfloat16 / float16
  gradients are fine), dot products use ``Precision.HIGHEST`` (no TF32 on GPUs), and the
  returned tree has float32 leaves whatever the input dtype; cast it back yourself if needed.
* **Gram-matrix formulation.** Each method only ever needs inner products between task
  gradients, and every intermediate vector (``g_i^PC`` of PCGrad/GradVac, ``g_w`` of
  CAGrad/MGDA, ...) is a linear combination of the original ``g_1..g_T``. So we compute the
  ``T x T`` Gram matrix ``G[i, j] = g_i . g_j`` once (one pass over the parameters), run the
  algorithm on coefficient vectors ``c`` (``v = sum_k c_k g_k``, ``v . g_j = (c @ G)[j]``,
  ``||v||^2 = c @ G @ c``) and materialise the result with a single weighted sum of the task
  gradients at the end. This is exact in real arithmetic, costs O(T^2 P) instead of
  O(T^3 P) and never stores the ``T`` intermediate ``g_i^PC`` vectors.
* **Jittable.** ``T`` (the number of trees) is static; the per-task procedures of
  PCGrad/GradVac are ``vmap``-ed over ``i`` with a ``lax.fori_loop`` over the visiting order,
  data-dependent branches are ``jnp.where``, iterative solvers use ``lax.fori_loop``.
  String options (``reduction``, ``name``) must be static under ``jax.jit``. The public
  aggregators are (thin wrappers around) ``jax.jit``-compiled functions (option strings /
  ``steps`` static), so eager calls compile once per input structure; inside a jitted train
  step they simply inline.
* **Degenerate inputs.** Zero-norm gradients never divide by zero: the corresponding
  projection / adjustment is skipped (PCGrad, GradVac), cosines are clamped to [-1, 1].

Public API
----------
``pcgrad`` (+ ``pcgrad_projected``), ``gradvac`` (+ ``gradvac_init``), ``cagrad``,
``mgda_ub``, ``imtl_g``, ``aggregate`` (name-based dispatch of the stateless ones) and the
helpers ``gram_matrix`` / ``combine``.
"""

from __future__ import annotations

from functools import partial
from typing import Any, Sequence, Tuple

import jax
import jax.numpy as jnp
from jax import lax

__all__ = [
    "AGGREGATORS",
    "aggregate",
    "cagrad",
    "combine",
    "gradvac",
    "gradvac_init",
    "gram_matrix",
    "imtl_g",
    "mgda_ub",
    "pcgrad",
    "pcgrad_projected",
]

PyTree = Any

_EPS = 1e-12          # guard for squared norms / Gram quantities
_TINY = 1e-30         # guard inside square roots
_HI = lax.Precision.HIGHEST
_REDUCTIONS = ("mean", "sum")


# ----------------------------------------------------------------------------- helpers

def _check(task_grads: Sequence[PyTree]) -> int:
    task_grads = list(task_grads)
    if not task_grads:
        raise ValueError("task_grads must contain at least one gradient pytree")
    treedef = jax.tree_util.tree_structure(task_grads[0])
    for t, g in enumerate(task_grads[1:], start=1):
        if jax.tree_util.tree_structure(g) != treedef:
            raise ValueError(f"task_grads[{t}] has a different tree structure than task_grads[0]")
    return len(task_grads)


def _check_reduction(reduction: str) -> None:
    if reduction not in _REDUCTIONS:
        raise ValueError(f"unknown reduction {reduction!r}; expected one of {_REDUCTIONS}")


def gram_matrix(task_grads: Sequence[PyTree]) -> jax.Array:
    """``G[i, j] = <g_i, g_j>`` over the whole flattened pytrees, in float32 (``[T, T]``)."""
    T = _check(task_grads)
    leaves = [jax.tree_util.tree_leaves(g) for g in task_grads]
    G = jnp.zeros((T, T), jnp.float32)
    for per_task in zip(*leaves):
        M = jnp.stack([jnp.ravel(x).astype(jnp.float32) for x in per_task])   # [T, n]
        G = G + jnp.matmul(M, M.T, precision=_HI)
    return 0.5 * (G + G.T)   # exactly symmetric


def combine(task_grads: Sequence[PyTree], weights: jax.Array) -> PyTree:
    """``sum_k weights[k] * g_k`` leafwise, in float32 (the returned leaves are float32)."""
    T = _check(task_grads)
    weights = jnp.asarray(weights, jnp.float32)

    def leaf(*xs):
        out = weights[0] * xs[0].astype(jnp.float32)
        for k in range(1, T):
            out = out + weights[k] * xs[k].astype(jnp.float32)
        return out

    return jax.tree_util.tree_map(leaf, *task_grads)


def _quad(c: jax.Array, G: jax.Array) -> jax.Array:
    """``||sum_k c_k g_k||^2`` (clamped at 0 against rounding)."""
    return jnp.maximum(jnp.dot(c, jnp.dot(G, c, precision=_HI), precision=_HI), 0.0)


@partial(jax.jit, static_argnums=1)
def _task_orders(key: jax.Array, T: int) -> jax.Array:
    """``[T, T]``: row ``i`` is the random visiting order of task ``i``, a permutation of all
    ``T`` indices (callers skip ``j == i``). Part of the contract, so that it can be
    reproduced: row ``i`` == ``jax.random.permutation(jax.random.fold_in(key, i), T)``
    (computed under ``vmap``, which gives the same values as the per-``i`` calls). Jitted on
    its own so eager callers compile the (comparatively costly) threefry/sort graph once."""
    return jax.vmap(lambda i: jax.random.permutation(jax.random.fold_in(key, i), T))(jnp.arange(T))


def _reduce(coeffs: jax.Array, reduction: str) -> jax.Array:
    """Rows of ``coeffs`` are the projected per-task gradients; returns the combination weights."""
    w = jnp.sum(coeffs, axis=0)
    return w / coeffs.shape[0] if reduction == "mean" else w


# ----------------------------------------------------------------------------- PCGrad

def pcgrad(task_grads: Sequence[PyTree], key: jax.Array, reduction: str = "mean") -> PyTree:
    """PCGrad (Yu et al., 2020, "Gradient Surgery for Multi-Task Learning", Algorithm 1).

    For each task ``i``: ``g_i^PC = g_i``; for every other task ``j`` in the random order
    ``jax.random.permutation(jax.random.fold_in(key, i), T)`` (``j == i`` skipped), if
    ``g_i^PC . g_j < 0`` then ``g_i^PC -= (g_i^PC . g_j) / ||g_j||^2 * g_j`` where ``g_j`` is
    the *original* gradient of task ``j``. Projections onto a zero ``g_j`` are skipped.

    ``reduction="mean"`` returns ``mean_i g_i^PC`` and ``"sum"`` returns ``sum_i g_i^PC``
    (the paper's Algorithm 1 sums; ``mean`` keeps the scale of ordinary loss averaging).
    Returns a float32 pytree (see module docstring).
    """
    _check_reduction(reduction)
    T = _check(task_grads)
    return _pcgrad_apply(task_grads, _task_orders(key, T), reduction)


@partial(jax.jit, static_argnames=("reduction",))
def _pcgrad_apply(task_grads, orders, reduction):
    coeffs = _pcgrad_coefficients(gram_matrix(task_grads), orders)
    return combine(task_grads, _reduce(coeffs, reduction))


def pcgrad_projected(task_grads: Sequence[PyTree], key: jax.Array) -> list:
    """The per-task projected gradients ``[g_1^PC, ..., g_T^PC]`` of :func:`pcgrad` (same
    order, same key convention), as float32 pytrees; useful for logging and tests."""
    T = _check(task_grads)
    return _pcgrad_projected_apply(task_grads, _task_orders(key, T))


@jax.jit
def _pcgrad_projected_apply(task_grads, orders):
    coeffs = _pcgrad_coefficients(gram_matrix(task_grads), orders)
    return [combine(task_grads, coeffs[i]) for i in range(coeffs.shape[0])]


def _pcgrad_coefficients(G: jax.Array, orders: jax.Array) -> jax.Array:
    """Row ``i``: coefficients of ``g_i^PC`` in the basis of the original task gradients."""
    T = G.shape[0]
    eye = jnp.eye(T, dtype=jnp.float32)

    def one_task(i, order):
        def visit(k, c):
            j = order[k]
            nj = G[j, j]
            dot = jnp.dot(c, G[:, j], precision=_HI)
            do = (j != i) & (dot < 0.0) & (nj > 0.0)
            return c - jnp.where(do, dot / jnp.where(do, nj, 1.0), 0.0) * eye[j]
        return lax.fori_loop(0, T, visit, eye[i])

    return jax.vmap(one_task)(jnp.arange(T), orders)


# ----------------------------------------------------------------------------- GradVac

def gradvac_init(num_tasks: int) -> jax.Array:
    """Initial GradVac targets: the ``[T, T]`` EMA cosine targets ``phi_hat`` all zero."""
    return jnp.zeros((num_tasks, num_tasks), jnp.float32)


def gradvac(task_grads: Sequence[PyTree], key: jax.Array, targets: jax.Array,
            beta: float = 0.01, reduction: str = "mean",
            ema_from_projected: bool = False) -> Tuple[PyTree, jax.Array]:
    """Gradient Vaccine (Wang et al., ICLR 2021, Algorithm 1); returns ``(update, new_targets)``.

    For each task ``i``: ``g_i^PC = g_i``; for every other task ``j`` in the same random order
    as :func:`pcgrad` (``permutation(fold_in(key, i), T)``, ``j == i`` skipped)::

        phi_ij = cos(g_i^PC, g_j)
        if phi_ij < phi_hat_ij:
            g_i^PC += ||g_i^PC|| (phi_hat_ij sqrt(1-phi_ij^2) - phi_ij sqrt(1-phi_hat_ij^2))
                      / (||g_j|| sqrt(1-phi_hat_ij^2)) * g_j
        phi_hat_ij <- (1 - beta) phi_hat_ij + beta * phi_ij^EMA

    after which ``cos(g_i^PC, g_j) == phi_hat_ij`` (the old target). ``targets`` is the
    ``[T, T]`` array ``phi_hat`` (start from :func:`gradvac_init`; the diagonal is unused and
    returned unchanged); thread ``new_targets`` through the training state.

    EMA source (``phi_ij^EMA``): by default the cosine between the *original* ``g_i`` and
    ``g_j``, i.e. measured before any adjustment. Rationale: Sec. 3.3 of the paper defines the
    target as an EMA of the gradient similarity observed along training, which is a property
    of the tasks' raw gradients; using it keeps the statistic independent of the random
    visiting order and of the surgery itself, and symmetric (``phi_hat_ij`` and
    ``phi_hat_ji`` receive the same update). ``ema_from_projected=True`` instead uses the
    ``phi_ij`` of the partially adjusted ``g_i^PC`` computed in the loop (the literal reading
    of Algorithm 1, as in LibMTL); for the first ``j`` visited both coincide.

    Cosines are clamped to [-1, 1]; ``sqrt(1 - phi_hat^2)`` is floored at 1e-6; nothing is
    adjusted when ``||g_j|| = 0`` (and a zero ``g_i^PC`` stays zero: its adjustment is
    proportional to its norm). ``reduction`` as in :func:`pcgrad`. Float32 output.
    """
    _check_reduction(reduction)
    T = _check(task_grads)
    targets = jnp.asarray(targets, jnp.float32)
    if targets.shape != (T, T):
        raise ValueError(f"targets must have shape {(T, T)}, got {targets.shape}")
    return _gradvac_apply(task_grads, _task_orders(key, T), targets, beta, reduction, ema_from_projected)


@partial(jax.jit, static_argnames=("reduction", "ema_from_projected"))
def _gradvac_apply(task_grads, orders, targets, beta, reduction, ema_from_projected):
    T = len(task_grads)
    G = gram_matrix(task_grads)
    diag = jnp.diagonal(G)
    norms = jnp.sqrt(jnp.maximum(diag, 0.0))
    safe_norms = jnp.where(norms > 0.0, norms, 1.0)
    cos0 = jnp.clip(G / (safe_norms[:, None] * safe_norms[None, :]), -1.0, 1.0)
    cos0 = jnp.where((norms[:, None] > 0.0) & (norms[None, :] > 0.0), cos0, 0.0)
    eye = jnp.eye(T, dtype=jnp.float32)

    def one_task(i, order):
        def visit(k, carry):
            c, phis = carry
            j = order[k]
            nj = norms[j]
            ni_pc = jnp.sqrt(_quad(c, G))
            denom = ni_pc * nj
            phi = jnp.dot(c, G[:, j], precision=_HI) / jnp.where(denom > 0.0, denom, 1.0)
            phi = jnp.where(denom > 0.0, jnp.clip(phi, -1.0, 1.0), 0.0)
            phi_hat = targets[i, j]
            s_hat = jnp.maximum(jnp.sqrt(jnp.maximum(1.0 - phi_hat ** 2, 0.0)), 1e-6)
            s = jnp.sqrt(jnp.maximum(1.0 - phi ** 2, 0.0))
            coef = ni_pc * (phi_hat * s - phi * s_hat) / (jnp.where(nj > 0.0, nj, 1.0) * s_hat)
            do = (j != i) & (phi < phi_hat) & (nj > 0.0)
            return c + jnp.where(do, coef, 0.0) * eye[j], phis + phi * eye[j]
        return lax.fori_loop(0, T, visit, (eye[i], jnp.zeros((T,), jnp.float32)))

    coeffs, phis = jax.vmap(one_task)(jnp.arange(T), orders)
    ema_source = phis if ema_from_projected else cos0
    new_targets = jnp.where(eye > 0, targets, (1.0 - beta) * targets + beta * ema_source)
    return combine(task_grads, _reduce(coeffs, reduction)), new_targets


# ----------------------------------------------------------------------------- simplex tools

def _project_simplex(v: jax.Array) -> jax.Array:
    """Euclidean projection onto the probability simplex (sort-based, jittable)."""
    T = v.shape[-1]
    u = jnp.sort(v)[::-1]
    css = jnp.cumsum(u)
    idx = jnp.arange(1, T + 1, dtype=v.dtype)
    rho = jnp.sum(u - (css - 1.0) / idx > 0.0)           # >= 1 always
    theta = (jnp.take(css, rho - 1) - 1.0) / rho.astype(v.dtype)
    return jnp.maximum(v - theta, 0.0)


def _two_point_min_norm(aa: jax.Array, ab: jax.Array, bb: jax.Array) -> jax.Array:
    """Sener & Koltun Algorithm 1: ``gamma`` minimising ``||(1-gamma) a + gamma b||^2`` over
    [0, 1] from the inner products ``a.a, a.b, b.b`` (``gamma = 0`` if ``a == b``)."""
    den = aa + bb - 2.0 * ab
    gamma = (aa - ab) / jnp.where(den > _EPS * (aa + bb + _EPS), den, 1.0)
    gamma = jnp.where(den > _EPS * (aa + bb + _EPS), gamma, 0.0)
    return jnp.clip(gamma, 0.0, 1.0)


# ----------------------------------------------------------------------------- CAGrad

def _cagrad_weights(G: jax.Array, c, steps: int) -> Tuple[jax.Array, jax.Array]:
    """Solves CAGrad's dual on the Gram matrix; returns (final combination weights, w*)."""
    T = G.shape[0]
    b = jnp.full((T,), 1.0 / T, jnp.float32)
    Gb = jnp.dot(G, b, precision=_HI)
    g0_sq = jnp.maximum(jnp.dot(b, Gb, precision=_HI), 0.0)
    sqrt_phi = c * jnp.sqrt(g0_sq)                        # sqrt(phi) = c ||g0||

    def F_change(w, w_new):
        # F(w_new) - F(w) evaluated as a difference (not as F(w_new) - F(w) in float32, whose
        # cancellation would limit w to ~sqrt(eps) accuracy): with delta = w_new - w,
        # ||g_new|| - ||g_w|| = delta' G (w_new + w) / (||g_new|| + ||g_w||). delta is taken
        # in the simplex's plane (sum 0): the rounding of w_new - w off that plane, multiplied
        # by the large common part of G b and G w, would otherwise swamp the change near w*.
        delta = w_new - w
        delta = delta - jnp.mean(delta)
        s, s_new = jnp.sqrt(_quad(w, G)), jnp.sqrt(_quad(w_new, G))
        num = jnp.dot(delta, jnp.dot(G, w_new + w, precision=_HI), precision=_HI)
        return jnp.dot(delta, Gb, precision=_HI) + sqrt_phi * num / jnp.maximum(s + s_new, _TINY)

    def gradF(w):
        Gw = jnp.dot(G, w, precision=_HI)
        return Gb + sqrt_phi * Gw / jnp.sqrt(_quad(w, G) + _TINY)

    # Step lengths 2, 1, 1/2, ..., 2^-40 along the normalised negative gradient: the best one
    # (or no move) is kept, so F never increases and the scale of G does not matter.
    lengths = 2.0 ** -jnp.arange(-1, 41, dtype=jnp.float32)

    def body(_, w):
        g = gradF(w)
        # Projection onto the simplex ignores shifts along (1, ..., 1): drop that component so
        # the step lengths measure the actual move within the simplex's plane.
        g = g - jnp.mean(g)
        g = g / jnp.maximum(jnp.linalg.norm(g), _TINY)
        cands = jax.vmap(_project_simplex)(w[None, :] - lengths[:, None] * g[None, :])
        cands = jnp.concatenate([w[None, :], cands])
        changes = jax.vmap(F_change, in_axes=(None, 0))(w, cands)   # changes[0] == 0
        return cands[jnp.argmin(changes)]

    w = lax.fori_loop(0, steps, body, b) if T > 1 else b
    gw_norm = jnp.sqrt(_quad(w, G))
    lam = jnp.where(gw_norm > 0.0, sqrt_phi / jnp.where(gw_norm > 0.0, gw_norm, 1.0), 0.0)
    return b + lam * w, w


@partial(jax.jit, static_argnames=("steps",))
def cagrad(task_grads: Sequence[PyTree], c: float = 0.5, steps: int = 20) -> PyTree:
    """CAGrad (Liu et al., NeurIPS 2021): mean gradient moved towards the worst-task direction
    within a ball of radius ``c ||g0||`` (paper Algorithm 1, *without* rescaling).

    ``g0 = mean_i g_i``, ``phi = c^2 ||g0||^2``; ``w*`` minimises
    ``F(w) = g_w . g0 + sqrt(phi) ||g_w||`` over the simplex (``g_w = sum_i w_i g_i``),
    solved on the Gram matrix by ``steps`` projected-gradient iterations (uniform start, best
    of a geometric set of step lengths each iteration, so ``F`` decreases monotonically);
    returns ``d = g0 + sqrt(phi) / ||g_w*|| * g_w*`` (``d = g0`` if ``g_w* = 0``), which satisfies
    ``||d - g0|| = c ||g0||``. The official code's optional ``/(1 + c^2)`` rescaling is *not*
    applied (it is not in the paper's Algorithm 1); ``c = 0`` gives exactly the mean.
    Float32 output.
    """
    _check(task_grads)
    weights, _ = _cagrad_weights(gram_matrix(task_grads), c, int(steps))
    return combine(task_grads, weights)


# ----------------------------------------------------------------------------- MGDA-UB

def _mgda_weights(G: jax.Array, steps: int) -> jax.Array:
    T = G.shape[0]
    if T == 1:
        return jnp.ones((1,), jnp.float32)
    if T == 2:   # exact closed form (Sener & Koltun Algorithm 1)
        gamma = _two_point_min_norm(G[0, 0], G[0, 1], G[1, 1])   # weight on g_2
        return jnp.stack([1.0 - gamma, gamma])
    eye = jnp.eye(T, dtype=jnp.float32)
    # Start from the best pairwise (edge) solution, as the reference MinNormSolver does: it is
    # already exact whenever the min-norm point lies on an edge of the simplex.
    best_w, best_v = None, None
    for a in range(T):
        for b in range(a + 1, T):
            gamma = _two_point_min_norm(G[a, a], G[a, b], G[b, b])
            w = (1.0 - gamma) * eye[a] + gamma * eye[b]
            v = _quad(w, G)
            if best_w is None:
                best_w, best_v = w, v
            else:
                better = v < best_v
                best_w = jnp.where(better, w, best_w)
                best_v = jnp.where(better, v, best_v)

    def body(_, w):   # Frank-Wolfe with exact line search (Sener & Koltun Algorithm 2)
        Gw = jnp.dot(G, w, precision=_HI)
        t = jnp.argmin(Gw)
        gamma = _two_point_min_norm(_quad(w, G), Gw[t], G[t, t])
        return (1.0 - gamma) * w + gamma * eye[t]

    return lax.fori_loop(0, steps, body, best_w)


@partial(jax.jit, static_argnames=("steps",))
def mgda_ub(task_grads: Sequence[PyTree], steps: int = 250) -> PyTree:
    """MGDA (Sener & Koltun, NeurIPS 2018): the min-norm point ``sum_i w_i g_i`` of the convex
    hull of the task gradients (closed form for 2 tasks, Frank-Wolfe on the Gram matrix else).

    For ``T > 2`` the Frank-Wolfe iterations (paper Algorithm 2, exact line search) start
    from the best pairwise solution. "-UB" refers to applying it to the gradients of the
    shared parameters you pass in (the paper's upper bound uses the gradients w.r.t. the
    shared representation; that is a choice of *which* gradients to pass). Float32 output.
    """
    _check(task_grads)
    return combine(task_grads, _mgda_weights(gram_matrix(task_grads), int(steps)))


# ----------------------------------------------------------------------------- IMTL-G

def _imtl_g_weights(G: jax.Array) -> jax.Array:
    T = G.shape[0]
    if T == 1:
        return jnp.ones((1,), jnp.float32)
    norms = jnp.sqrt(jnp.maximum(jnp.diagonal(G), 0.0))
    inv = 1.0 / jnp.maximum(norms, jnp.sqrt(_EPS))
    # Paper convention (Liu et al. 2021, Alg. 1): task 1 is the reference,
    # D = [g_1 - g_t]_{t=2..T}, U = [u_1 - u_t]_{t=2..T} (rows), u_t = g_t / ||g_t||.
    # GU[s, t] = g_s . u_t ;  (g_1 U^T)_t = GU[0,0] - GU[0,t] ;
    # (D U^T)[a, b] = (g_1 - g_a).(u_1 - u_b) = GU[0,0] - GU[0,b] - GU[a,0] + GU[a,b].
    GU = G * inv[None, :]
    r = GU[0, 0] - GU[0, 1:]                                              # [T-1]
    DU = GU[0, 0] - GU[0, None, 1:] - GU[1:, 0, None] + GU[1:, 1:]      # [T-1, T-1]
    # alpha_{2:T} = (g_1 U^T)(D U^T)^{-1}  (row vector)  <=>  (D U^T)^T alpha^T = r^T
    alpha = jnp.dot(r, jnp.linalg.pinv(DU), precision=_HI)
    return jnp.concatenate([1.0 - jnp.sum(alpha, keepdims=True), alpha])


@jax.jit
def imtl_g(task_grads: Sequence[PyTree]) -> PyTree:
    """IMTL-G (Liu et al., ICLR 2021, "Towards Impartial Multi-task Learning"): the combination
    ``sum_i alpha_i g_i`` (``sum_i alpha_i = 1``) with equal projections on every unit ``u_i``.

    Paper convention (Algorithm 1): task 1 is the reference, ``D = [g_1 - g_2, ..., g_1 - g_T]``
    and ``U = [u_1 - u_2, ..., u_1 - u_T]`` (rows), ``alpha_{2:T} = g_1 U^T (D U^T)^{-1}``,
    ``alpha_1 = 1 - sum alpha_{2:T}``; computed from the Gram matrix. The ``(T-1) x (T-1)``
    system is solved with a pseudo-inverse, so degenerate cases (e.g. parallel gradients)
    give a finite least-squares answer instead of NaNs. Zero gradients must not be passed
    (their unit vector is undefined; the norm is floored at 1e-6). The weights may be
    negative, as in the paper. Float32 output.
    """
    _check(task_grads)
    return combine(task_grads, _imtl_g_weights(gram_matrix(task_grads)))


# ----------------------------------------------------------------------------- dispatch

AGGREGATORS = ("sum", "mean", "pcgrad", "cagrad", "mgda", "imtl_g")


def aggregate(name: str, task_grads: Sequence[PyTree], key: jax.Array | None = None,
              **kwargs) -> PyTree:
    """Combines task gradients with the stateless aggregator ``name`` (one of
    :data:`AGGREGATORS`); ``key`` is needed by ``"pcgrad"`` only, ``kwargs`` go to the method
    (e.g. ``reduction``, ``c``, ``steps``). GradVac carries state: call :func:`gradvac`.
    Float32 output for every method."""
    if name not in AGGREGATORS:
        raise ValueError(f"unknown aggregator {name!r}; allowed: {', '.join(AGGREGATORS)}")
    T = _check(task_grads)
    if name in ("sum", "mean"):
        if kwargs:
            raise TypeError(f"aggregator {name!r} takes no options, got {sorted(kwargs)}")
        w = jnp.full((T,), 1.0 if name == "sum" else 1.0 / T, jnp.float32)
        return combine(task_grads, w)
    if name == "pcgrad":
        if key is None:
            raise ValueError("aggregator 'pcgrad' needs a PRNG key")
        return pcgrad(task_grads, key, **kwargs)
    if name == "cagrad":
        return cagrad(task_grads, **kwargs)
    if name == "mgda":
        return mgda_ub(task_grads, **kwargs)
    return imtl_g(task_grads, **kwargs)
