"""SMART: the symmetric divergence, the adversarial ascent and projection, the Bregman term and the EMA teacher."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import tiny_model
from jaxbert.config import ConfigError, SmartConfig, load_config
from jaxbert.smart import adversarial_loss, bregman_loss, divergence, update_teacher

SHAPE = (4, 3, 5)  # [sequences, seq, hidden]


def np_log_softmax(z):
    z = np.asarray(z, np.float64) - np.max(z, -1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def np_symmetric_kl(log_p, log_q):
    """KL(p‖q) + KL(q‖p) = Σ_c (p_c − q_c)(log p_c − log q_c), averaged over the batch."""
    return np.mean(np.sum((np.exp(log_p) - np.exp(log_q)) * (log_p - log_q), -1))


def np_divergence(p, q, kind):
    p, q = np.asarray(p, np.float64), np.asarray(q, np.float64)
    if kind == "regression":
        return np.mean((p - q) ** 2)
    if kind == "binary":  # log σ(z) = −log(1 + e^{−z}), log(1 − σ(z)) = −log(1 + e^{z})
        two = lambda z: np.stack([-np.logaddexp(0, -z), -np.logaddexp(0, z)], -1)  # noqa: E731
        return np_symmetric_kl(two(p), two(q))
    return np_symmetric_kl(np_log_softmax(p), np_log_softmax(q))


@pytest.mark.parametrize("kind, shape", [("classification", (6, 5)), ("binary", (6,)), ("regression", (6,))])
@pytest.mark.parametrize("scale", [1.0, 80.0])
def test_divergence_against_numpy(kind, shape, scale):
    rng = np.random.default_rng(0)
    p = np.clip(rng.standard_normal(shape) * scale, -scale, scale).astype(np.float32)
    q = np.clip(rng.standard_normal(shape) * scale, -scale, scale).astype(np.float32)
    if scale == 80.0:  # saturated logits of opposite signs: near-one-hot distributions that disagree
        p[0], q[0] = scale, -scale
    value = divergence(jnp.asarray(p), jnp.asarray(q), kind)
    assert value.dtype == jnp.float32 and value.shape == ()
    np.testing.assert_allclose(float(value), np_divergence(p, q, kind), rtol=2e-5)
    grads = jax.grad(divergence, argnums=(0, 1))(jnp.asarray(p), jnp.asarray(q), kind)
    assert all(np.isfinite(g).all() for g in grads)
    assert float(divergence(jnp.asarray(p, jnp.bfloat16), jnp.asarray(p, jnp.bfloat16), kind)) == 0.0


def test_divergence_gradient_pulls_the_two_distributions_together():
    """As MT-DNN's SymKlCriterion, each KL direction's reference is constant: ∂/∂z_p = (softmax p − softmax q) / B."""
    rng = np.random.default_rng(1)
    p, q = rng.standard_normal((2, 3, 4)).astype(np.float32) * 3
    grad_p, grad_q = jax.grad(divergence, argnums=(0, 1))(p, q, "classification")
    expected = (np.exp(np_log_softmax(p)) - np.exp(np_log_softmax(q))) / 3
    np.testing.assert_allclose(grad_p, expected, atol=1e-6)
    np.testing.assert_allclose(grad_q, -expected, atol=1e-6)
    with pytest.raises(ValueError, match="kind 'ranking'"):
        divergence(jnp.asarray(p), jnp.asarray(q), "ranking")


def linear_toy(kind, x=None):
    """forward(δ) = ((x + δ) · W) summed over seq and hidden: a score per example, or 3 logits per example."""
    classes = 3 if kind == "classification" else 1
    w = jnp.asarray(np.random.default_rng(2).standard_normal(SHAPE[1:] + (classes,)), jnp.float32)
    x = jnp.zeros(SHAPE) if x is None else x

    def forward(delta, w=w):
        out = jnp.einsum("bsh,shc->bc", x + delta, w)
        return out if classes > 1 else out[:, 0]

    return forward, w


@pytest.mark.parametrize("norm", ["inf", "l2"])
@pytest.mark.parametrize("kind", ["classification", "binary", "regression"])
def test_zero_when_epsilon_is_zero_or_the_output_ignores_the_perturbation(kind, norm):
    forward, _ = linear_toy(kind)
    clean = forward(jnp.zeros(SHAPE))
    key = jax.random.key(0)
    assert float(adversarial_loss(forward, clean, SHAPE, kind, key, SmartConfig(epsilon=0.0, norm=norm))) == 0.0
    ignores = lambda delta: clean  # noqa: E731
    cfg = SmartConfig(epsilon=1.0, noise_std=0.1, norm=norm)
    assert float(adversarial_loss(ignores, clean, SHAPE, kind, key, cfg)) == 0.0


@pytest.mark.parametrize("norm", ["inf", "l2"])
def test_one_ascent_step_against_numpy(norm):
    """Regression toy f(δ) = Σ (x + δ)W: g ∝ r_b W with r_b = Σ δ₀_b W, so δ₁ = Π_ε(δ₀ + η sign(r_b) W/‖W‖)."""
    forward, w = linear_toy("regression")
    cfg = SmartConfig(noise_std=0.05, step_size=0.3, epsilon=0.2, norm=norm)
    key = jax.random.key(3)
    loss = adversarial_loss(forward, forward(jnp.zeros(SHAPE)), SHAPE, "regression", key, cfg)

    w = np.asarray(w[..., 0], np.float64)  # [seq, hidden]
    delta = cfg.noise_std * np.asarray(jax.random.normal(key, SHAPE, jnp.float32), np.float64)
    r = np.einsum("bsh,sh->b", delta, w)
    if norm == "inf":  # each token row of the gradient scaled to max |g| = 1, then δ clipped to [−ε, ε]
        delta = np.clip(delta + cfg.step_size * np.sign(r)[:, None, None] * w / np.abs(w).max(-1, keepdims=True),
                        -cfg.epsilon, cfg.epsilon)
    else:  # each example's gradient scaled to unit L2 norm, then δ shrunk onto the L2 ball of radius ε
        delta = delta + cfg.step_size * np.sign(r)[:, None, None] * w / np.linalg.norm(w)
        delta *= np.minimum(1, cfg.epsilon / np.linalg.norm(delta.reshape(len(delta), -1), axis=1))[:, None, None]
    np.testing.assert_allclose(float(loss), np.mean(np.einsum("bsh,sh->b", delta, w) ** 2), rtol=1e-5)


@pytest.mark.parametrize("norm", ["inf", "l2"])
@pytest.mark.parametrize("kind", ["classification", "binary"])
def test_ascent_beats_the_initial_noise_and_grows_with_epsilon(kind, norm):
    forward, _ = linear_toy(kind)
    clean = forward(jnp.zeros(SHAPE))
    key = jax.random.key(4)
    cfg = SmartConfig(noise_std=1e-2, step_size=1e-2, epsilon=1.0, norm=norm)
    noise = cfg.noise_std * jax.random.normal(key, SHAPE, jnp.float32)  # the δ₀ that adversarial_loss draws
    assert float(adversarial_loss(forward, clean, SHAPE, kind, key, cfg)) > 2 * float(
        divergence(forward(noise), clean, kind))

    losses = [float(adversarial_loss(forward, clean, SHAPE, kind, key, SmartConfig(
        noise_std=1e-3, step_size=1.0, epsilon=eps, steps=2, norm=norm))) for eps in (1e-3, 1e-2, 1e-1)]
    assert 0 < losses[0] < losses[1] < losses[2], losses


@pytest.mark.parametrize("norm", ["inf", "l2"])
def test_perturbation_stays_in_the_epsilon_ball(norm):
    seen = []
    toy, _ = linear_toy("classification")
    forward = lambda delta: seen.append(delta) or toy(delta)  # noqa: E731
    cfg = SmartConfig(noise_std=0.5, step_size=1.0, epsilon=0.05, steps=3, norm=norm)
    adversarial_loss(forward, toy(jnp.zeros(SHAPE)), SHAPE, "classification", jax.random.key(5), cfg)
    delta = np.asarray(seen[-1])  # the last call evaluates the regularizer at the final δ
    assert delta.dtype == np.float32
    if norm == "inf":
        assert np.abs(delta).max() <= cfg.epsilon and np.isclose(np.abs(delta).max(), cfg.epsilon)
    else:
        norms = np.linalg.norm(delta.reshape(len(delta), -1), axis=1)
        np.testing.assert_allclose(norms, cfg.epsilon, rtol=1e-5)  # steps of size 1 ≫ ε: all on the sphere
        assert (norms <= cfg.epsilon * (1 + 1e-6)).all()


def test_gradient_flows_through_both_outputs():
    """f(δ) = Σ (x + δ)W: d/dW mean (f(δ) − f(0))² = 2 mean r δ; a constant clean output would give 2 mean r (x + δ)."""
    x = jnp.asarray(np.random.default_rng(6).standard_normal(SHAPE), jnp.float32)
    forward, w = linear_toy("regression", x)
    seen = []
    cfg = SmartConfig(noise_std=0.1, step_size=0.1, epsilon=0.1)
    key = jax.random.key(7)

    def loss(w):
        record = lambda delta: seen.append(delta) or forward(delta, w)  # noqa: E731
        return cfg.weight * adversarial_loss(record, forward(jnp.zeros(SHAPE), w), SHAPE, "regression", key, cfg)

    grad = np.asarray(jax.grad(loss)(w)[..., 0])
    delta = np.asarray(jax.lax.stop_gradient(seen[-1]))
    r = np.einsum("bsh,sh->b", delta, np.asarray(w[..., 0]))
    np.testing.assert_allclose(grad, 2 * np.mean(r[:, None, None] * delta, 0), rtol=1e-4, atol=1e-9)


def test_tiny_bert_in_bfloat16_is_finite_and_positive_with_a_finite_weighted_gradient():
    model, params, batches = tiny_model(tasks=("sst",))
    model = model.clone(dtype=jnp.bfloat16)
    batch = {k: v for k, v in batches["sst"].items() if k != "labels"}
    # A bfloat16 embedding of magnitude ~1 cannot represent a change of the paper's ε = 1e-5, so this uses 1e-2.
    cfg = SmartConfig(weight=5.0, noise_std=1e-3, step_size=1e-2, epsilon=1e-2)

    def loss(params):
        # Dropout off keeps the compile short; a shared dropout key is the caller's business, not this module's.
        forward = lambda delta: model.apply({"params": params}, "sst", batch, perturbation=delta)  # noqa: E731
        return cfg.weight * adversarial_loss(forward, forward(None), model.encoder_input_shape("sst", batch),
                                             "classification", jax.random.key(2), cfg)

    value, grads = jax.jit(jax.value_and_grad(loss))(params)
    assert np.isfinite(float(value)) and float(value) > 0
    assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))
    assert np.abs(np.asarray(grads["bert"]["embeddings"]["word_embeddings"]["embedding"])).max() > 0


def test_bregman_loss_holds_the_teacher_constant():
    rng = np.random.default_rng(8)
    out, teacher = jnp.asarray(rng.standard_normal((2, 5, 5)), jnp.float32)
    np.testing.assert_allclose(float(bregman_loss(out, teacher, "classification")),
                               np_divergence(out, teacher, "classification"), rtol=1e-5)
    grad_out, grad_teacher = jax.grad(bregman_loss, argnums=(0, 1))(out, teacher, "classification")
    assert np.abs(grad_out).max() > 0 and np.abs(grad_teacher).max() == 0


def test_update_teacher_against_numpy():
    rng = np.random.default_rng(9)
    teacher = {"a": rng.standard_normal((3, 2)).astype(np.float32),
               "b": {"c": rng.standard_normal(4).astype(np.float32)}}
    params = jax.tree.map(lambda t: (t + rng.standard_normal(t.shape)).astype(np.float32), teacher)
    new = jax.jit(update_teacher)(teacher, params, 0.9)
    for t, p, n in zip(jax.tree.leaves(teacher), jax.tree.leaves(params), jax.tree.leaves(new)):
        assert n.dtype == np.float32
        np.testing.assert_allclose(n, 0.9 * t.astype(np.float64) + 0.1 * p, rtol=1e-6)
    assert jax.tree.structure(new) == jax.tree.structure(teacher)


@pytest.mark.parametrize("field, value", [
    ("weight", -1.0), ("noise_std", float("nan")), ("step_size", -1e-3), ("epsilon", float("inf")),
    ("epsilon", "small"), ("epsilon", True), ("steps", -1), ("steps", 1.5), ("samples", 0), ("samples", 2.0),
    ("ascent", "sign"), ("norm", "l1"), ("bregman_weight", -0.5), ("teacher_momentum", 1.5),
    ("teacher_momentum", -0.1),
])
def test_config_errors_name_the_field(field, value):
    """The `smart` section's rules live in the config: a bad value is a ConfigError that starts with its key."""
    with pytest.raises(ConfigError, match=rf"^smart\.{field}[ :]"):
        load_config(None, {f"smart.{field}": value})
    config = load_config(None, {"smart.epsilon": 0, "smart.steps": 3, "smart.norm": "l2",
                                "smart.teacher_momentum": 1.0})
    assert config.smart.steps == 3 and config.smart.epsilon == 0.0
    # A number spelled as text (the command line's, or YAML's `1e-5`, which it reads as a string) is a number.
    assert load_config(None, {"smart.epsilon": "1e-5"}).smart.epsilon == 1e-5


