"""Projected attention layers (Stickland & Murray 2019): where the parameters live, the zero start, task isolation,
and an encoder pass against a NumPy reference written from the paper's equations."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import TINY, random_batch
from jaxbert import tasks as task_registry
from jaxbert.config import ConfigError, HeadsConfig, load_config
from jaxbert.heads import MultitaskBert
from jaxbert.modeling import BertConfig

CONFIG = BertConfig(**TINY)  # hidden 32, 2 layers, 4 heads
TASKS = ("sst", "para", "sts")  # one sentence, a cross-encoded pair, a bi-encoded pair
RUN_TASKS = tuple(task_registry.get(name) for name in TASKS)
PAL = HeadsConfig(pal_size=8, pal_heads=2)
MODEL = MultitaskBert(CONFIG, RUN_TASKS, PAL)


def tiny_batches(seed=0):
    rng = np.random.default_rng(seed)
    batches = {}
    for task in TASKS:
        ids, mask, types = random_batch(rng, CONFIG.vocab_size, batch=4, seq=9)
        batches[task] = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
    ids, mask, _ = random_batch(rng, CONFIG.vocab_size, batch=4, seq=9)
    batches["sts"].update(input_ids_b=ids, attention_mask_b=mask, token_type_ids_b=np.zeros_like(ids))
    return batches


def init(model, batches, init_fn):
    params = {}
    for task in model.tasks:
        params.update(init_fn(jax.random.key(0), task.name, batches[task.name])["params"])
    return params


def task_grads(model, params, batches, task):
    """d sum(output²) / d params for `task`'s batch: a stand-in for its loss."""
    return jax.grad(lambda p: jnp.sum(model.apply({"params": p}, task, batches[task]).astype(jnp.float32) ** 2))(
        params)


@pytest.fixture(scope="module")
def setup():
    """One init shared by the tests; they run eagerly with equal shapes, so compiled ops are reused across them."""
    batches = tiny_batches()
    return batches, init(MODEL, batches, MODEL.init)


def with_random_pals(params, seed=1, scale=0.3):
    """Every PAL weight random, V^D included, so the branch is no longer the zero it starts as."""
    rng = np.random.default_rng(seed)
    noise = lambda a: jnp.asarray(scale * rng.standard_normal(a.shape), a.dtype)  # noqa: E731
    return {k: jax.tree.map(noise, v) if k.startswith("pal_") else v for k, v in params.items()}


def test_pals_are_top_level_task_keys_shared_across_layers():
    batches = tiny_batches()
    shapes_of = lambda model: jax.tree.map(np.shape, init(  # noqa: E731
        model, batches, lambda key, task, batch: jax.eval_shape(lambda k: model.init(k, task, batch), key)))
    shapes, plain = shapes_of(MODEL), shapes_of(MultitaskBert(CONFIG, RUN_TASKS))
    assert set(plain) == {"bert", "sst", "para"}  # off by default: no PAL keys at all
    assert set(shapes) == set(plain) | {"pal_sst", "pal_para", "pal_sts"}
    assert shapes["bert"] == plain["bert"], "the encoder's own tree must not change (the converter maps it 1:1)"
    small = {"kernel": (8, 2, 4), "bias": (2, 4)}  # pal_size 8 = 2 heads × 4
    expected = {
        "encoder": {"kernel": (32, 8), "bias": (8,)},  # V^E, one per task
        "decoder": {"kernel": (8, 32), "bias": (32,)},  # V^D, one per task
        # one attention per layer, query/key/value only: no output projection
        **{f"attention_{layer}": {"query": small, "key": small, "value": small} for layer in range(2)},
    }
    for task in TASKS:
        assert shapes[f"pal_{task}"] == expected


def test_zero_decoder_leaves_every_task_output_unchanged(setup):
    batches, params = setup
    plain = MultitaskBert(CONFIG, RUN_TASKS)
    plain_params = {k: v for k, v in params.items() if not k.startswith("pal_")}
    for task in TASKS:
        expected = plain.apply({"params": plain_params}, task, batches[task])
        np.testing.assert_array_equal(MODEL.apply({"params": params}, task, batches[task]), expected, err_msg=task)


@pytest.mark.parametrize("freeze", [False, True])
def test_decoder_gradient_is_nonzero_at_the_start(setup, freeze):
    """V^D = 0 blocks the gradient to V^E and the attention, but V^D's own is non-zero, so the branch learns; also
    with `freeze_encoder`, which must not cut the backward pass through the encoder that the PALs sit in."""
    batches, params = setup
    model = MultitaskBert(CONFIG, RUN_TASKS, PAL, freeze_encoder=freeze)
    for task in ("sst", "para"):
        grads = task_grads(model, params, batches, task)[f"pal_{task}"]
        assert np.abs(np.asarray(grads["decoder"]["kernel"])).max() > 1e-6, task
        assert np.abs(np.asarray(grads["encoder"]["kernel"])).max() == 0, task


def test_each_task_loss_reaches_only_its_own_pals(setup):
    batches, params = setup
    params = with_random_pals(params)
    for task, other in (("sst", "para"), ("para", "sst")):
        grads = task_grads(MODEL, params, batches, task)
        assert min(float(np.abs(g).max()) for g in jax.tree.leaves(grads[f"pal_{task}"])) > 0, \
            f"{task}: every PAL weight of its own should get a gradient"
        assert max(float(np.abs(g).max()) for g in jax.tree.leaves(grads[f"pal_{other}"])) == 0, \
            f"{task}'s loss moved pal_{other}"


