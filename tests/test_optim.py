"""Tests for jaxbert.optim: the reference AdamW against an independent NumPy float64 version."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxbert.optim import adamw, decay_mask, linear_warmup_decay, make_optimizer

LR, WD, EPS, B1, B2 = 1e-2, 0.01, 1e-6, 0.9, 0.999
STEPS = 1000
TOL = 1e-12


@pytest.fixture
def x64():
    """Enable float64 for one test only; the context manager restores the previous value."""
    with jax.enable_x64(True):
        yield


def _toy_problem():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(64, 5))
    y = X @ rng.normal(size=(5, 1)) + 0.5 + 0.1 * rng.normal(size=(64, 1))
    params = {"kernel": 0.1 * rng.normal(size=(5, 1)), "bias": np.zeros(1)}
    return X, y, params


def _mse_grads(X, y, params):
    """Analytic gradient of mean((X W + b - y)^2), shared by both trajectories."""
    r = X @ params["kernel"] + params["bias"] - y
    return {"kernel": 2.0 / len(y) * X.T @ r, "bias": 2.0 / len(y) * r.sum(axis=0)}


def _numpy_reference(params, grad_fn, steps, lr, wd, eps, b1, b2, correct_bias, decayed):
    """The minBERT reference step, transcribed literally (in-place Torch ops -> NumPy).

    Returns the params after every step (the trajectory), last entry = final params.
    """
    p = {k: v.copy() for k, v in params.items()}
    trajectory = []
    m = {k: np.zeros_like(v) for k, v in p.items()}
    v = {k: np.zeros_like(v) for k, v in p.items()}
    for t in range(1, steps + 1):
        g = grad_fn(p)
        for k in p:
            m[k] = b1 * m[k] + (1 - b1) * g[k]
            v[k] = b2 * v[k] + (1 - b2) * g[k] * g[k]
            step_size = lr
            if correct_bias:
                step_size = step_size * np.sqrt(1 - b2**t) / (1 - b1**t)
            p[k] = p[k] - step_size * m[k] / (np.sqrt(v[k]) + eps)
            if decayed[k]:
                p[k] = p[k] - lr * wd * p[k]
        trajectory.append({k: x.copy() for k, x in p.items()})
    return trajectory


def _run_optax(tx, params, grad_fn, steps):
    params = jax.tree.map(jnp.asarray, params)
    state = tx.init(params)

    @jax.jit
    def step(grads, state, params):
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    trajectory = []
    for _ in range(steps):
        grads = jax.tree.map(jnp.asarray, grad_fn(jax.tree.map(np.asarray, params)))
        params, state = step(grads, state, params)
        trajectory.append(jax.tree.map(np.asarray, params))
    return trajectory


def _max_abs_diff(a, b):
    return max(float(np.max(np.abs(a[k] - b[k]))) for k in a)


ALL_DECAYED = {"kernel": True, "bias": True}
BIAS_EXEMPT = {"kernel": True, "bias": False}
REFERENCE_CASES = {
    # name: (optimizer under test, correct_bias and decayed leaves for the NumPy reference)
    "bias_corrected": (lambda: adamw(LR, B1, B2, EPS, WD), True, ALL_DECAYED),
    "no_bias_correction": (lambda: adamw(LR, B1, B2, EPS, WD, correct_bias=False),
                           False, ALL_DECAYED),
    "bias_exempt_from_decay": (lambda: adamw(LR, B1, B2, EPS, WD, mask=BIAS_EXEMPT),
                               True, BIAS_EXEMPT),
    # The full training chain: an inactive clip, decay_mask exempting "bias".
    "make_optimizer": (lambda: make_optimizer(LR, STEPS, weight_decay=WD, clip_norm=1e9,
                                              b1=B1, b2=B2, eps=EPS), True, BIAS_EXEMPT),
    # `train.decay_norms_and_biases`: the course's AdamW, which decays the bias too.
    "make_optimizer_decay_all": (lambda: make_optimizer(LR, STEPS, weight_decay=WD, decay_all=True, b1=B1, b2=B2,
                                                        eps=EPS), True, ALL_DECAYED),
}


@pytest.mark.parametrize("case", list(REFERENCE_CASES))
def test_matches_numpy_reference_float64(x64, case):
    make_tx, correct_bias, decayed = REFERENCE_CASES[case]
    X, y, params0 = _toy_problem()
    grad_fn = lambda p: _mse_grads(X, y, p)
    ref = _numpy_reference(params0, grad_fn, STEPS, LR, WD, EPS, B1, B2, correct_bias, decayed)[-1]
    out = _run_optax(make_tx(), params0, grad_fn, STEPS)[-1]
    assert out["kernel"].dtype == np.float64
    err = _max_abs_diff(out, ref)
    print(f"\n[{case}] jaxbert.optim vs NumPy float64, {STEPS} steps: max |dparam| = {err:.3e}")
    assert err <= TOL
    # The problem must actually move the params, or the comparison would be vacuous.
    assert _max_abs_diff(ref, params0) > 0.1


def test_optax_adamw_is_not_the_reference(x64):
    X, y, params0 = _toy_problem()
    grad_fn = lambda p: _mse_grads(X, y, p)
    ref = _numpy_reference(params0, grad_fn, STEPS, LR, WD, EPS, B1, B2, True, ALL_DECAYED)
    out = _run_optax(optax.adamw(LR, b1=B1, b2=B2, eps=EPS, weight_decay=WD),
                     params0, grad_fn, STEPS)
    errs = [_max_abs_diff(o, r) for o, r in zip(out, ref)]
    peak = int(np.argmax(errs))
    print(f"\noptax.adamw vs NumPy float64 reference: max |dparam| = {errs[-1]:.3e} after "
          f"{STEPS} steps, {errs[peak]:.3e} at the worst step ({peak + 1})")
    # Both optimizers head for nearly the same weight-decayed fixed point, so the gap shrinks
    # once the toy problem has converged (~3e-7 at step 1000); it is largest mid-run.
    assert errs[peak] > 1e-6
    assert errs[-1] > 1e3 * TOL


def test_linear_warmup_decay_values():
    sched = linear_warmup_decay(1.0, total_steps=100, warmup_steps=10)
    np.testing.assert_allclose(
        [sched(s) for s in (0, 5, 10, 55, 100, 150)], [0.0, 0.5, 1.0, 0.5, 0.0, 0.0], atol=1e-7
    )
    no_warmup = linear_warmup_decay(2e-5, total_steps=4, warmup_steps=0)
    np.testing.assert_allclose([no_warmup(s) for s in range(5)],
                               [2e-5, 1.5e-5, 1e-5, 0.5e-5, 0.0], rtol=1e-6, atol=1e-12)


def test_make_optimizer_uses_schedule_by_step():
    # With b1=b2=0 and correct_bias=False each update is -lr_t * g/(|g| + eps) = -lr_t * sign(g)
    # (eps negligible), so the updates read the schedule off directly.
    tx = make_optimizer(1.0, total_steps=4, warmup_ratio=0.5, schedule="linear",
                        b1=0.0, b2=0.0, eps=1e-12, correct_bias=False)
    params = {"kernel": jnp.zeros(1)}
    state = tx.init(params)
    seen = []
    for _ in range(5):
        updates, state = tx.update({"kernel": jnp.ones(1)}, state, params)
        seen.append(-float(updates["kernel"][0]))
    np.testing.assert_allclose(seen, [0.0, 0.5, 1.0, 0.5, 0.0], atol=1e-6)


def test_clipping_happens_before_adam():
    clip, lr, eps, b1, b2 = 1.0, 0.1, 1.0, 0.9, 0.999  # eps=1 makes Adam scale-sensitive
    tx = make_optimizer(lr, total_steps=10, clip_norm=clip, b1=b1, b2=b2, eps=eps)
    params = {"kernel": jnp.zeros(2), "bias": jnp.zeros(1)}
    grads = {"kernel": jnp.array([3e6, 4e6]), "bias": jnp.array([0.0])}
    updates, state = tx.update(grads, tx.init(params), params)

    g = np.array([0.6, 0.8])  # grads rescaled to global norm 1
    np.testing.assert_allclose(state[-1].nu["kernel"], (1 - b2) * g**2, rtol=1e-6)
    # t=1: m = (1-b1) g, v = (1-b2) g^2, alpha = lr sqrt(1-b2)/(1-b1)
    expected = -lr * np.sqrt(1 - b2) * g / (np.sqrt(1 - b2) * np.abs(g) + eps)
    np.testing.assert_allclose(updates["kernel"], expected, rtol=1e-5)
    # Unclipped, the same step would be ~ -lr * sign(g): clipping changed it a lot.
    assert np.all(np.abs(updates["kernel"]) < 0.05 * lr)


def test_decay_mask_bert_convention():
    params = {
        "embeddings": {
            "word_embeddings": {"embedding": jnp.zeros((10, 4))},
            "LayerNorm": {"scale": jnp.ones(4), "bias": jnp.zeros(4)},
        },
        "layer_0": {
            "attention": {"query": {"kernel": jnp.zeros((4, 4)), "bias": jnp.zeros(4)}},
            "output_layer_norm": {"scale": jnp.ones(4), "bias": jnp.zeros(4)},
            "LayerNorm_0": {"weight_like_leaf": jnp.ones(4)},
            "final_norm": {"scale": jnp.ones(4)},
        },
    }
    assert decay_mask(params) == {
        "embeddings": {
            "word_embeddings": {"embedding": True},
            "LayerNorm": {"scale": False, "bias": False},
        },
        "layer_0": {
            "attention": {"query": {"kernel": True, "bias": False}},
            "output_layer_norm": {"scale": False, "bias": False},
            "LayerNorm_0": {"weight_like_leaf": False},
            "final_norm": {"scale": False},
        },
    }


def test_prefix_mask_and_callable_mask_agree():
    params = {"enc": {"kernel": jnp.ones(2), "bias": jnp.ones(2)}, "head": {"kernel": jnp.ones(2)}}
    grads = jax.tree.map(jnp.zeros_like, params)  # zero grads: the update is pure decay
    for mask in ({"enc": False, "head": True}, lambda p: {"enc": False, "head": True}):
        tx = adamw(0.1, weight_decay=0.5, mask=mask)
        updates, _ = tx.update(grads, tx.init(params), params)
        np.testing.assert_allclose(updates["enc"]["kernel"], 0.0)
        np.testing.assert_allclose(updates["head"]["kernel"], -0.05)


def test_low_precision_params_keep_float32_moments():
    params = {"kernel": jnp.ones(3, jnp.bfloat16)}
    tx = adamw(1e-3, weight_decay=0.01)
    state = tx.init(params)
    assert state.mu["kernel"].dtype == jnp.float32 and state.nu["kernel"].dtype == jnp.float32
    updates, state = tx.update({"kernel": jnp.full(3, 1e-3, jnp.bfloat16)}, state, params)
    assert updates["kernel"].dtype == jnp.bfloat16
    assert state.nu["kernel"].dtype == jnp.float32 and float(state.nu["kernel"][0]) > 0


def test_weight_decay_without_params_raises():
    tx = adamw(1e-3, weight_decay=0.01)
    params = {"kernel": jnp.ones(2)}
    with pytest.raises(ValueError, match="params"):
        tx.update(params, tx.init(params))
    # Without weight decay params are not needed.
    tx = adamw(1e-3)
    tx.update(params, tx.init(params))


def test_unknown_schedule_raises():
    with pytest.raises(ValueError, match=r"schedule.*'cosine'") as info:
        make_optimizer(1e-3, 100, schedule="cosine")
    assert "constant" in str(info.value) and "linear" in str(info.value)


def test_jit_matches_eager():
    tx = make_optimizer(1e-2, total_steps=20, warmup_ratio=0.2, schedule="linear",
                        weight_decay=0.01, clip_norm=1.0)
    rng = np.random.default_rng(1)
    params = {"dense": {"kernel": jnp.asarray(rng.normal(size=(3, 2)), jnp.float32),
                        "bias": jnp.asarray(rng.normal(size=2), jnp.float32)}}
    grads = [jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), p.dtype), params)
             for _ in range(5)]

    def run(update):
        p, s = params, tx.init(params)
        for g in grads:
            u, s = update(g, s, p)
            p = optax.apply_updates(p, u)
        return p, s

    p_eager, s_eager = run(tx.update)
    p_jit, s_jit = run(jax.jit(tx.update))
    for a, b in zip(jax.tree.leaves((p_eager, s_eager)), jax.tree.leaves((p_jit, s_jit))):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    assert int(s_jit[-1].count) == 5
    assert not np.allclose(p_jit["dense"]["kernel"], params["dense"]["kernel"])