@pytest.mark.parametrize("norm", ["inf", "l2"])
def test_random_starts_without_ascent_keep_each_examples_largest_divergence(norm):
    """K = 0, S = 3 (report 001): δ_s = Π_ε(σ z_s) for the keys split from `key`; loss = mean_b max_s ℓ_s(b)."""
    forward, w = linear_toy("regression")
    cfg = SmartConfig(noise_std=0.5, epsilon=0.2, steps=0, samples=3, norm=norm)
    key = jax.random.key(8)
    loss = adversarial_loss(forward, forward(jnp.zeros(SHAPE)), SHAPE, "regression", key, cfg)

    w = np.asarray(w[..., 0], np.float64)
    per_sample = []
    for k in jax.random.split(key, 3):
        delta = cfg.noise_std * np.asarray(jax.random.normal(k, SHAPE, jnp.float32), np.float64)
        if norm == "inf":
            delta = np.clip(delta, -cfg.epsilon, cfg.epsilon)
        else:
            delta *= np.minimum(1, cfg.epsilon / np.linalg.norm(delta.reshape(len(delta), -1), axis=1))[:, None, None]
        per_sample.append(np.einsum("bsh,sh->b", delta, w) ** 2)
    per_sample = np.stack(per_sample)
    np.testing.assert_allclose(float(loss), per_sample.max(0).mean(), rtol=1e-5)
    assert per_sample.max(0).mean() > per_sample.mean(), "the largest of 3 must beat their average here"


