"""The jitted multitask step: heads, loss combination, gradient surgery, accumulation, per-task updates, stacked
seeds, frozen encoder, data parallelism, and the config rules on the step's options."""

import inspect
import os
import subprocess
import sys
import textwrap
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import assert_tree_close, tiny_model
from jaxbert import build
from jaxbert.config import ConfigError, HeadsConfig, load_config
from jaxbert.heads import MultitaskBert, cosine, pool
from jaxbert.losses import combine_losses
from jaxbert.optim import make_optimizer
from jaxbert.gradients import gradvac, gradvac_init, pcgrad
from jaxbert.train_step import (accumulate, create_train_state, data_mesh, initial_extra, jit_predict_step,
                                jit_train_step, partly_frozen_optimizer, predict, replicate, seed_slice, seed_step,
                                shard_batch, stack_seeds, task_loss_fns, train_step, updates_per_step)

ROOT = Path(__file__).resolve().parents[1]
PLAIN = load_config(None, {})  # the default step: summed losses, no surgery, one joint update, no accumulation


def one_seed_step(model, tx, key, config=PLAIN):
    """The step of one seed (unstacked state) with dropout base key `key`, not yet jitted."""
    return partial(seed_step, base_key=key, model=model, tx=tx, config=config)


@pytest.mark.parametrize("heads", [
    HeadsConfig(),
    HeadsConfig(para_encoding="bi", sts_head="cosine_concat", pair_pooling="mean"),
    HeadsConfig(sts_encoding="cross", sts_head="linear", pair_pooling="pooler", sst_pooling="max"),
])
def test_head_output_shapes(heads):
    model, params, batches = tiny_model(heads)
    shapes = {t: model.apply({"params": params}, t, b).shape for t, b in batches.items()}
    assert shapes == {"sst": (8, 5), "para": (8,), "sts": (8,)}


def test_cosine_head_is_clamped_scaled_cosine():
    model, params, batches = tiny_model(HeadsConfig(pair_pooling="mean"))
    scores = np.asarray(model.apply({"params": params}, "sts", batches["sts"]))
    encode = lambda s: model.apply({"params": params}, "sts", {k: batches["sts"][k + s] for k in  # noqa: E731
                                   ("input_ids", "attention_mask", "token_type_ids")}, "mean", True,
                                   method=MultitaskBert.embed_sentences)
    u, v = np.asarray(encode("")), np.asarray(encode("_b"))
    expected = 5 * np.maximum((u * v).sum(1) / np.linalg.norm(u, axis=1) / np.linalg.norm(v, axis=1), 0)
    np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-6)
    assert "sts" not in params  # no parameters of its own


def test_pooling_against_numpy():
    rng = np.random.default_rng(0)
    hidden = rng.standard_normal((2, 4, 3)).astype(np.float32)
    mask = np.array([[1, 1, 0, 0], [1, 1, 1, 1]])
    np.testing.assert_allclose(pool(hidden, None, mask, "mean")[0], hidden[0, :2].mean(0), rtol=1e-6)
    np.testing.assert_allclose(pool(hidden, None, mask, "max")[0], hidden[0, :2].max(0))
    np.testing.assert_allclose(pool(hidden, None, mask, "cls"), hidden[:, 0])
    assert float(cosine(jnp.zeros((1, 3)), jnp.ones((1, 3)))[0]) == 0.0


def test_balanced_combination_gradient():
    """d/dθ Σ_t sg(ΣL/L_t)·L_t = Σ_t (ΣL/L_t) ∇L_t: checked on two quadratic 'task losses'."""
    theta = jnp.array([1.0, -2.0])
    losses = lambda th: {"a": jnp.sum(th ** 2), "b": jnp.sum((th - 3.0) ** 2) / 10}  # noqa: E731
    grad = jax.grad(lambda th: combine_losses(losses(th), "balanced"))(theta)
    la, lb = 5.0, (4.0 + 25.0) / 10
    ga, gb = 2 * np.array([1.0, -2.0]), 2 * (np.array([1.0, -2.0]) - 3.0) / 10
    np.testing.assert_allclose(grad, (la + lb) / la * ga + (la + lb) / lb * gb, rtol=1e-6)
    assert float(combine_losses(losses(theta), "mean")) == pytest.approx((la + lb) / 2)
    assert float(combine_losses(losses(theta), "weights", {"a": 2.0, "b": 0.5})) == pytest.approx(2 * la + 0.5 * lb)
    with pytest.raises(ValueError, match="loss combination 'max'"):
        combine_losses(losses(theta), "max")


