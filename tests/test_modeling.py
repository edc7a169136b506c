"""The Flax encoder against Hugging Face's PyTorch `BertModel`: outputs and gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import TINY, random_batch
from jaxbert.convert import load_hf_checkpoint, parameter_table
from jaxbert.modeling import BertConfig, BertModel, Execution, explicit_attention
from jaxbert.tokenization import BertTokenizer

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

PAIRS = [
    ("A man is playing a guitar.", "Someone plays an acoustic guitar on stage."),
    ("How do I learn Python quickly?", "What is the fastest way to learn Python?"),
    ("The movie was a complete waste of time, sadly.", "Café owners in Zürich raised prices again!"),
    ("Short one.", "This second sentence is a good deal longer than the first, so the batch is padded."),
]


def torch_reference(folder):
    model = transformers.BertModel.from_pretrained(folder, attn_implementation="eager")
    return model.eval().float()


def scalar_loss_weights(rng, batch, seq, hidden):
    return rng.standard_normal((batch, seq, hidden)).astype(np.float32), rng.standard_normal((batch, hidden)).astype(
        np.float32)


def compare(folder, ids, mask, types):
    """Returns the masked hidden-state error, pooler error, and worst relative gradient error."""
    config, params = load_hf_checkpoint(folder, log=lambda _: None)
    model = BertModel(config)
    w_hidden, w_pool = scalar_loss_weights(np.random.default_rng(1), *ids.shape, config.hidden_size)
    m = mask[..., None].astype(np.float32)

    def jax_loss(p):
        out = model.apply({"params": p}, ids, mask, types)
        loss = jnp.sum(out["last_hidden_state"] * m * w_hidden) + jnp.sum(out["pooler_output"] * w_pool)
        return loss, out

    (_, out), grads = jax.value_and_grad(jax_loss, has_aux=True)(params)

    ref = torch_reference(folder)
    t = lambda a: torch.from_numpy(np.asarray(a))  # noqa: E731
    ref_out = ref(input_ids=t(ids).long(), attention_mask=t(mask).long(), token_type_ids=t(types).long())
    ref_loss = (ref_out.last_hidden_state * t(m) * t(w_hidden)).sum() + (ref_out.pooler_output * t(w_pool)).sum()
    ref_loss.backward()

    hidden_err = np.max(np.abs((np.asarray(out["last_hidden_state"]) - ref_out.last_hidden_state.detach().numpy()) * m))
    pooler_err = np.max(np.abs(np.asarray(out["pooler_output"]) - ref_out.pooler_output.detach().numpy()))
    flat_grads = jax.tree_util.tree_flatten_with_path(grads)[0]
    by_path = {tuple(k.key for k in path): np.asarray(g) for path, g in flat_grads}
    ref_params = dict(ref.named_parameters())
    ref_grads = {name: p.grad.numpy() for name, p in ref_params.items()}
    # The key bias adds q·b_k to every logit of a query row, which softmax cancels: its true gradient is zero and
    # both frameworks return rounding noise. Scaling by the largest gradient of the whole model keeps that noise
    # from reading as a large relative error while leaving every other tensor's own scale in charge.
    floor = 1e-3 * max(np.max(np.abs(g)) for g in ref_grads.values())
    grad_errs = {}
    for rule in parameter_table(config):
        ref_grad = ref_grads[rule.hf_name]
        mine = rule.to_hf(by_path[rule.flax_path])
        grad_errs[rule.hf_name] = np.max(np.abs(mine - ref_grad)) / max(np.max(np.abs(ref_grad)), floor)
    # Every parameter has a gradient: nothing in the table is silently disconnected.
    assert len(grad_errs) == len(ref_params)
    return hidden_err, pooler_err, grad_errs


def test_tiny_random_bert_matches_pytorch(tiny_hf_dir):
    ids, mask, types = random_batch(np.random.default_rng(0), TINY["vocab_size"])
    hidden_err, pooler_err, grad_errs = compare(tiny_hf_dir, ids, mask, types)
    worst = max(grad_errs, key=grad_errs.get)
    print(f"tiny: hidden {hidden_err:.2e}, pooler {pooler_err:.2e}, worst grad {grad_errs[worst]:.2e} ({worst})")
    assert hidden_err < 1e-5 and pooler_err < 1e-5
    assert grad_errs[worst] < 1e-4, worst


def test_minilm_matches_pytorch(minilm_dir):
    enc = BertTokenizer.from_dir(minilm_dir).encode([a for a, _ in PAIRS], [b for _, b in PAIRS], max_length=128)
    ids, mask, types = enc["input_ids"], enc["attention_mask"], enc["token_type_ids"]
    assert mask.min() == 0, "the batch must contain padding to exercise the mask"
    hidden_err, pooler_err, grad_errs = compare(minilm_dir, ids, mask, types)
    worst = max(grad_errs, key=grad_errs.get)
    print(f"MiniLM: hidden {hidden_err:.2e}, pooler {pooler_err:.2e}, worst grad {grad_errs[worst]:.2e} ({worst})")
    assert hidden_err < 1e-5 and pooler_err < 1e-5
    assert grad_errs[worst] < 1e-4, worst


def test_parameter_count_matches_pytorch(tiny_hf_dir):
    config, params = load_hf_checkpoint(tiny_hf_dir, log=lambda _: None)
    ours = sum(x.size for x in jax.tree.leaves(params))
    assert ours == sum(p.numel() for p in torch_reference(tiny_hf_dir).parameters())


def test_padding_does_not_change_real_tokens(tiny_hf_dir):
    config, params = load_hf_checkpoint(tiny_hf_dir, log=lambda _: None)
    ids, mask, types = random_batch(np.random.default_rng(3), config.vocab_size, batch=1, seq=6)
    pad = lambda a: np.pad(a, ((0, 0), (0, 5)))  # noqa: E731
    model = BertModel(config)
    short = model.apply({"params": params}, ids, mask, types)["last_hidden_state"]
    long = model.apply({"params": params}, pad(ids), pad(mask), pad(types))["last_hidden_state"]
    np.testing.assert_allclose(long[:, :6], short, atol=1e-6)


def test_bfloat16_forward_close_to_float32(minilm_dir):
    config, params = load_hf_checkpoint(minilm_dir, log=lambda _: None)
    ids, mask, types = random_batch(np.random.default_rng(2), config.vocab_size, batch=4, seq=24)
    f32 = BertModel(config).apply({"params": params}, ids, mask, types)
    bf16 = BertModel(config, dtype=jnp.bfloat16).apply({"params": params}, ids, mask, types)
    assert bf16["last_hidden_state"].dtype == jnp.bfloat16
    m = mask[..., None]
    ref = np.asarray(f32["last_hidden_state"]) * m
    err = np.max(np.abs(np.asarray(bf16["last_hidden_state"], np.float32) * m - ref)) / np.max(np.abs(ref))
    pool_err = np.max(np.abs(np.asarray(bf16["pooler_output"], np.float32) - np.asarray(f32["pooler_output"])))
    print(f"bf16 vs f32: hidden rel {err:.2e}, pooler abs {pool_err:.2e}")
    # bfloat16 keeps 8 mantissa bits (relative step 2^-8 ≈ 4e-3); six layers of rounding stay within a few steps.
    assert err < 3e-2 and pool_err < 3e-2


def test_param_dtype_is_storage_dtype():
    config = BertConfig(**TINY)
    ids = jnp.ones((1, 4), jnp.int32)
    params = BertModel(config, dtype=jnp.bfloat16, param_dtype=jnp.bfloat16).init(jax.random.key(0), ids, ids)
    assert {x.dtype for x in jax.tree.leaves(params)} == {jnp.dtype(jnp.bfloat16)}


def test_fused_and_explicit_attention_agree():
    rng = np.random.default_rng(0)
    q, k, v = (jnp.asarray(rng.standard_normal((2, 7, 4, 8)), jnp.float32) for _ in range(3))
    mask = jnp.asarray([[1] * 7, [1] * 4 + [0] * 3], bool)[:, None, None, :]
    fused = jax.nn.dot_product_attention(q, k, v, mask=mask)
    explicit = explicit_attention(q, k, v, mask, jax.random.key(0), dropout_rate=0.0)
    np.testing.assert_allclose(explicit, fused, atol=1e-6)


def test_lengths_masks_and_explicit_attention_agree():
    """Right-padded masks given to the kernel as key lengths, as a boolean mask, and the explicit softmax: the same
    contexts at every position, padded query rows included (they still attend to the real keys)."""
    rng = np.random.default_rng(0)
    q, k, v = (jnp.asarray(rng.standard_normal((3, 7, 4, 8)), jnp.float32) for _ in range(3))
    lengths = np.array([7, 4, 1], np.int32)
    mask = jnp.asarray(np.arange(7)[None, :] < lengths[:, None])[:, None, None, :]
    explicit = explicit_attention(q, k, v, mask, jax.random.key(0), dropout_rate=0.0)
    by_lengths = jax.nn.dot_product_attention(q, k, v, key_value_seq_lengths=jnp.asarray(lengths),
                                              implementation="xla")
    by_mask = jax.nn.dot_product_attention(q, k, v, mask=mask, implementation="xla")
    np.testing.assert_allclose(by_lengths, explicit, atol=1e-6)
    np.testing.assert_allclose(by_mask, explicit, atol=1e-6)


def encoder_outputs_and_grads(execution, ids, mask, types, config=BertConfig(**TINY)):
    """The tiny encoder's outputs and its parameters' gradient of a weighted sum of them, under `execution`."""
    model = BertModel(config, execution=execution)
    params = BertModel(config).init(jax.random.key(0), ids, mask)["params"]
    weights = np.random.default_rng(1).standard_normal((*ids.shape, config.hidden_size)).astype(np.float32)

    def loss(p):
        out = model.apply({"params": p}, ids, mask, types)
        return jnp.sum(out["last_hidden_state"] * weights) + jnp.sum(out["pooler_output"]), out

    grads, out = jax.grad(loss, has_aux=True)(params)
    return out, grads


def test_encoder_with_lengths_equals_encoder_with_mask():
    ids, mask, types = random_batch(np.random.default_rng(0), TINY["vocab_size"], batch=4, seq=9)
    assert mask.min() == 0
    out_mask, grads_mask = encoder_outputs_and_grads(Execution("xla"), ids, mask, types)
    out_lengths, grads_lengths = encoder_outputs_and_grads(Execution("xla", right_padded=True), ids, mask, types)
    for a, b in zip(jax.tree.leaves((out_mask, grads_mask)), jax.tree.leaves((out_lengths, grads_lengths)),
                    strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_remat_changes_neither_outputs_nor_gradients():
    """`nn.remat` recomputes each layer in the backward pass: same parameter tree, same numbers."""
    ids, mask, types = random_batch(np.random.default_rng(0), TINY["vocab_size"], batch=4, seq=9)
    out, grads = encoder_outputs_and_grads(Execution(), ids, mask, types)
    out_remat, grads_remat = encoder_outputs_and_grads(Execution(remat=True), ids, mask, types)
    assert jax.tree.structure(grads_remat) == jax.tree.structure(grads)
    for a, b in zip(jax.tree.leaves((out, grads)), jax.tree.leaves((out_remat, grads_remat)), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    # The backward pass really recomputes: one `remat` per layer in the differentiated program, none without.
    params = BertModel(BertConfig(**TINY)).init(jax.random.key(0), ids, mask)["params"]

    def remats(execution):
        model = BertModel(BertConfig(**TINY), execution=execution)
        grad = jax.grad(lambda p: model.apply({"params": p}, ids, mask)["pooler_output"].sum())
        return str(jax.make_jaxpr(grad)(params)).count("remat")

    assert (remats(Execution()), remats(Execution(remat=True))) == (0, TINY["num_hidden_layers"])


def test_auto_attention_picks_cudnn_only_where_it_applies(monkeypatch):
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    lengths = Execution(right_padded=True)
    assert lengths.attention_kernel(jnp.bfloat16, 64) == "cudnn"
    assert lengths.attention_kernel(jnp.float16, 32) == "cudnn"
    assert lengths.attention_kernel(jnp.float32, 64) == "xla"  # cuDNN's kernel has no float32
    assert lengths.attention_kernel(jnp.bfloat16, 17) == "xla"  # e.g. PALs of width 204 over 12 heads
    assert Execution().attention_kernel(jnp.bfloat16, 64) == "xla"  # a mask would become a materialized bias
    assert Execution("cudnn").attention_kernel(jnp.float32, 17) == "cudnn"  # an explicit choice is kept
    monkeypatch.setattr(jax, "default_backend", lambda: "cpu")
    assert lengths.attention_kernel(jnp.bfloat16, 64) == "xla"
    with pytest.raises(ValueError, match="attention kernel 'flash'"):
        Execution("flash")


@pytest.mark.skipif(jax.default_backend() != "gpu", reason="the cuDNN attention kernel needs an NVIDIA GPU")
def test_cudnn_attention_matches_explicit_in_bfloat16():
    rng = np.random.default_rng(0)
    q, k, v = (jnp.asarray(rng.standard_normal((4, 64, 12, 64)), jnp.bfloat16) for _ in range(3))
    lengths = np.array([64, 40, 17, 2], np.int32)
    mask = jnp.asarray(np.arange(64)[None, :] < lengths[:, None])[:, None, None, :]
    fused = jax.nn.dot_product_attention(q, k, v, key_value_seq_lengths=jnp.asarray(lengths), implementation="cudnn")
    explicit = explicit_attention(q, k, v, mask, jax.random.key(0), dropout_rate=0.0)
    np.testing.assert_allclose(np.asarray(fused, np.float32), np.asarray(explicit, np.float32), atol=2e-2)


def test_attention_dropout_path_is_used_in_training():
    """With attention dropout on, the explicit path runs: two dropout keys give two different outputs, and with
    every other dropout off the expectation over keys approaches the deterministic output."""
    config = BertConfig(**{**TINY, "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.5})
    ids, mask, types = random_batch(np.random.default_rng(0), config.vocab_size)
    model = BertModel(config)
    params = model.init(jax.random.key(0), ids, mask)["params"]
    run = lambda key: model.apply({"params": params}, ids, mask, types, deterministic=False,  # noqa: E731
                                  rngs={"dropout": key})["last_hidden_state"]
    a, b = run(jax.random.key(1)), run(jax.random.key(2))
    assert not np.allclose(a, b)
    det = model.apply({"params": params}, ids, mask, types)["last_hidden_state"]
    assert np.all(np.isfinite(a)) and det.shape == a.shape


def test_config_errors_name_the_problem(tmp_path):
    with pytest.raises(ValueError, match="model_type is 'roberta'"):
        BertConfig.from_dict({"model_type": "roberta"})
    with pytest.raises(ValueError, match="not a multiple"):
        BertConfig(hidden_size=30, num_attention_heads=4)
    with pytest.raises(ValueError, match="hidden_act"):
        BertConfig(hidden_act="mish")
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        BertConfig.from_json_file(tmp_path / "config.json")
