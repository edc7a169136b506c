"""Label smoothing, Ordinal Log Loss, SupCon and SimCSE against NumPy references (float64, explicit loops)
written from the papers' formulas."""

import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxbert.losses import (cross_entropy, label_smoothed_cross_entropy, ordinal_log_loss, simcse_loss,
                            supervised_contrastive_loss)

ROOT = Path(__file__).resolve().parents[1]
SHAPES = [(3, 2), (8, 5), (13, 5)]  # (batch, classes)

# Jitted as the train step calls them (and one compile per shape is much faster on CPU than op by op).
smoothed_ce = jax.jit(label_smoothed_cross_entropy, static_argnames="smoothing")
oll = jax.jit(ordinal_log_loss, static_argnames="alpha")
supcon = jax.jit(supervised_contrastive_loss, static_argnames="temperature")
simcse = jax.jit(simcse_loss, static_argnames="temperature")
ce = jax.jit(cross_entropy)
oll_and_grad = jax.jit(jax.value_and_grad(ordinal_log_loss))
supcon_and_grad = jax.jit(jax.value_and_grad(supervised_contrastive_loss), static_argnames="temperature")


# ----------------------------------------------------------------------------- references

def ref_log_softmax(row):
    top = max(row)
    log_z = top + math.log(sum(math.exp(x - top) for x in row))
    return [x - log_z for x in row]


def ref_label_smoothed_ce(logits, labels, s):
    """Mean over rows of −Σ_j q_j log p_j with q_j = (1 − s)·[j = y] + s/K."""
    total = 0.0
    for row, y in zip(logits.astype(np.float64), labels):
        k = len(row)
        log_p = ref_log_softmax(row)
        total -= sum(((1 - s) * (j == y) + s / k) * log_p[j] for j in range(k))
    return total / len(labels)


def ref_oll(logits, labels, alpha):
    """Castagnos et al. 2022: mean over rows of −Σ_i log(1 − p_i)·|i − y|^α."""
    total = 0.0
    for row, y in zip(logits.astype(np.float64), labels):
        p = [math.exp(lp) for lp in ref_log_softmax(row)]
        total -= sum(math.log(1 - p[i]) * abs(i - y) ** alpha for i in range(len(row)))
    return total / len(labels)


def ref_unit(x):
    x = x.astype(np.float64)
    return [r / np.linalg.norm(r) for r in x]


def ref_supcon(embeddings, labels, tau, mask=None):
    """Khosla et al. 2020, eq. 2 (L^sup_out), over valid rows, averaged over the anchors that have a positive."""
    z = ref_unit(embeddings)
    rows = [i for i in range(len(z)) if mask is None or mask[i]]
    losses = []
    for i in rows:
        candidates = [a for a in rows if a != i]
        positives = [p for p in candidates if labels[p] == labels[i]]
        if not positives:
            continue
        denominator = sum(math.exp(z[i] @ z[a] / tau) for a in candidates)
        losses.append(-sum(math.log(math.exp(z[i] @ z[p] / tau) / denominator) for p in positives)
                      / len(positives))
    return sum(losses) / len(losses) if losses else 0.0


def ref_simcse(u, v, tau, hard_negatives=None):
    """Gao et al. 2021, eq. 1 (unsupervised) and eq. 5 (with the hard negatives h_j^- of every row j)."""
    h, plus = ref_unit(u), ref_unit(v)
    minus = [] if hard_negatives is None else ref_unit(hard_negatives)
    total = 0.0
    for i in range(len(h)):
        denominator = sum(math.exp(h[i] @ c / tau) for c in plus + minus)
        total -= math.log(math.exp(h[i] @ plus[i] / tau) / denominator)
    return total / len(h)


def random_class_batch(seed, batch, classes, scale=2.0):
    rng = np.random.default_rng(seed)
    return (scale * rng.standard_normal((batch, classes))).astype(np.float32), rng.integers(0, classes, batch)