def test_no_ascent_step_scores_the_projected_start_and_one_step_beats_it():
    forward, _ = linear_toy("classification")
    clean, key = forward(jnp.zeros(SHAPE)), jax.random.key(9)
    one = adversarial_loss(forward, clean, SHAPE, "classification", key, SmartConfig(noise_std=0.1, epsilon=0.1))
    noise = 0.1 * jax.random.normal(key, SHAPE, jnp.float32)
    steps_zero = adversarial_loss(forward, clean, SHAPE, "classification", key,
                                  SmartConfig(noise_std=0.1, epsilon=0.1, steps=0))
    np.testing.assert_allclose(float(steps_zero), float(divergence(forward(jnp.clip(noise, -0.1, 0.1)), clean,
                                                                   "classification")), rtol=1e-6)
    assert float(one) > float(steps_zero)  # the ascent step helps


@pytest.mark.parametrize("norm", ["inf", "l2"])
def test_normalized_ascent_is_the_smart_pytorch_step(norm):
    """smart-pytorch: δ₁ = (δ₀ + η g) / (‖δ₀ + η g‖ + ε) with the raw gradient g = ∇_δ mean_b r_b² = 2 r_b W / B."""
    forward, w = linear_toy("regression")
    cfg = SmartConfig(noise_std=1e-5, step_size=1e-3, epsilon=1e-6, norm=norm, ascent="normalized")
    key = jax.random.key(10)
    loss = adversarial_loss(forward, forward(jnp.zeros(SHAPE)), SHAPE, "regression", key, cfg)

    w = np.asarray(w[..., 0], np.float64)
    delta = cfg.noise_std * np.asarray(jax.random.normal(key, SHAPE, jnp.float32), np.float64)
    r = np.einsum("bsh,sh->b", delta, w)
    step = delta + cfg.step_size * 2 * r[:, None, None] * w / SHAPE[0]
    if norm == "inf":
        size = np.abs(step).max(-1, keepdims=True)
    else:
        size = np.linalg.norm(step.reshape(len(step), -1), axis=1)[:, None, None]
    delta = step / (size + cfg.epsilon)
    np.testing.assert_allclose(float(loss), np.mean(np.einsum("bsh,sh->b", delta, w) ** 2), rtol=1e-4)
    assert float(loss) > 1e3 * float(adversarial_loss(forward, forward(jnp.zeros(SHAPE)), SHAPE, "regression", key,
                                                      SmartConfig(norm=norm))), "unit norm, not an ε-ball"