def np_dense(p, x):
    """x `[..., in]` times a kernel `[in, out...]`, plus bias."""
    return np.tensordot(x, p["kernel"], axes=1) + p["bias"]


def np_attention(p, x, mask):
    """Multi-head softmax(q kᵀ / √d) v over unpadded keys, heads merged, no output projection."""
    q, k, v = (np_dense(p[name], x) for name in ("query", "key", "value"))  # [batch, seq, heads, head_dim]
    scores = np.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(q.shape[-1])
    scores = np.where(mask[:, None, None, :] > 0, scores, -np.inf)
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    context = np.einsum("bhqk,bkhd->bqhd", probs / probs.sum(-1, keepdims=True), v)
    return context.reshape(*context.shape[:2], -1)


def np_layer_norm(p, x, eps=CONFIG.layer_norm_eps):
    centred = x - x.mean(-1, keepdims=True)
    return centred / np.sqrt((centred ** 2).mean(-1, keepdims=True) + eps) * p["scale"] + p["bias"]


def np_gelu(x):
    return 0.5 * x * (1 + np.vectorize(math.erf)(x / math.sqrt(2)))


def reference_encoder(bert, pal, h, mask):
    """Post-LN BERT layers with a PAL in parallel: h_{l+1} = LN(a + FFN(a) + TS(h_l)), a = LN(h_l + MH(h_l)),
    TS(h) = V^D MH_l(V^E h) with V^E, V^D shared by the layers (Stickland & Murray 2019, Eq. 1 and 3)."""
    for layer in range(CONFIG.num_hidden_layers):
        p = bert["encoder"][f"layer_{layer}"]
        attention = np_dense(p["attention"]["output"]["dense"], np_attention(p["attention"]["self"], h, mask))
        a = np_layer_norm(p["attention"]["output"]["LayerNorm"], h + attention)
        ffn = np_dense(p["output"]["dense"], np_gelu(np_dense(p["intermediate"], a)))
        if pal is None:
            ts = 0
        elif f"attention_{layer}" in pal:
            ts = np_dense(pal["decoder"], np_attention(pal[f"attention_{layer}"], np_dense(pal["encoder"], h), mask))
        else:  # g = identity: the low-rank linear layer
            ts = np_dense(pal["decoder"], np_dense(pal["encoder"], h))
        h = np_layer_norm(p["output"]["LayerNorm"], a + ffn + ts)
    return h


@pytest.mark.parametrize("function", ["attention", "identity"])
def test_encoder_with_random_pals_matches_numpy_reference(setup, function):
    batches, params = setup
    model = MODEL.clone(heads=HeadsConfig(pal_size=8, pal_heads=2, pal_function=function))
    if function == "identity":  # V^E and V^D only: no attention of its own
        params = init(model, batches, model.init)
        assert set(params["pal_para"]) == {"encoder", "decoder"}
    params = with_random_pals(params)
    mask = batches["para"]["attention_mask"]
    h = np.random.default_rng(2).standard_normal((*mask.shape, CONFIG.hidden_size)).astype(np.float32)
    got = model.apply({"params": params}, h, mask,
                      method=lambda m, h, mask: m.bert.encode(h, mask, True, m.pal["para"])["last_hidden_state"])
    as_np = lambda tree: jax.tree.map(lambda a: np.asarray(a, np.float64), tree)  # noqa: E731
    expected = reference_encoder(as_np(params["bert"]), as_np(params["pal_para"]), h.astype(np.float64), mask)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
    without = reference_encoder(as_np(params["bert"]), None, h.astype(np.float64), mask)
    assert np.abs(expected - without).max() > 0.1, "the random PALs should change the output"


def test_bfloat16_compute_is_finite(setup):
    batches, params = setup
    model = MultitaskBert(CONFIG, RUN_TASKS, PAL, dtype=jnp.bfloat16)  # float32 weights, bfloat16 arithmetic

    def loss(p):
        logits = model.apply({"params": p}, "sst", batches["sst"])
        return jnp.sum(logits.astype(jnp.float32) ** 2), logits

    (value, logits), grads = jax.value_and_grad(loss, has_aux=True)(with_random_pals(params))
    assert logits.dtype == jnp.bfloat16 and np.isfinite(float(value))
    assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))
    assert np.abs(np.asarray(grads["pal_sst"]["encoder"]["kernel"])).max() > 0


@pytest.mark.parametrize("size, heads, message", [
    (10, 4, "heads.pal_size 10 is neither 0"),
    (-8, 2, "heads.pal_size -8"),
    (8, 0, "heads.pal_heads must be positive"),
])
def test_bad_pal_shapes_are_rejected(size, heads, message):
    """The PAL shape rules live in the config (`heads` section)."""
    with pytest.raises(ConfigError, match=message):
        load_config(None, {"heads.pal_size": size, "heads.pal_heads": heads})
    with pytest.raises(ConfigError, match="heads.pal_function is 'linear'; allowed: attention, identity"):
        load_config(None, {"heads.pal_size": 8, "heads.pal_heads": 2, "heads.pal_function": "linear"})