# ----------------------------------------------------------------------------- label smoothing

@pytest.mark.parametrize("batch,classes", SHAPES)
@pytest.mark.parametrize("smoothing", [0.0, 0.1, 0.5, 1.0])
def test_label_smoothing_against_numpy(batch, classes, smoothing):
    logits, labels = random_class_batch(batch * classes, batch, classes)
    got = smoothed_ce(logits, labels, smoothing)
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(float(got), ref_label_smoothed_ce(logits, labels, smoothing), rtol=1e-5)


@pytest.mark.parametrize("batch,classes", SHAPES)
def test_no_smoothing_is_cross_entropy(batch, classes):
    logits, labels = random_class_batch(0, batch, classes)
    np.testing.assert_allclose(float(smoothed_ce(logits, labels, 0.0)), float(ce(logits, labels)), rtol=1e-6)


# ----------------------------------------------------------------------------- ordinal log loss

@pytest.mark.parametrize("batch,classes", SHAPES)
@pytest.mark.parametrize("alpha", [1.0, 1.5, 2.0])
def test_oll_against_numpy(batch, classes, alpha):
    logits, labels = random_class_batch(batch + classes, batch, classes)
    got = oll(logits, labels, alpha)
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(float(got), ref_oll(logits, labels, alpha), rtol=1e-5)


def test_oll_finite_at_extreme_logits():
    """p_i rounds to 0 or 1 in float32; log(1 − p_i) must still come out right and so must its gradient."""
    logits = np.full((4, 5), -100.0, np.float32)
    logits[[0, 1, 2, 3], [0, 0, 4, 2]] = 100.0
    labels = np.array([0, 4, 4, 0])
    loss, grad = oll_and_grad(jnp.asarray(logits), labels)
    assert np.isfinite(float(loss)) and np.isfinite(np.asarray(grad)).all()
    # Only the rows that put everything on a wrong class cost anything: row 1 (class 0 for label 4) and row 3
    # (class 2 for label 0), each −log(1 − p) = 200 − log 4 for that class, times its distance.
    expected = (4 * (200 - math.log(4)) + 2 * (200 - math.log(4))) / 4
    np.testing.assert_allclose(float(loss), expected, rtol=1e-5)
    assert np.abs(np.asarray(grad)[[0, 2]]).max() < 1e-30


def test_oll_prefers_mistakes_near_the_label():
    near, far = np.zeros((1, 5), np.float32), np.zeros((1, 5), np.float32)
    near[0, 1] = far[0, 4] = 3.0
    labels = np.array([0])
    assert float(oll(near, labels)) < float(oll(far, labels))
    # Cross-entropy cannot tell the two apart.
    np.testing.assert_allclose(float(ce(near, labels)), float(ce(far, labels)))


# ----------------------------------------------------------------------------- supervised contrastive

def two_views(seed, batch, dim, classes):
    """Two noisy views of `batch` points, concatenated, with the labels repeated (as the caller builds them)."""
    rng = np.random.default_rng(seed)
    base = rng.standard_normal((batch, dim))
    views = np.concatenate([base + 0.3 * rng.standard_normal((batch, dim)) for _ in range(2)])
    labels = rng.integers(0, classes, batch)
    return views.astype(np.float32), np.concatenate([labels, labels])


@pytest.mark.parametrize("batch,dim,classes", [(3, 4, 2), (8, 16, 5), (6, 8, 5)])
@pytest.mark.parametrize("tau", [0.07, 0.5])
def test_supcon_against_numpy(batch, dim, classes, tau):
    embeddings, labels = two_views(batch * dim, batch, dim, classes)
    got = supcon(embeddings, labels, tau)
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(float(got), ref_supcon(embeddings, labels, tau), rtol=1e-5)