def run_steps(model, params, batches, tx, mesh, n=3):
    """`n` default steps of one seed (unstacked state), jitted over `mesh`: `(state, last metrics)`.
    Self-contained: the four-device test runs its source in a subprocess."""
    params = jax.tree.map(jnp.array, params)  # the step donates its input buffers; keep the caller's alive
    state = replicate(create_train_state(params, tx), mesh)
    step = jit_train_step(partial(seed_step, base_key=jax.random.key(1), model=model, tx=tx,
                                  config=load_config(None, {})), mesh)
    for _ in range(n):
        state, metrics = step(state, shard_batch(batches, mesh))
    return state, metrics


def test_step_trains_and_loss_decreases():
    model, params, batches = tiny_model()
    tx = make_optimizer(1e-3, 100)
    mesh = data_mesh()
    _, first = run_steps(model, params, batches, tx, mesh, n=1)
    _, later = run_steps(model, params, batches, tx, mesh, n=30)
    assert set(first) >= {"loss", "grad_norm", "loss/sst", "loss/para", "loss/sts"}
    assert float(later["loss"]) < 0.5 * float(first["loss"])


def test_pcgrad_step_projects_the_encoder_and_leaves_heads_alone():
    """One PCGrad step = per-task gradients, PCGrad (sum) on the encoder, each head its own task's gradient."""
    model, params, batches = tiny_model()
    tx = optax.sgd(1.0)  # the update is minus the gradient, so the step exposes the gradient it used
    mesh = data_mesh()
    key = jax.random.key(1)
    state = replicate(create_train_state(jax.tree.map(jnp.array, params), tx), mesh)
    config = load_config(None, {"train.loss_combination": "sum", "train.surgery": "pcgrad"})
    new, _ = jax.jit(one_seed_step(model, tx, key, config))(state, batches)
    used = jax.tree.map(lambda a, b: a - b, params, new.params)

    task_grads = reference_task_grads(model, params, batches, key)
    expected_encoder = pcgrad([task_grads[t]["bert"] for t in sorted(task_grads)], surgery_key(key), "sum")
    assert_tree_close(used["bert"], expected_encoder, atol=1e-6)
    for task in ("sst", "para"):  # sts's cosine head has no parameters
        assert_tree_close(used[task], task_grads[task][task], atol=1e-7)
    plain = jax.tree.map(lambda *g: sum(g), *[g["bert"] for g in task_grads.values()])
    assert not all(np.allclose(a, b) for a, b in zip(jax.tree.leaves(used["bert"]), jax.tree.leaves(plain))), \
        "random tiny tasks conflict somewhere, so PCGrad must change the encoder gradient"


def reference_task_grads(model, params, batches, key, step=0):
    """Each task's gradient at `params`, with the dropout streams the step uses."""
    fns = task_loss_fns(model, batches, jax.random.fold_in(key, step), PLAIN)
    return {t: jax.grad(fn, has_aux=True)(params)[0] for t, fn in fns.items()}


def surgery_key(key, step=0):
    return jax.random.fold_in(jax.random.fold_in(key, step), 3)


