"""What each task's loss is made of in the step: ordinal / smoothed heads, contrastive views, SMART."""

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import tiny_model
from jaxbert import losses
from jaxbert.config import load_config
from jaxbert.smart import adversarial_loss
from jaxbert.train_step import create_train_state, initial_extra, seed_step, task_loss_fns

KEY = jax.random.key(3)


def losses_at(model, params, batches, config, teacher=None):
    """Each task's `(loss, parts)` at `params` under `config`'s `losses` and `smart` sections."""
    fns = task_loss_fns(model, batches, KEY, config, teacher)
    return {task: jax.jit(fn)(params) for task, fn in fns.items()}


def task_key(task_index):
    """The dropout key `task_loss_fns` gives the `task_index`-th task (sorted by name) for the head's forward."""
    return jax.random.split(jax.random.fold_in(KEY, task_index))[0]


def test_plain_objective_is_the_head_loss():
    model, params, batches = tiny_model()
    results = losses_at(model, params, batches, load_config(None, {}))
    for i, task in enumerate(sorted(batches)):
        output = model.apply({"params": params}, task, batches[task], deterministic=False,
                             rngs={"dropout": task_key(i)})
        expected = {"sst": losses.cross_entropy, "para": losses.binary_cross_entropy,
                    "sts": losses.mean_squared_error}[task](output, batches[task]["labels"])
        total, parts = results[task]
        assert set(parts) == {"head"}
        np.testing.assert_allclose(total, expected, rtol=1e-6)


@pytest.mark.parametrize("overrides, formula", [
    ({"losses.sst": "ordinal", "losses.ordinal_alpha": 1.5}, lambda o, y: losses.ordinal_log_loss(o, y, 1.5)),
    ({"losses.label_smoothing": 0.2}, lambda o, y: losses.label_smoothed_cross_entropy(o, y, 0.2)),
])
def test_sentiment_head_losses(overrides, formula):
    model, params, batches = tiny_model()
    total, parts = losses_at(model, params, batches, load_config(None, overrides))["sst"]
    output = model.apply({"params": params}, "sst", batches["sst"], deterministic=False, rngs={"dropout": task_key(1)})
    np.testing.assert_allclose(total, formula(output, batches["sst"]["labels"]), rtol=1e-6)
    assert set(parts) == {"head"}


def test_contrastive_terms_use_two_dropout_views():
    """SupCon on sst and SimCSE on the bi-encoded sts pairs, computed from one call on each batch run twice."""
    config = load_config(None, {"heads.pair_pooling": "mean", "losses.supcon_weight": 0.5,
                                "losses.simcse_weight": 2.0, "losses.simcse_tasks": ["sts"]})
    model, params, batches = tiny_model(config.heads)
    results = losses_at(model, params, batches, config)
    assert set(results["sst"][1]) == {"head", "supcon"} and set(results["sts"][1]) == {"head", "simcse"}
    assert set(results["para"][1]) == {"head"}

    sst = batches["sst"]
    twice = {k: np.concatenate([v, v]) for k, v in sst.items() if k != "labels"}
    output, embeddings = model.apply({"params": params}, "sst", twice, deterministic=False,
                                     return_embeddings=True, rngs={"dropout": task_key(1)})
    assert not np.allclose(embeddings[:8], embeddings[8:]), "the two views must see different dropout masks"
    labels = np.concatenate([sst["labels"], sst["labels"]])
    np.testing.assert_allclose(results["sst"][1]["supcon"],
                               0.5 * losses.supervised_contrastive_loss(embeddings, labels, 0.07), rtol=1e-5)
    np.testing.assert_allclose(results["sst"][1]["head"], losses.cross_entropy(output[:8], sst["labels"]), rtol=1e-6)

    sts = batches["sts"]
    twice = {k: np.concatenate([v, v]) for k, v in sts.items() if k != "labels"}
    _, embeddings = model.apply({"params": params}, "sts", twice, deterministic=False, return_embeddings=True,
                                rngs={"dropout": task_key(2)})
    first = np.concatenate([embeddings[0:8], embeddings[16:24]])  # sentence 1 and sentence 2, view 1
    second = np.concatenate([embeddings[8:16], embeddings[24:32]])
    np.testing.assert_allclose(results["sts"][1]["simcse"], 2.0 * losses.simcse_loss(first, second, 0.05), rtol=1e-5)


def test_smart_terms():
    """The adversarial term is SMART's on each task's output kind; the proximal term is zero against a teacher
    equal to the params and grows once they differ; the step moves the teacher by its EMA."""
    model, params, batches = tiny_model()
    config = load_config(None, {"smart.enabled": True, "smart.weight": 2.0, "smart.epsilon": 1e-3,
                                "smart.step_size": 1e-2, "smart.noise_std": 1e-3})
    cfg = config.smart
    results = losses_at(model, params, batches, config, teacher=params)
    for i, task in enumerate(sorted(batches)):
        parts = results[task][1]
        assert set(parts) == {"head", "smart", "bregman"}
        assert abs(float(parts["bregman"])) < 1e-12
        assert np.isfinite(float(parts["smart"])) and float(parts["smart"]) > 0
    dropout_key, smart_key = jax.random.split(jax.random.fold_in(KEY, 1))
    forward = lambda d: model.apply({"params": params}, "sst", batches["sst"], deterministic=False,  # noqa: E731
                                    perturbation=d, rngs={"dropout": dropout_key})
    expected = adversarial_loss(forward, forward(None), model.encoder_input_shape("sst", batches["sst"]),
                                "classification", smart_key, cfg)
    np.testing.assert_allclose(results["sst"][1]["smart"], 2.0 * expected, rtol=1e-3)

    off = losses_at(model, params, batches, load_config(None, {"smart.enabled": True, "smart.epsilon": 0.0}),
                    teacher=params)
    assert all(abs(float(parts["smart"])) < 1e-9 for _, parts in off.values())  # δ = 0: equal up to fusion order

    tx = optax.sgd(0.1)
    state = create_train_state(jax.tree.map(jnp.array, params), tx, initial_extra(params, config))
    new, metrics = jax.jit(partial(seed_step, base_key=KEY, model=model, tx=tx, config=config))(state, batches)
    assert {"loss/sst/smart", "loss/sst/bregman", "loss/sts/head"} <= set(metrics)
    expected_teacher = jax.tree.map(lambda t, p: 0.99 * t + 0.01 * p, params, new.params)
    for a, b in zip(jax.tree.leaves(new.extra["teacher"]), jax.tree.leaves(expected_teacher), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-8)
    later = losses_at(model, new.params, batches, config, teacher=new.extra["teacher"])
    assert float(later["sst"][1]["bregman"]) > 0


def test_smart_tasks_limit_the_regularizer():
    """`smart.tasks: [sst]` (report 001): only sst gets the adversarial and proximal terms."""
    model, params, batches = tiny_model()
    smart = {"smart.enabled": True, "smart.epsilon": 1e-3, "smart.noise_std": 1e-3}
    results = losses_at(model, params, batches, load_config(None, {**smart, "smart.tasks": ["sst"]}), teacher=params)
    assert {task: set(parts) for task, (_, parts) in results.items()} == {
        "sst": {"head", "smart", "bregman"}, "para": {"head"}, "sts": {"head"}}
    everywhere = losses_at(model, params, batches, load_config(None, smart), teacher=params)
    np.testing.assert_allclose(results["sst"][1]["smart"], everywhere["sst"][1]["smart"], rtol=1e-6)