def test_supcon_mask_against_numpy():
    embeddings, labels = two_views(1, 8, 16, 5)
    mask = np.random.default_rng(2).random(16) < 0.7
    np.testing.assert_allclose(float(supcon(embeddings, labels, 0.1, mask)),
                               ref_supcon(embeddings, labels, 0.1, mask), rtol=1e-5)


def test_supcon_anchors_without_positive():
    rng = np.random.default_rng(0)
    embeddings = rng.standard_normal((5, 8)).astype(np.float32)
    # Rows 3 and 4 have labels of their own: they are negatives for the others but not anchors.
    labels = np.array([0, 0, 0, 1, 2])
    np.testing.assert_allclose(float(supcon(embeddings, labels)),
                               ref_supcon(embeddings, labels, 0.07), rtol=1e-5)
    # No anchor has a positive: zero, and a zero gradient rather than NaN.
    loss, grad = supcon_and_grad(jnp.asarray(embeddings), np.arange(5))
    assert float(loss) == 0.0 and not np.asarray(grad).any()
    # A single valid row has neither positives nor candidates.
    loss, grad = supcon_and_grad(jnp.asarray(embeddings), labels, mask=np.array([1, 0, 0, 0, 0]))
    assert float(loss) == 0.0 and np.isfinite(np.asarray(grad)).all()


def test_supcon_mask_excludes_padding_rows():
    embeddings, labels = two_views(3, 6, 8, 2)
    rng = np.random.default_rng(4)
    padding = rng.standard_normal((3, 8)).astype(np.float32)
    padding[0] = 0.0  # an all-zero padding row must not turn into NaN
    padded = np.concatenate([embeddings, padding])
    padded_labels = np.concatenate([labels, labels[:3]])  # padding labels that would otherwise be positives
    mask = np.arange(len(padded)) < len(embeddings)
    loss, grad = supcon_and_grad(jnp.asarray(padded), padded_labels, mask=mask)
    np.testing.assert_allclose(float(loss), float(supcon(embeddings, labels)), rtol=1e-6)
    assert np.isfinite(np.asarray(grad)).all() and not np.asarray(grad)[~mask].any()


def test_supcon_permutation_invariant():
    embeddings, labels = two_views(5, 8, 16, 5)
    mask = np.random.default_rng(6).random(16) < 0.8
    order = np.random.default_rng(7).permutation(16)
    np.testing.assert_allclose(
        float(supcon(embeddings[order], labels[order], 0.07, mask[order])),
        float(supcon(embeddings, labels, 0.07, mask)), rtol=1e-6)


# ----------------------------------------------------------------------------- SimCSE

def sentence_triples(seed, n, dim):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((n, dim)).astype(np.float32) for _ in range(3)]


@pytest.mark.parametrize("n,dim", [(2, 4), (8, 16), (5, 32)])
@pytest.mark.parametrize("hard", [False, True])
@pytest.mark.parametrize("tau", [0.05, 1.0])
def test_simcse_against_numpy(n, dim, hard, tau):
    u, v, negatives = sentence_triples(n * dim, n, dim)
    negatives = negatives if hard else None
    got = simcse(u, v, tau, negatives)
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(float(got), ref_simcse(u, v, tau, negatives), rtol=1e-5)


def test_simcse_hard_negatives_and_temperature_change_the_value():
    u, v, negatives = sentence_triples(0, 8, 16)
    plain = float(simcse(u, v, 0.05))
    assert float(simcse(u, v, 0.05, negatives)) > plain  # more candidates in every denominator
    assert not np.isclose(float(simcse(u, v, 0.1)), plain)


def test_simcse_identical_views_beat_random_views():
    u, v, _ = sentence_triples(1, 8, 32)
    same, unrelated = float(simcse(u, u)), float(simcse(u, v))
    assert same < 0.01 < math.log(8) / 2 < unrelated