def test_two_updates_step_is_pcgrad_then_plain():
    """`pcgrad_two_updates`: the PCGrad update, then the plain summed gradient, both taken at the start point."""
    model, params, batches = tiny_model()
    tx, key = optax.sgd(1.0), jax.random.key(1)
    state = create_train_state(jax.tree.map(jnp.array, params), tx)
    config = load_config(None, {"train.loss_combination": "sum", "train.surgery": "pcgrad_two_updates"})
    new, _ = jax.jit(one_seed_step(model, tx, key, config))(state, batches)
    task_grads = reference_task_grads(model, params, batches, key)
    shared = [task_grads[t]["bert"] for t in sorted(task_grads)]
    expected = jax.tree.map(lambda a, b: a + b, pcgrad(shared, surgery_key(key), "sum"),
                            jax.tree.map(lambda *g: sum(g), *shared))
    assert_tree_close(jax.tree.map(lambda a, b: a - b, params["bert"], new.params["bert"]), expected, atol=1e-6)
    assert_tree_close(jax.tree.map(lambda a, b: a - b, params["sst"], new.params["sst"]),
                      jax.tree.map(lambda g: 2 * g, task_grads["sst"]["sst"]), atol=1e-7)


@pytest.mark.parametrize("ema", ["raw", "projected"])
def test_gradvac_step_carries_its_targets(ema):
    """GradVac's EMA targets live in the state, move by β·cos each step (the cosine `train.gradvac_ema` names),
    and reach the checkpoint."""
    model, params, batches = tiny_model()
    tx, key = optax.sgd(1.0), jax.random.key(1)
    config = load_config(None, {"train.loss_combination": "sum", "train.surgery": "gradvac",
                                "train.gradvac_beta": 0.5, "train.gradvac_ema": ema})
    extra = initial_extra(params, config)
    state = create_train_state(jax.tree.map(jnp.array, params), tx, extra)
    step = jax.jit(one_seed_step(model, tx, key, config))
    new, _ = step(state, batches)
    task_grads = reference_task_grads(model, params, batches, key)
    shared = [task_grads[t]["bert"] for t in sorted(task_grads)]
    update, targets = gradvac(shared, surgery_key(key), gradvac_init(3), 0.5, "sum",
                              ema_from_projected=ema == "projected")
    np.testing.assert_allclose(new.extra["gradvac_targets"], targets, atol=1e-5)
    _, other = gradvac(shared, surgery_key(key), gradvac_init(3), 0.5, "sum", ema_from_projected=ema == "raw")
    assert not np.allclose(other, targets, atol=1e-4)  # the two sources differ on these gradients
    assert np.abs(np.asarray(targets)).sum() > 0
    assert_tree_close(jax.tree.map(lambda a, b: a - b, params["bert"], new.params["bert"]), update, atol=1e-6)
    assert "gradvac_targets" in new.checkpoint_items()["extra"]
    assert set(create_train_state(params, tx).checkpoint_items()["extra"]) == {"guard"}
    later, _ = step(new, batches)
    assert not np.allclose(later.extra["gradvac_targets"], new.extra["gradvac_targets"])


def test_unknown_surgery_is_an_error():
    with pytest.raises(ConfigError, match="train.surgery is 'pcgard'; allowed: none, pcgrad, "):
        load_config(None, {"train.surgery": "pcgard"})


