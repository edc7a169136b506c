"""Tests for jaxbert.gradients against independent NumPy (float64, flat vectors, explicit loops)
implementations written from the papers. The random visiting order of PCGrad / GradVac is an
*input* of the algorithm, so the references take it from the documented key convention."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from jaxbert import gradients as gr

RTOL = 1e-5

# The public aggregators are jax.jit-wrapped themselves (compiled once per structure and
# static options); test_everything_under_outer_jit checks them inside a user's jit as well.
PC, PC_PROJ, GV, CA, MG, IM = gr.pcgrad, gr.pcgrad_projected, gr.gradvac, gr.cagrad, gr.mgda_ub, gr.imtl_g


# ----------------------------------------------------------------------------- fixtures

def tree(rng, scale=1.0):
    return {"w": (scale * rng.normal(size=(3, 4))).astype(np.float32),
            "b": (scale * rng.normal(size=(5,))).astype(np.float32)}


def trees(seed, T):
    rng = np.random.default_rng(seed)
    return [tree(rng, scale=rng.uniform(0.3, 3.0)) for _ in range(T)]


def flat(t):
    """Whole pytree -> one float64 vector (the same leaf order as ravel_pytree)."""
    return np.asarray(ravel_pytree(jax.tree_util.tree_map(lambda x: jnp.asarray(x, jnp.float32), t))[0],
                      np.float64)


_perm = jax.jit(lambda key, i, T: jax.random.permutation(jax.random.fold_in(key, i), T), static_argnums=2)


def orders(key, T):
    """The documented visiting orders: task i uses permutation(fold_in(key, i), T)."""
    return [np.asarray(_perm(key, i, T)) for i in range(T)]


def embed2d(vectors):
    """Puts 2-D vectors in the first two entries of a {'w','b'} pytree (all else zero)."""
    out = []
    for v in vectors:
        w = np.zeros((3, 4), np.float32)
        w[0, :2] = v
        out.append({"w": w, "b": np.zeros(5, np.float32)})
    return out


def assert_tree_f32(t):
    for leaf in jax.tree_util.tree_leaves(t):
        assert leaf.dtype == jnp.float32


# ----------------------------------------------------------------------------- NumPy references

def ref_pcgrad_projected(gs, ords):
    """Yu et al. 2020, Algorithm 1, verbatim on flat vectors."""
    out = []
    for i, g in enumerate(gs):
        pc = g.copy()
        for j in ords[i]:
            if j == i:
                continue
            dot = pc @ gs[j]
            if dot < 0 and gs[j] @ gs[j] > 0:
                pc = pc - dot / (gs[j] @ gs[j]) * gs[j]
        out.append(pc)
    return out


def ref_pcgrad(gs, ords, reduction):
    pcs = ref_pcgrad_projected(gs, ords)
    return np.sum(pcs, 0) / (len(gs) if reduction == "mean" else 1)


def ref_gradvac(gs, ords, targets, beta, reduction, ema_from_projected=False):
    """Wang et al. 2020 (ICLR 2021), Algorithm 1, on flat vectors."""
    T = len(gs)
    targets = np.array(targets, np.float64)
    new = targets.copy()
    cos = lambda a, b: np.clip(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)), -1, 1)
    out = []
    for i in range(T):
        pc = gs[i].copy()
        for j in ords[i]:
            if j == i:
                continue
            phi, phi_hat = cos(pc, gs[j]), targets[i, j]
            if phi < phi_hat:
                pc = pc + (np.linalg.norm(pc) * (phi_hat * np.sqrt(1 - phi ** 2) - phi * np.sqrt(1 - phi_hat ** 2))
                           / (np.linalg.norm(gs[j]) * np.sqrt(1 - phi_hat ** 2))) * gs[j]
            ema = phi if ema_from_projected else cos(gs[i], gs[j])
            new[i, j] = (1 - beta) * phi_hat + beta * ema
        out.append(pc)
    return np.sum(out, 0) / (T if reduction == "mean" else 1), new


def ref_cagrad_2(gs, c, n=400001):
    """CAGrad (Liu et al. 2021, Alg. 1) for 2 tasks by brute force over w = (t, 1 - t)."""
    g0 = (gs[0] + gs[1]) / 2
    t = np.linspace(0, 1, n)[:, None]
    gw = t * gs[0] + (1 - t) * gs[1]
    F = gw @ g0 + c * np.linalg.norm(g0) * np.linalg.norm(gw, axis=1)
    best = gw[np.argmin(F)]
    return g0 + c * np.linalg.norm(g0) / np.linalg.norm(best) * best


def ref_mgda_2(g1, g2):
    """Sener & Koltun 2018, Algorithm 1: min over gamma of ||gamma g1 + (1 - gamma) g2||."""
    if g1 @ g2 >= g1 @ g1:
        gamma = 1.0
    elif g1 @ g2 >= g2 @ g2:
        gamma = 0.0
    else:
        gamma = (g2 - g1) @ g2 / ((g1 - g2) @ (g1 - g2))
    return gamma * g1 + (1 - gamma) * g2


def ref_imtl_g(gs):
    """Liu et al. 2021 (IMTL), Alg. 1: D, U rows g_1 - g_t, u_1 - u_t; alpha_{2:T} = g_1 U^T (D U^T)^-1."""
    us = [g / np.linalg.norm(g) for g in gs]
    D = np.stack([gs[0] - g for g in gs[1:]])
    U = np.stack([us[0] - u for u in us[1:]])
    alpha = gs[0] @ U.T @ np.linalg.inv(D @ U.T)
    alpha = np.concatenate([[1 - alpha.sum()], alpha])
    return alpha @ np.stack(gs)


# ----------------------------------------------------------------------------- PCGrad

@pytest.mark.parametrize("T", [2, 3])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_pcgrad_matches_reference(T, reduction):
    for seed in range(3):
        gt = trees(seed, T)
        key = jax.random.PRNGKey(seed + 10)
        out = PC(gt, key, reduction=reduction)
        assert_tree_f32(out)
        assert jax.tree_util.tree_structure(out) == jax.tree_util.tree_structure(gt[0])
        expect = ref_pcgrad([flat(g) for g in gt], orders(key, T), reduction)
        np.testing.assert_allclose(flat(out), expect, rtol=RTOL, atol=1e-6 * np.abs(expect).max())


def test_pcgrad_sum_is_T_times_mean_and_projected_parts():
    gt = trees(4, 3)
    key = jax.random.PRNGKey(1)
    mean, total = PC(gt, key, reduction="mean"), PC(gt, key, reduction="sum")
    np.testing.assert_allclose(flat(total), 3 * flat(mean), rtol=1e-6, atol=1e-6)
    assert np.abs(flat(total) - flat(mean)).max() > 1e-3      # they really differ
    parts = PC_PROJ(gt, key)
    np.testing.assert_allclose(sum(flat(p) for p in parts), flat(total), rtol=1e-6, atol=1e-6)
    for p, r in zip(parts, ref_pcgrad_projected([flat(g) for g in gt], orders(key, 3))):
        np.testing.assert_allclose(flat(p), r, rtol=RTOL, atol=1e-6)


def test_pcgrad_no_conflict_is_plain_mean():
    rng = np.random.default_rng(0)
    gt = [jax.tree_util.tree_map(np.abs, tree(rng)) for _ in range(3)]    # all dots > 0
    out = PC(gt, jax.random.PRNGKey(0), reduction="mean")
    np.testing.assert_allclose(flat(out), np.mean([flat(g) for g in gt], 0), rtol=1e-6)
    np.testing.assert_allclose(flat(gr.aggregate("mean", gt)), flat(out), rtol=1e-6)


def test_pcgrad_two_conflicting_tasks():
    rng = np.random.default_rng(3)
    g1 = tree(rng)
    g2 = jax.tree_util.tree_map(lambda a, b: (-0.7 * a + 0.5 * b).astype(np.float32), g1, tree(rng))
    f1, f2 = flat(g1), flat(g2)
    assert f1 @ f2 < 0
    key = jax.random.PRNGKey(0)
    p1, p2 = (flat(p) for p in PC_PROJ([g1, g2], key))
    scale = np.linalg.norm(f1) * np.linalg.norm(f2)
    assert p1 @ p2 >= -1e-6 * scale
    # each projection removes exactly the conflicting component (g_i^PC orthogonal to g_j)
    assert abs(p1 @ f2) < 1e-5 * scale and abs(p2 @ f1) < 1e-5 * scale
    # the combined update conflicts with neither task
    d = flat(PC([g1, g2], key, reduction="sum"))
    assert d @ f1 >= 0 and d @ f2 >= 0


def test_pcgrad_order_matters_with_three_tasks():
    # g1 conflicts with g2 and g3 (which also conflict with each other): projecting onto
    # g2 then g3 gives (0.48, -0.24), g3 then g2 gives (0.48, 0.24).
    gt = embed2d([[1.0, 0.0], [-0.5, 1.0], [-0.5, -1.0]])
    gs = [flat(g) for g in gt]
    results = []
    for seed in range(12):
        key = jax.random.PRNGKey(seed)
        out = flat(PC(gt, key, reduction="mean"))
        np.testing.assert_allclose(out, ref_pcgrad(gs, orders(key, 3), "mean"), rtol=RTOL, atol=1e-7)
        results.append(out)
    assert max(np.abs(r - results[0]).max() for r in results) > 1e-2


def test_bad_reduction_is_named():
    gt = trees(6, 2)
    key = jax.random.PRNGKey(0)
    with pytest.raises(ValueError, match="'avg'"):
        gr.pcgrad(gt, key, reduction="avg")
    with pytest.raises(ValueError, match="'max'"):
        gr.gradvac(gt, key, gr.gradvac_init(2), reduction="max")


def test_pcgrad_zero_gradient_is_not_projected_on():
    gt = trees(7, 2)
    gt[1] = jax.tree_util.tree_map(np.zeros_like, gt[1])
    out = PC(gt, jax.random.PRNGKey(0), reduction="sum")
    assert np.all(np.isfinite(flat(out)))
    np.testing.assert_allclose(flat(out), flat(gt[0]), rtol=1e-6)


# ----------------------------------------------------------------------------- GradVac

@pytest.mark.parametrize("T,reduction,ema_from_projected",
                         [(2, "mean", False), (2, "sum", True), (3, "sum", False), (3, "mean", True)])
def test_gradvac_matches_reference_over_two_steps(T, reduction, ema_from_projected):
    rng = np.random.default_rng(T)
    targets = rng.uniform(-0.2, 0.8, size=(T, T)).astype(np.float32)
    ref_targets = targets.astype(np.float64)
    adjusted = False
    for step in range(2):
        gt = trees(100 + step, T)
        gs = [flat(g) for g in gt]
        key = jax.random.PRNGKey(step)
        out, targets = GV(gt, key, targets, 0.3, reduction=reduction, ema_from_projected=ema_from_projected)
        expect, ref_targets = ref_gradvac(gs, orders(key, T), ref_targets, 0.3, reduction, ema_from_projected)
        assert_tree_f32(out)
        np.testing.assert_allclose(flat(out), expect, rtol=RTOL, atol=1e-6 * np.abs(expect).max())
        np.testing.assert_allclose(np.asarray(targets), ref_targets, rtol=RTOL, atol=1e-6)
        plain = np.sum(gs, 0) / (T if reduction == "mean" else 1)
        adjusted |= np.abs(expect - plain).max() > 1e-3
    assert adjusted  # the targets were high enough for the vaccine to act


def test_gradvac_targets_ema_and_cosine_reaches_target():
    T, beta = 3, 0.1
    gt = trees(11, T)
    gs = [flat(g) for g in gt]
    targets = np.full((T, T), 0.6, np.float32)
    np.fill_diagonal(targets, 0.25)
    _, new = GV(gt, jax.random.PRNGKey(0), targets, beta, reduction="sum", ema_from_projected=False)
    new = np.asarray(new)
    for i, j in itertools.product(range(T), repeat=2):
        if i == j:
            assert new[i, i] == pytest.approx(0.25)    # diagonal untouched
        else:
            cos = gs[i] @ gs[j] / (np.linalg.norm(gs[i]) * np.linalg.norm(gs[j]))
            assert new[i, j] == pytest.approx((1 - beta) * 0.6 + beta * cos, rel=1e-5)
    np.testing.assert_allclose(new, new.T, rtol=1e-6)   # original-cosine EMA is symmetric
    # T = 2: g_i^PC gets exactly one adjustment, after which cos(g_i^PC, g_j) = old target.
    g2 = gt[:2]
    key = jax.random.PRNGKey(0)
    mean, _ = GV(g2, key, targets[:2, :2], beta, reduction="mean", ema_from_projected=False)
    total = 2 * flat(mean)
    a, b = gs[0], gs[1]
    c_ab = a @ b / np.linalg.norm(a) / np.linalg.norm(b)
    assert c_ab < 0.6
    # reconstruct: total = pc_0 + pc_1 with pc_0 = a + x b, pc_1 = b + y a
    ka = np.linalg.norm(a) * (0.6 * np.sqrt(1 - c_ab ** 2) - c_ab * np.sqrt(1 - 0.36)) / (np.linalg.norm(b) * 0.8)
    pc0 = a + ka * b
    assert pc0 @ b / (np.linalg.norm(pc0) * np.linalg.norm(b)) == pytest.approx(0.6, rel=1e-9)
    kb = np.linalg.norm(b) * (0.6 * np.sqrt(1 - c_ab ** 2) - c_ab * 0.8) / (np.linalg.norm(a) * 0.8)
    np.testing.assert_allclose(total, pc0 + b + kb * a, rtol=RTOL, atol=1e-6)


def test_gradvac_zero_targets_no_conflict_is_mean_and_sum_is_T_mean():
    rng = np.random.default_rng(1)
    gt = [jax.tree_util.tree_map(np.abs, tree(rng)) for _ in range(3)]
    out, _ = GV(gt, jax.random.PRNGKey(0), gr.gradvac_init(3), 0.01, reduction="mean",
                ema_from_projected=True)
    np.testing.assert_allclose(flat(out), np.mean([flat(g) for g in gt], 0), rtol=1e-6)
    gt = trees(12, 3)
    t0 = np.full((3, 3), 0.5, np.float32)
    m, _ = GV(gt, jax.random.PRNGKey(3), t0, 0.01, reduction="mean", ema_from_projected=True)
    s, _ = GV(gt, jax.random.PRNGKey(3), t0, 0.01, reduction="sum", ema_from_projected=False)
    np.testing.assert_allclose(flat(s), 3 * flat(m), rtol=1e-6, atol=1e-6)
    assert gr.gradvac_init(4).shape == (4, 4) and not np.any(np.asarray(gr.gradvac_init(4)))


def test_gradvac_degenerate_inputs():
    # zero gradient + targets of exactly 1: finite, no adjustment toward the zero task
    gt = trees(13, 2)
    gt[1] = jax.tree_util.tree_map(np.zeros_like, gt[1])
    out, tg = GV(gt, jax.random.PRNGKey(0), np.ones((2, 2), np.float32), 0.01, reduction="mean",
                 ema_from_projected=False)
    assert np.all(np.isfinite(flat(out))) and np.all(np.isfinite(np.asarray(tg)))
    np.testing.assert_allclose(2 * flat(out), flat(gt[0]), rtol=1e-6)


# ----------------------------------------------------------------------------- CAGrad

def test_cagrad_c0_is_mean():
    gt = trees(20, 3)
    np.testing.assert_allclose(flat(CA(gt, 0.0)), np.mean([flat(g) for g in gt], 0), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("c", [0.2, 0.5, 0.9])
def test_cagrad_two_tasks_vs_brute_force(c):
    for seed in (21, 22):
        gt = trees(seed, 2)
        gs = [flat(g) for g in gt]
        d = flat(CA(gt, c))
        expect = ref_cagrad_2(gs, c)
        np.testing.assert_allclose(d, expect, rtol=0, atol=2e-4 * np.abs(expect).max())
        g0 = np.mean(gs, 0)   # d lies on the sphere ||d - g0|| = c ||g0||
        assert np.linalg.norm(d - g0) == pytest.approx(c * np.linalg.norm(g0), rel=1e-4)


def test_cagrad_three_tasks_objective_vs_grid():
    c, n = 0.7, 300
    a, b = np.meshgrid(np.linspace(0, 1, n + 1), np.linspace(0, 1, n + 1))
    m = a + b <= 1 + 1e-12
    W = np.stack([a[m], b[m], np.clip(1 - a[m] - b[m], 0, 1)], 1)
    for seed in (23, 24, 25):
        gt = trees(seed, 3)
        gs = np.stack([flat(g) for g in gt])
        G, g0 = gs @ gs.T, gs.mean(0)
        F = W @ (gs @ g0) + c * np.linalg.norm(g0) * np.sqrt(np.einsum("ki,ij,kj->k", W, G, W))
        d = flat(CA(gt, c))
        # recover w* from d = g0 + lam * g_w (lam > 0), F(w*) must not exceed the grid minimum
        gw = (d - g0)
        w = np.linalg.lstsq(gs.T, gw, rcond=None)[0]
        w = w / w.sum()
        assert np.all(w > -1e-4)
        Fw = w @ gs @ g0 + c * np.linalg.norm(g0) * np.linalg.norm(w @ gs)
        assert Fw <= F.min() + 1e-5 * np.abs(F).max()
        assert np.linalg.norm(d - g0) == pytest.approx(c * np.linalg.norm(g0), rel=1e-4)


# ----------------------------------------------------------------------------- MGDA

def test_mgda_two_tasks_closed_form():
    rng = np.random.default_rng(30)
    cases = [trees(31, 2), trees(32, 2)]
    g1 = tree(rng)
    cases.append([g1, jax.tree_util.tree_map(lambda x: (3 * x).astype(np.float32), g1)])   # gamma = 1 branch
    for gt in cases:
        gs = [flat(g) for g in gt]
        d = flat(MG(gt))
        np.testing.assert_allclose(d, ref_mgda_2(*gs), rtol=RTOL, atol=1e-6)
    # two conflicting tasks: the min-norm point is interior and has equal projections,
    # i.e. d is orthogonal to g1 - g2 (d.g1 = d.g2 = ||d||^2)
    g2 = jax.tree_util.tree_map(lambda a, b: (-0.5 * a + b).astype(np.float32), g1, tree(rng))
    gs = [flat(g1), flat(g2)]
    assert gs[0] @ gs[1] < 0
    d = flat(MG([g1, g2]))
    assert abs(d @ (gs[0] - gs[1])) < 1e-5 * np.linalg.norm(gs[0] - gs[1]) * np.linalg.norm(gs[0])
    assert d @ gs[0] == pytest.approx(d @ d, rel=1e-4)


def test_mgda_three_tasks_min_norm():
    for seed in (33, 34, 35):
        gt = trees(seed, 3)
        gs = np.stack([flat(g) for g in gt])
        gs[1:] -= 0.6 * gs[0]      # some conflict
        gt = [jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(gt[0]),
                                           [np.asarray(x, np.float32) for x in jax.tree_util.tree_leaves(
                                               ravel_pytree(gt[0])[1](jnp.asarray(v, jnp.float32)))])
              for v in gs]
        gs = np.stack([flat(g) for g in gt])
        d = flat(MG(gt))
        nd = d @ d
        assert all(nd <= g @ g for g in gs)
        for a, b in itertools.combinations(range(3), 2):   # no worse than any edge
            e = ref_mgda_2(gs[a], gs[b])
            assert nd <= e @ e * (1 + 1e-5)
        # KKT of min ||g_w||^2 on the simplex: d.g_i >= ||d||^2 for every task
        assert np.all(gs @ d >= nd * (1 - 1e-3))


# ----------------------------------------------------------------------------- IMTL-G

@pytest.mark.parametrize("T", [2, 3])
def test_imtl_g_equal_projections_and_reference(T):
    for seed in (40, 41):
        gt = trees(seed, T)
        gs = [flat(g) for g in gt]
        d = flat(IM(gt))
        proj = np.array([d @ g / np.linalg.norm(g) for g in gs])
        np.testing.assert_allclose(proj, proj[0], rtol=1e-4)
        expect = ref_imtl_g(gs)
        np.testing.assert_allclose(d, expect, rtol=1e-4, atol=1e-5 * np.abs(expect).max())


# ----------------------------------------------------------------------------- dispatch

def test_aggregate_dispatch():
    gt = trees(50, 3)
    key = jax.random.PRNGKey(4)
    gs = [flat(g) for g in gt]
    np.testing.assert_allclose(flat(gr.aggregate("sum", gt)), np.sum(gs, 0), rtol=1e-6)
    np.testing.assert_allclose(flat(gr.aggregate("mean", gt, key)), np.mean(gs, 0), rtol=1e-6)
    np.testing.assert_allclose(flat(gr.aggregate("pcgrad", gt, key, reduction="sum")),
                               flat(PC(gt, key, reduction="sum")), rtol=1e-6)
    np.testing.assert_allclose(flat(gr.aggregate("cagrad", gt, c=0.0)), np.mean(gs, 0), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(flat(gr.aggregate("mgda", gt)), flat(MG(gt)), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(flat(gr.aggregate("imtl_g", gt)), flat(IM(gt)), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="allowed: sum, mean, pcgrad, cagrad, mgda, imtl_g"):
        gr.aggregate("gradvac", gt, key)
    with pytest.raises(ValueError, match="key"):
        gr.aggregate("pcgrad", gt)


def test_everything_under_outer_jit_with_bfloat16_leaves():
    """A user's jitted step with bfloat16 gradients: float32 outputs, equal to the float64
    references on the (exactly representable) upcast values, close to the float32 results."""
    gt = trees(70, 3)
    bf = [jax.tree_util.tree_map(lambda x: jnp.asarray(x, jnp.bfloat16), g) for g in gt]
    key = jax.random.PRNGKey(5)
    t0 = np.full((3, 3), 0.4, np.float32)

    @jax.jit
    def step(g, k, targets):
        vac, new_t = gr.gradvac(g, k, targets, 0.05)
        return dict(pcgrad=gr.aggregate("pcgrad", g, k, reduction="sum"), cagrad=gr.cagrad(g, 0.4),
                    mgda=gr.mgda_ub(g), imtl_g=gr.imtl_g(g), mean=gr.aggregate("mean", g), gradvac=vac), new_t

    out, new_t = step(bf, key, t0)
    assert_tree_f32(out)
    gs = [flat(g) for g in bf]
    ords = orders(key, 3)
    np.testing.assert_allclose(flat(out["pcgrad"]), ref_pcgrad(gs, ords, "sum"), rtol=RTOL, atol=1e-6)
    vac, ref_t = ref_gradvac(gs, ords, t0, 0.05, "mean")
    np.testing.assert_allclose(flat(out["gradvac"]), vac, rtol=RTOL, atol=1e-6)
    np.testing.assert_allclose(np.asarray(new_t), ref_t, rtol=RTOL, atol=1e-6)
    np.testing.assert_allclose(flat(out["imtl_g"]), ref_imtl_g(gs), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(flat(out["mean"]), np.mean(gs, 0), rtol=1e-6)
    # vs the eager float32 computation on the original (un-rounded) values
    np.testing.assert_allclose(flat(out["pcgrad"]), flat(PC(gt, key, reduction="sum")), rtol=0, atol=5e-2)
    np.testing.assert_allclose(flat(out["cagrad"]), flat(CA(gt, 0.4)), rtol=0, atol=5e-2)
    np.testing.assert_allclose(flat(out["mgda"]), flat(MG(gt)), rtol=0, atol=5e-2)
    np.testing.assert_allclose(flat(out["imtl_g"]), flat(IM(gt)), rtol=0, atol=5e-2)
    up = [jax.tree_util.tree_map(lambda x: x.astype(jnp.float32), g) for g in bf]
    np.testing.assert_allclose(flat(out["cagrad"]), flat(CA(up, 0.4)), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(flat(out["mgda"]), flat(MG(up)), rtol=1e-5, atol=1e-5)