def test_losses_take_bfloat16_and_return_float32():
    logits, labels = random_class_batch(0, 4, 5)
    u, v, negatives = (jnp.asarray(x, jnp.bfloat16) for x in sentence_triples(0, 4, 8))
    bf16 = jnp.asarray(logits, jnp.bfloat16)
    for loss in (smoothed_ce(bf16, labels, 0.1), oll(bf16, labels),
                 supcon(u, labels), simcse(u, v, hard_negatives=negatives)):
        assert loss.dtype == jnp.float32


# ----------------------------------------------------------------------------- errors

LOGITS, LABELS = np.zeros((4, 5), np.float32), np.zeros(4, np.int32)
ROWS = np.ones((4, 8), np.float32)


@pytest.mark.parametrize("call,name", [
    (lambda: label_smoothed_cross_entropy(LOGITS, LABELS[:3], 0.1), "labels"),
    (lambda: label_smoothed_cross_entropy(LOGITS[0], LABELS, 0.1), "logits"),
    (lambda: label_smoothed_cross_entropy(LOGITS, LABELS, 1.5), "smoothing"),
    (lambda: ordinal_log_loss(LOGITS, LABELS[:, None]), "labels"),
    (lambda: ordinal_log_loss(LOGITS[None], LABELS), "logits"),
    (lambda: ordinal_log_loss(LOGITS, LABELS, alpha=0.0), "alpha"),
    (lambda: supervised_contrastive_loss(ROWS[0], LABELS), "embeddings"),
    (lambda: supervised_contrastive_loss(ROWS, LABELS[:2]), "labels"),
    (lambda: supervised_contrastive_loss(ROWS, LABELS, mask=np.ones(5, bool)), "mask"),
    (lambda: supervised_contrastive_loss(ROWS, LABELS, temperature=0.0), "temperature"),
    (lambda: simcse_loss(ROWS[0], ROWS[0]), "u"),
    (lambda: simcse_loss(ROWS, ROWS[:3]), "v"),
    (lambda: simcse_loss(ROWS, ROWS[:, :4]), "v"),
    (lambda: simcse_loss(ROWS, ROWS, hard_negatives=ROWS[:2]), "hard_negatives"),
    (lambda: simcse_loss(ROWS, ROWS, temperature=-1.0), "temperature"),
])
def test_bad_arguments_are_named(call, name):
    with pytest.raises(ValueError, match=rf"^{name} must"):
        call()


# ----------------------------------------------------------------------------- data parallelism

def test_four_devices_match_one_device():
    """Sharded over 4 fake CPU devices under jit, the negatives of every device are used: same value as 1."""
    script = textwrap.dedent("""
        import jax, numpy as np
        from jax.sharding import NamedSharding, PartitionSpec as P
        from jaxbert.losses import simcse_loss, supervised_contrastive_loss
        from jaxbert.train_step import data_mesh
        assert jax.device_count() == 4, jax.devices()
        rng = np.random.default_rng(0)
        u, v, negatives = (rng.standard_normal((8, 16)).astype(np.float32) for _ in range(3))
        labels = rng.integers(0, 3, 8)
        mask = np.arange(8) < 7
        def losses(u, v, negatives, labels, mask):
            return (simcse_loss(u, v), simcse_loss(u, v, 0.05, negatives),
                    supervised_contrastive_loss(u, labels, 0.07, mask))
        def run(mesh):
            args = jax.device_put((u, v, negatives, labels, mask), NamedSharding(mesh, P("data")))
            assert len(args[0].sharding.device_set) == len(mesh.devices)
            return np.array(jax.jit(losses)(*args))
        four, one = run(data_mesh()), run(data_mesh(jax.devices()[:1]))
        print("four", four, "one", one)
        assert np.allclose(four, one, rtol=1e-6, atol=0), (four, one)
        # Each device alone, with only its own two rows as negatives, would give a different loss.
        per_device = np.mean([simcse_loss(u[i:i + 2], v[i:i + 2]) for i in range(0, 8, 2)])
        assert not np.isclose(per_device, four[0]), (per_device, four[0])
    """)
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "four" in result.stdout