@pytest.mark.parametrize("accumulation_steps", [1, 2])
def test_seed_stacked_step_equals_separate_steps(accumulation_steps):
    """Two seeds (own params, own keys) stacked and stepped by the vmapped step = each stepped on its own,
    GradVac's per-seed targets included, gradient accumulation too; the vmapped predictions are each seed's."""
    model, params, batches = tiny_model()
    seeds = [jax.tree.map(jnp.array, params), model.init(jax.random.key(5), "sst", batches["sst"])["params"]]
    seeds[1] = {**params, **{name: seeds[1][name] for name in ("sst", "bert")}}
    keys = [jax.random.key(1), jax.random.key(2)]
    tx, mesh = make_optimizer(1e-3, 100, weight_decay=0.01), data_mesh()
    config = load_config(None, {"train.surgery": "gradvac", "train.gradvac_beta": 0.5, "train.batch_size": 8,
                                "train.accumulation_steps": accumulation_steps})

    def initial(p):
        return create_train_state(jax.tree.map(jnp.array, p), tx, initial_extra(p, config))

    def run(state, step):
        step = jit_train_step(step, mesh)
        for _ in range(2):
            state, metrics = step(state, shard_batch(batches, mesh))
        return state, metrics

    vmapped = partial(train_step, base_keys=jnp.stack(keys), model=model, tx=tx, config=config)
    stacked, stacked_metrics = run(replicate(stack_seeds([initial(p) for p in seeds]), mesh), vmapped)
    assert stacked_metrics["loss"].shape == (2,) and stacked.step.shape == (2,)
    predict_sst = jit_predict_step(partial(predict, model=model, task="sst"), mesh)
    both = np.asarray(predict_sst(stacked.params, shard_batch(batches["sst"], mesh)))
    assert both.shape == (8, 2, 5)  # [batch, seeds, classes]
    for k, (p, key) in enumerate(zip(seeds, keys)):
        alone, metrics = run(replicate(initial(p), mesh), one_seed_step(model, tx, key, config))
        assert_tree_close(seed_slice(stacked.params, k), alone.params, atol=1e-6)
        np.testing.assert_allclose(stacked.extra["gradvac_targets"][k], alone.extra["gradvac_targets"], atol=1e-6)
        assert_tree_close(seed_slice(stacked_metrics, k), metrics, atol=1e-6)
        alone_predictions = model.apply({"params": alone.params}, "sst", batches["sst"])
        np.testing.assert_allclose(both[:, k], alone_predictions, rtol=1e-5, atol=1e-6)
    assert not np.allclose(stacked.params["sst"]["kernel"][0], stacked.params["sst"]["kernel"][1])


def test_base_keys_are_typed_one_per_seed():
    """The step's base keys are typed keys (`jax.random.key`), one per seed: `build.base_keys` makes seed k's
    `fold_in(key(k), 1)`; a stack of keys is no one seed's base key."""
    keys = build.base_keys([0, 3])
    assert jax.dtypes.issubdtype(keys.dtype, jax.dtypes.prng_key) and keys.shape == (2,)
    for k, seed in enumerate((0, 3)):
        np.testing.assert_array_equal(jax.random.key_data(keys[k]),
                                      jax.random.key_data(jax.random.fold_in(jax.random.key(seed), 1)))
    model, params, batches = tiny_model()
    state = create_train_state(params, optax.sgd(1.0))
    with pytest.raises(ValueError, match=r"key array of shape \(2, 2\)"):
        one_seed_step(model, optax.sgd(1.0), jax.random.split(jax.random.key(0), (2, 2)))(state, batches)


def test_frozen_params_stay_put():
    """The frozen encoder and a frozen head do not move, weight decay included; the other head trains."""
    model, params, batches = tiny_model(freeze=True)
    tx = partly_frozen_optimizer(make_optimizer(1e-3, 100, weight_decay=0.01), params, {"bert", "para"})
    state, _ = run_steps(model, params, batches, tx, data_mesh())
    for name in ("bert", "para"):
        for old, new in zip(jax.tree.leaves(params[name]), jax.tree.leaves(state.params[name])):
            np.testing.assert_array_equal(old, new)
    assert not np.allclose(params["sst"]["kernel"], state.params["sst"]["kernel"])


def test_four_devices_match_one_device():
    """3 steps sharded over 4 fake CPU devices give the parameters of 3 steps on one device."""
    script = "\n".join([textwrap.dedent("""
        from functools import partial
        import jax, jax.numpy as jnp, numpy as np
        from conftest import tiny_model
        from jaxbert.config import load_config
        from jaxbert.optim import make_optimizer
        from jaxbert.train_step import create_train_state, data_mesh, jit_train_step, replicate, seed_step, shard_batch
    """), inspect.getsource(run_steps), textwrap.dedent("""
        assert jax.device_count() == 4, jax.devices()
        model, params, batches = tiny_model()
        tx = make_optimizer(1e-3, 100, weight_decay=0.01)
        four, _ = run_steps(model, params, batches, tx, data_mesh())
        one, _ = run_steps(model, params, batches, tx, data_mesh(jax.devices()[:1]))
        assert len(four.params["bert"]["pooler"]["kernel"].sharding.device_set) == 4
        err = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b)))) for a, b in zip(jax.tree.leaves(four.params), jax.tree.leaves(one.params)))
        print("max param difference", err)
        assert err < 1e-6, err
    """)])
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
           "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'tests'}"}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "max param difference" in result.stdout


NO_DROPOUT = dict(heads=HeadsConfig(dropout=0.0), hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


@pytest.mark.parametrize("surgery", ["none", "pcgrad"])
def test_accumulated_micro_batches_equal_the_full_batch_step(surgery):
    """Without dropout, 4 micro-batches of 2 rows per task make the same update and report the same losses as
    one batch of 8. With SGD(1) the update is the gradient itself; PCGrad must see each task's full-batch
    gradient, or its projections (nonlinear in the gradients) would differ."""
    model, params, batches = tiny_model(**NO_DROPOUT)
    tx, key = optax.sgd(1.0), jax.random.key(1)
    results = {}
    for steps in (1, 4):
        state = create_train_state(jax.tree.map(jnp.array, params), tx)
        config = load_config(None, {"train.loss_combination": "sum", "train.surgery": surgery,
                                    "train.batch_size": 8, "train.accumulation_steps": steps})
        step = jax.jit(one_seed_step(model, tx, key, config))
        results[steps] = step(state, batches)
    (full, full_metrics), (accumulated, accumulated_metrics) = results[1], results[4]
    assert_tree_close(accumulated.params, full.params, atol=1e-6)
    assert accumulated_metrics.keys() == full_metrics.keys()
    for name in full_metrics:
        np.testing.assert_allclose(accumulated_metrics[name], full_metrics[name], rtol=1e-5, err_msg=name)
    moved = max(float(np.max(np.abs(a - b))) for a, b in zip(jax.tree.leaves(full.params), jax.tree.leaves(params)))
    assert moved > 1e-3  # the comparison is between real updates


def test_micro_batch_m_takes_every_kth_row():
    """Rows m, m + k, ... (not a contiguous block), so each device splits its own rows of a sharded batch; the
    results are averaged over the micro-batches."""
    rows = jnp.arange(8, dtype=jnp.float32)
    mean = jax.jit(lambda b: accumulate(lambda micro, key: micro, b, jax.random.key(0), 4))({"t": {"x": rows}})
    np.testing.assert_array_equal(mean["t"]["x"], [np.mean([0, 1, 2, 3]), np.mean([4, 5, 6, 7])])
    # The config rejects a batch that does not split into equal micro-batches (the step trusts it).
    with pytest.raises(ConfigError, match="train.accumulation_steps 4 must be a positive divisor of "
                                          "train.batch_size 9"):
        load_config(None, {"train.batch_size": 9, "train.accumulation_steps": 4})


def test_balanced_combination_cannot_accumulate():
    with pytest.raises(ConfigError, match="train.loss_combination 'balanced'.*needs train.accumulation_steps 1"):
        load_config(None, {"train.loss_combination": "balanced", "train.accumulation_steps": 2})


@pytest.mark.parametrize("combination, weights", [("sum", None), ("weights", {"para": 2.0, "sst": 1.0, "sts": 0.5})])
def test_per_task_updates_step_one_task_after_another(combination, weights):
    """`updates="per_task"`: para, then sst, then sts, each update from that task's (weighted) loss at the params
    the previous one left, with the dropout stream a joint step gives the task."""
    model, params, batches = tiny_model(HeadsConfig(sts_head="cosine_concat"))
    tx, key = optax.sgd(1.0), jax.random.key(1)
    state = create_train_state(jax.tree.map(jnp.array, params), tx)
    config = load_config(None, {"train.updates": "per_task", "train.loss_combination": combination,
                                **({"train.loss_weights": weights} if weights else {})})
    new, metrics = jax.jit(one_seed_step(model, tx, key, config))(state, batches)

    expected, losses = params, {}
    for task in ("para", "sst", "sts"):
        fn = task_loss_fns(model, batches, jax.random.fold_in(key, 0), config)[task]
        (losses[task], _), grad = jax.value_and_grad(fn, has_aux=True)(expected)
        weight = 1.0 if weights is None else weights[task]
        expected = jax.tree.map(lambda p, g: p - weight * g, expected, grad)
    assert_tree_close(new.params, expected, atol=1e-6)
    for task, value in losses.items():
        np.testing.assert_allclose(metrics[f"loss/{task}"], value, rtol=1e-5)
    np.testing.assert_allclose(metrics["loss"], combine_losses(losses, combination, weights), rtol=1e-5)
    assert int(new.step) == 1


def test_untouched_heads_keep_their_params_and_adam_moments():
    """A head whose task has no loss in an update neither moves nor has its moments decayed, as PyTorch skips a
    parameter without a gradient: in a joint step on sst alone, and between the updates of a per-task step."""
    model, params, batches = tiny_model(HeadsConfig(sts_head="cosine_concat"))
    tx, key = make_optimizer(1e-3, 10, weight_decay=0.01), jax.random.key(1)
    state = create_train_state(jax.tree.map(jnp.array, params), tx)
    adam = lambda s: s.opt_state[-1]  # noqa: E731  make_optimizer's chain ends with the AdamW state

    alone, _ = jax.jit(one_seed_step(model, tx, key))(state, {"sst": batches["sst"]})
    for head in ("para", "sts"):
        assert_tree_close(alone.params[head], params[head], atol=0)
        assert not any(np.any(m) for m in jax.tree.leaves(adam(alone).mu[head]))
    assert not np.allclose(alone.params["sst"]["bias"], params["sst"]["bias"])

    assert int(adam(alone).count) == 1 and int(adam(alone).counts["sst"]["bias"]) == 1
    assert int(adam(alone).counts["para"]["bias"]) == 0  # its bias correction will start at t = 1
    assert int(adam(alone).counts["bert"]["pooler"]["kernel"]) == 0  # no task pools with it
    assert_tree_close(alone.params["bert"]["pooler"], params["bert"]["pooler"], atol=0)  # weight decay skipped it

    per_task = load_config(None, {"train.updates": "per_task"})
    new, _ = jax.jit(one_seed_step(model, tx, key, per_task))(state, batches)
    # The schedule counts every update; each parameter counts its own, as PyTorch's AdamW does.
    assert int(adam(new).count) == 3
    assert int(adam(new).counts["bert"]["encoder"]["layer_0"]["intermediate"]["kernel"]) == 3
    assert int(adam(new).counts["para"]["kernel"]) == int(adam(new).counts["sts"]["kernel"]) == 1
    # para's update came first: a later zero-gradient update would have decayed its moment by b1 = 0.9 each.
    fn = task_loss_fns(model, batches, jax.random.fold_in(key, 0), per_task)["para"]
    grad = jax.grad(fn, has_aux=True)(params)[0]
    assert_tree_close(adam(new).mu["para"], jax.tree.map(lambda g: 0.1 * g, grad["para"]), atol=1e-9)


def test_per_task_updates_reject_surgery_and_other_combinations():
    for surgery, combination in (("pcgrad", "sum"), ("none", "mean"), ("none", "balanced")):
        with pytest.raises(ConfigError, match="train.updates 'per_task' applies each task's own loss"):
            load_config(None, {"train.loss_combination": combination, "train.surgery": surgery,
                               "train.updates": "per_task"})
    with pytest.raises(ConfigError, match="train.updates is 'each'; allowed: joint, per_task"):
        load_config(None, {"train.updates": "each"})


def updates_of(num_tasks, **train):
    return updates_per_step(load_config(None, {f"train.{k}": v for k, v in train.items()}).train, num_tasks)


def test_updates_per_step_counts_the_updates_the_schedule_sees():
    assert updates_of(3, surgery="none", updates="joint") == 1
    assert updates_of(3, surgery="pcgrad", updates="joint") == 1
    assert updates_of(3, surgery="pcgrad_two_updates", updates="joint") == 2
    assert updates_of(3, surgery="none", updates="per_task") == 3
    assert updates_of(1, surgery="none", updates="per_task") == 1
