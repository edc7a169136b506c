"""Head variants and report 001/002's extra objectives: MLP heads, the sigmoid-scaled cosine, the cosine-embedding
loss, NLI triplets with supervised SimCSE and tweet sentiment through the SST head, each against NumPy."""

import json
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import (TINY, WORDS, dev_rows, random_batch, run_config, sentence, tiny_checkpoint,
                      write_fixture_data)
from jaxbert import losses
from jaxbert.config import ConfigError, HeadsConfig, load_config, parse_overrides
from jaxbert.data import encode_split, load_task_data, read_hf_split, read_split
from jaxbert.heads import MLP, MultitaskBert
from jaxbert.metrics import summarize
from jaxbert.modeling import BertConfig
from jaxbert.tasks import TASKS
from jaxbert.tokenization import BertTokenizer
from jaxbert.train_step import task_loss_fns

CONFIG = BertConfig(**TINY)  # hidden 32
KEY = jax.random.key(7)
ERF = np.vectorize(math.erf)
NUMPY_ACTIVATIONS = {
    "relu": lambda x: np.maximum(x, 0),
    "gelu": lambda x: 0.5 * x * (1 + ERF(x / np.sqrt(2))),
    "tanh": np.tanh,
    "squared_relu": lambda x: np.maximum(x, 0) ** 2,
}


def numpy_mlp(params, x, activation):
    """Hidden layers (dense → activation) in order, then the output dense; float64."""
    x = np.asarray(x, np.float64)
    for i in range(sum(k.startswith("hidden_") for k in params)):
        layer = params[f"hidden_{i}"]
        x = NUMPY_ACTIVATIONS[activation](x @ np.asarray(layer["kernel"], np.float64) + np.asarray(layer["bias"]))
    return x @ np.asarray(params["kernel"], np.float64) + np.asarray(params["bias"])


def numpy_cosine(u, v):
    u, v = np.asarray(u, np.float64), np.asarray(v, np.float64)
    return (u * v).sum(-1) / np.linalg.norm(u, axis=-1) / np.linalg.norm(v, axis=-1)


def param_count(tree):
    return sum(x.size for x in jax.tree.leaves(tree))


# ----------------------------------------------------------------------------- MLP


@pytest.mark.parametrize("activation", sorted(NUMPY_ACTIVATIONS))
def test_mlp_forward_and_size(activation):
    x = np.random.default_rng(0).standard_normal((6, 10)).astype(np.float32)
    mlp = MLP(features=3, hidden_layers=2, hidden_size=7, activation=activation, dropout=0.5,
              kernel_init=jax.nn.initializers.normal(0.5))
    params = mlp.init(KEY, x)["params"]
    assert jax.tree.map(jnp.shape, params) == {
        "hidden_0": {"kernel": (10, 7), "bias": (7,)}, "hidden_1": {"kernel": (7, 7), "bias": (7,)},
        "kernel": (7, 3), "bias": (3,)}
    assert param_count(params) == (10 * 7 + 7) + (7 * 7 + 7) + (7 * 3 + 3)
    params = jax.tree.map(lambda p: p + 0.1, params)  # non-zero biases, so they are checked too
    np.testing.assert_allclose(mlp.apply({"params": params}, x), numpy_mlp(params, x, activation),
                               rtol=1e-5, atol=1e-5)
    # Dropout acts between hidden layers only when asked to.
    noisy = mlp.apply({"params": params}, x, deterministic=False, rngs={"dropout": KEY})
    assert not np.allclose(noisy, numpy_mlp(params, x, activation), atol=1e-4)


def test_squared_relu_is_relu_squared():
    mlp = MLP(features=1, hidden_layers=1, hidden_size=4, activation="squared_relu")
    x = jnp.array([[-2.0, 3.0]])
    params = {"hidden_0": {"kernel": jnp.eye(2, 4), "bias": jnp.zeros(4)}, "kernel": jnp.ones((4, 1)),
              "bias": jnp.zeros(1)}
    assert float(mlp.apply({"params": params}, x)[0, 0]) == 9.0  # relu(-2)² + relu(3)² + 0 + 0


def tiny_batches(tasks, heads, batch=4, seq=9, seed=0):
    rng = np.random.default_rng(seed)
    batches = {}
    for task in tasks:
        ids, mask, types = random_batch(rng, CONFIG.vocab_size, batch=batch, seq=seq)
        b = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
        for suffix in {"bi": ("_b",), "triplet": ("_b", "_c")}.get(heads.encoding(TASKS[task]), ()):
            ids, mask, _ = random_batch(rng, CONFIG.vocab_size, batch=batch, seq=seq)
            b.update({f"input_ids{suffix}": ids, f"attention_mask{suffix}": mask,
                      f"token_type_ids{suffix}": np.zeros_like(ids)})
        if task != "nli":
            b["labels"] = {"sst": rng.integers(0, 5, batch), "tweet": rng.choice([0, 2, 4], batch),
                           "para": rng.integers(0, 2, batch), "sts": rng.uniform(0, 5, batch).astype(np.float32)}[task]
        batches[task] = b
    return batches


def build(tasks, heads):
    """A model of `tasks` (names) with `heads` on the tiny encoder, its params and a batch per task. Not conftest's
    `tiny_model`: its batches have no triplets (nli) and no tweet labels."""
    model = MultitaskBert(CONFIG, tuple(TASKS[t] for t in tasks), heads)
    batches = tiny_batches(tasks, heads)
    params = {}
    for task in tasks:
        params.update(model.init(KEY, task, batches[task])["params"])
    return model, params, batches


def pooled(model, params, batch, suffix="", pooling="cls", task="sst"):
    inputs = {k: batch[k + suffix] for k in ("input_ids", "attention_mask", "token_type_ids")}
    return np.asarray(model.apply({"params": params}, task, inputs, pooling, True,
                                  method=MultitaskBert.embed_sentences))


def test_linear_heads_are_unchanged_by_default():
    """hidden_layers = 0: every head is the single dense layer it always was, parameters and outputs."""
    heads = HeadsConfig(para_encoding="bi", sts_head="cosine_concat")
    model, params, batches = build(("sst", "para", "sts"), heads)
    assert jax.tree.map(jnp.shape, {k: v for k, v in params.items() if k != "bert"}) == {
        "sst": {"kernel": (32, 5), "bias": (5,)}, "para": {"kernel": (128, 1), "bias": (1,)},
        "sts": {"kernel": (65, 1), "bias": (1,)}}
    u, v = (pooled(model, params, batches["para"], s) for s in ("", "_b"))
    features = np.concatenate([u, v, np.abs(u - v), u * v], -1)
    np.testing.assert_allclose(model.apply({"params": params}, "para", batches["para"]),
                               numpy_mlp(params["para"], features, "relu")[:, 0], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("activation", ["squared_relu", "gelu"])
def test_mlp_heads_against_numpy(activation):
    """Two hidden layers of width 16 before every learned head; the cosine STS head projects each sentence."""
    heads = HeadsConfig(para_encoding="bi", hidden_layers=2, hidden_size=16, activation=activation)
    model, params, batches = build(("sst", "para", "sts"), heads)
    shapes = jax.tree.map(jnp.shape, params)
    assert shapes["sst"] == {"hidden_0": {"kernel": (32, 16), "bias": (16,)},
                             "hidden_1": {"kernel": (16, 16), "bias": (16,)}, "kernel": (16, 5), "bias": (5,)}
    assert shapes["para"]["hidden_0"]["kernel"] == (128, 16) and shapes["para"]["kernel"] == (16, 1)
    # The projection: one hidden layer, then a linear layer to the hidden width (the cosine is its "activation").
    assert shapes["sts"] == {"hidden_0": {"kernel": (32, 16), "bias": (16,)}, "kernel": (16, 16), "bias": (16,)}

    sst = model.apply({"params": params}, "sst", batches["sst"])
    np.testing.assert_allclose(sst, numpy_mlp(params["sst"], pooled(model, params, batches["sst"]), activation),
                               rtol=1e-4, atol=1e-5)
    u, v = (pooled(model, params, batches["para"], s) for s in ("", "_b"))
    para = model.apply({"params": params}, "para", batches["para"])
    features = np.concatenate([u, v, np.abs(u - v), u * v], -1)
    np.testing.assert_allclose(para, numpy_mlp(params["para"], features, activation)[:, 0], rtol=1e-4, atol=1e-5)
    u, v = (numpy_mlp(params["sts"], pooled(model, params, batches["sts"], s), activation) for s in ("", "_b"))
    sts = model.apply({"params": params}, "sts", batches["sts"])
    np.testing.assert_allclose(sts, 5 * np.maximum(numpy_cosine(u, v), 0), rtol=1e-4, atol=1e-5)


def test_hidden_size_defaults_to_the_encoder_and_cross_sts_gets_layers():
    heads = HeadsConfig(sts_encoding="cross", sts_head="linear", hidden_layers=1)
    _, params, _ = build(("sst", "sts"), heads)
    assert params["sst"]["hidden_0"]["kernel"].shape == (32, 32)
    assert jax.tree.map(jnp.shape, params["sts"]) == {"hidden_0": {"kernel": (32, 32), "bias": (32,)},
                                                       "kernel": (32, 1), "bias": (1,)}


def test_task_hidden_layers_override_one_head():
    """{sts: 1}: the STS projection of reports 001 and 002 while the other heads stay linear."""
    heads = HeadsConfig(sts_head="sigmoid_cosine", task_hidden_layers={"sts": 1})
    # The config's heads section is the spec itself (no hashable copy of it any more).
    loaded = load_config(None, {"heads.sts_head": "sigmoid_cosine", "heads.task_hidden_layers": {"sts": 1}})
    assert heads == loaded.heads
    assert (heads.layers(TASKS["sst"]), heads.layers(TASKS["sts"]), heads.layers(TASKS["nli"])) == (0, 1, 1)
    _, params, _ = build(("sst", "sts", "nli"), heads)
    assert jax.tree.map(jnp.shape, {k: v for k, v in params.items() if k != "bert"}) == {
        "sst": {"kernel": (32, 5), "bias": (5,)}, "sts": {"kernel": (32, 32), "bias": (32,)}}
    with pytest.raises(ConfigError, match=re.escape("heads.task_hidden_layers: 'tweet' is not a task with a head of "
                                                    "its own (nli trains the sts head, tweet trains the sst head)")):
        load_config(None, {"heads.task_hidden_layers": {"tweet": 1}})


@pytest.mark.parametrize("bad, message", [
    (dict(task_hidden_layers={"sts": -1}), "heads.task_hidden_layers.sts must be non-negative, got -1"),
    (dict(activation="swish"), "heads.activation is 'swish'; allowed: relu, gelu, tanh, squared_relu"),
    (dict(hidden_layers=-1), "heads.hidden_layers must be non-negative, got -1"),
    (dict(hidden_size=0), "heads.hidden_size must be positive or null, got 0"),
])
def test_heads_config_errors(bad, message):
    """The rules HeadSpec checked when built are the config's rules now."""
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(None, {f"heads.{key}": value for key, value in bad.items()})


# ----------------------------------------------------------------------------- sigmoid cosine


@pytest.mark.parametrize("layers", [0, 1])
def test_sigmoid_cosine_against_numpy(layers):
    """5·σ(s·cos(u, v)) (report 002), on the pooled embeddings or through a one-layer linear projection."""
    heads = HeadsConfig(sts_head="sigmoid_cosine", cosine_scale=20.0, pair_pooling="mean", hidden_layers=layers)
    model, params, batches = build(("sts",), heads)
    u, v = (pooled(model, params, batches["sts"], s, "mean", "sts") for s in ("", "_b"))
    if layers:
        assert set(params["sts"]) == {"kernel", "bias"}  # d → d, as in the report's "d features" run
        u, v = numpy_mlp(params["sts"], u, "relu"), numpy_mlp(params["sts"], v, "relu")
    else:
        assert "sts" not in params
    cos = numpy_cosine(u, v)
    scores = np.asarray(model.apply({"params": params}, "sts", batches["sts"]))
    np.testing.assert_allclose(scores, 5 / (1 + np.exp(-20.0 * cos)), rtol=1e-4, atol=1e-5)
    assert np.all((scores > 0) & (scores < 5))


# ----------------------------------------------------------------------------- cosine embedding loss


def numpy_cosine_embedding(u, v, targets, margin):
    cos = numpy_cosine(u, v)
    return np.mean(np.where(targets == 1, 1 - cos, np.maximum(0, cos - margin)))


@pytest.mark.parametrize("margin", [0.0, 0.3, -0.5])
def test_cosine_embedding_loss_against_numpy(margin):
    rng = np.random.default_rng(1)
    u, v = rng.standard_normal((2, 12, 5)).astype(np.float32)
    targets = rng.choice([1, -1], 12)
    np.testing.assert_allclose(losses.cosine_embedding_loss(u, v, targets, margin),
                               numpy_cosine_embedding(u, v, targets, margin), rtol=1e-5)
    # An all-zero embedding (cos 0) has a finite gradient.
    grad = jax.grad(lambda a: losses.cosine_embedding_loss(a, v, targets, margin))(jnp.asarray(u).at[0].set(0.0))
    assert np.isfinite(np.asarray(grad)).all()


def test_cosine_embedding_loss_errors():
    u = jnp.ones((3, 4))
    with pytest.raises(ValueError, match=r"targets must be \[n\]"):
        losses.cosine_embedding_loss(u, u, jnp.ones(2))
    with pytest.raises(ValueError, match="v must be"):
        losses.cosine_embedding_loss(u, jnp.ones((3, 5)), jnp.ones(3))
    with pytest.raises(ValueError, match="margin must be in"):
        losses.cosine_embedding_loss(u, u, jnp.ones(3), margin=1.5)


def task_key(index):
    """The dropout key `task_loss_fns(..., KEY)` gives the `index`-th task (sorted by name) for the forward."""
    return jax.random.split(jax.random.fold_in(KEY, index))[0]


@pytest.mark.parametrize("layers", [0, 1])
def test_step_cosine_embedding_loss_reads_the_pair_embeddings(layers):
    """losses.sts = cosine_embedding: the step's STS loss is torch's CosineEmbeddingLoss on the (projected) pair,
    positives being the pairs scored ≥ 2.5."""
    config = load_config(None, {"tasks": "sts", "heads.sts_head": "sigmoid_cosine", "heads.hidden_layers": layers,
                                "losses.sts": "cosine_embedding", "losses.cosine_embedding_threshold": "2.5",
                                "losses.cosine_embedding_margin": "0.1"})
    assert config.heads == HeadsConfig(sts_head="sigmoid_cosine", hidden_layers=layers)
    model, params, batches = build(("sts",), config.heads)
    total, parts = task_loss_fns(model, batches, KEY, config)["sts"](params)
    _, embeddings = model.apply({"params": params}, "sts", batches["sts"], deterministic=False,
                                return_embeddings=True, rngs={"dropout": task_key(0)})
    u, v = np.split(np.asarray(embeddings), 2)
    targets = np.where(batches["sts"]["labels"] >= 2.5, 1, -1)
    assert set(parts) == {"head"} and 0 < (targets == 1).sum() < len(targets)
    np.testing.assert_allclose(total, numpy_cosine_embedding(u, v, targets, 0.1), rtol=1e-5)
    if layers:  # the projection is trained by it
        grads = jax.grad(lambda p: task_loss_fns(model, batches, KEY, config)["sts"](p)[0])(params)
        assert np.abs(np.asarray(grads["sts"]["kernel"])).sum() > 0


# ----------------------------------------------------------------------------- nli and tweet in the step


@pytest.mark.parametrize("layers", [0, 1])
def test_nli_is_supervised_simcse_through_the_sts_projection(layers):
    config = load_config(None, {"tasks": "sts,nli", "heads.pair_pooling": "mean", "heads.hidden_layers": layers,
                                "losses.simcse_temperature": "0.05"})
    assert config.heads == HeadsConfig(pair_pooling="mean", hidden_layers=layers)
    model, params, batches = build(("sts", "nli"), config.heads)
    assert "nli" not in params and "pal_nli" not in params
    assert ("sts" in params) == bool(layers)
    total, parts = task_loss_fns(model, batches, KEY, config)["nli"](params)
    output, embeddings = model.apply({"params": params}, "nli", batches["nli"], deterministic=False,
                                     return_embeddings=True, rngs={"dropout": task_key(0)})
    assert output.shape == embeddings.shape == (12, 32)
    premises, entailments, contradictions = np.split(np.asarray(embeddings, np.float64), 3)
    if layers:  # the embeddings are the projected pooled sentences
        raw = pooled(model, params, batches["nli"], "_b", "mean", "nli")
        np.testing.assert_allclose(model.apply({"params": params}, "nli", batches["nli"])[4:8],
                                   numpy_mlp(params["sts"], raw, "relu"), rtol=1e-4, atol=1e-5)
    # Supervised SimCSE (Gao et al. eq. 5) written out: premise i against every entailment and contradiction.
    sims = np.array([[numpy_cosine(p, c) for c in np.concatenate([entailments, contradictions])]
                     for p in premises]) / 0.05
    expected = np.mean([np.log(np.exp(row).sum()) - row[i] for i, row in enumerate(sims)])
    assert set(parts) == {"head"}
    np.testing.assert_allclose(total, expected, rtol=1e-4)
    if layers:  # the shared projection is trained by nli
        grads = jax.grad(lambda p: task_loss_fns(model, batches, KEY, config)["nli"](p)[0])(params)
        assert np.abs(np.asarray(grads["sts"]["kernel"])).sum() > 0


def test_tweet_trains_the_sst_head():
    config = load_config(None, {"tasks": "sst,tweet", "heads.pal_size": "8", "heads.pal_heads": "2"})
    assert config.heads == HeadsConfig(pal_size=8, pal_heads=2) and config.losses == load_config(None, {}).losses
    model, params, batches = build(("sst", "tweet"), config.heads)
    assert "tweet" not in params and "pal_tweet" not in params and "pal_sst" in params
    np.testing.assert_allclose(model.apply({"params": params}, "tweet", batches["tweet"]),
                               model.apply({"params": params}, "sst", batches["tweet"]), rtol=1e-6)
    fns = task_loss_fns(model, batches, KEY, config)
    total, _ = fns["tweet"](params)
    logits = model.apply({"params": params}, "tweet", batches["tweet"], deterministic=False,
                         rngs={"dropout": task_key(1)})
    np.testing.assert_allclose(total, losses.cross_entropy(logits, batches["tweet"]["labels"]), rtol=1e-6)
    grads = jax.grad(lambda p: fns["tweet"](p)[0])(params)
    assert np.abs(np.asarray(grads["sst"]["kernel"])).sum() > 0
    # A tweet-only model still has the SST head it trains.
    _, alone_params, _ = build(("tweet",), HeadsConfig())
    assert set(alone_params) == {"bert", "sst"}


# ----------------------------------------------------------------------------- data


NLI_HEADER = "\tid\tsentence1\tsentence2\thard_negative"


def tiny_tokenizer(folder):
    (folder / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", *WORDS]) + "\n")
    return BertTokenizer(folder / "vocab.txt")


def test_nli_reader_and_triplet_encoding(tmp_path):
    path = tmp_path / "nli-train.csv"
    path.write_text("\n".join([
        NLI_HEADER,
        "0\tn0\tA man plays guitar .\tA man plays .\tA cat sleeps .",
        "1\tn1\tthe dog runs\t\ta cat sleeps",  # empty entailment
        "2\tn2\tthe dog runs\ta dog runs",  # a field short
        "3\tn3\tthe dog runs in the park\ta dog runs\t  ",  # empty contradiction
        "4\tn4\tthe cat\tthe cat sleeps\tthe dog",
    ]) + "\n")
    ex = read_split(path, TASKS["nli"], require_labels=True)
    assert ex.ids == ["n0", "n4"] and ex.labels is None
    assert ex.texts[0] == "A man plays guitar ." and ex.pairs[1] == "the cat sleeps" and ex.negatives[1] == "the dog"
    assert ex.skipped == {"empty text": 2, "malformed row": 1}
    assert ex.summary() == ("nli-train.csv: 2 rows, skipped 3 (empty text 2: rows 2, 4; malformed row 1: rows 3)")

    tok = tiny_tokenizer(tmp_path)
    enc = encode_split(ex, tok, max_length=12)
    for suffix, column in (("", ex.texts), ("_b", ex.pairs), ("_c", ex.negatives)):
        reference = tok.encode(column, max_length=12, pad_to=12)
        for k in ("input_ids", "attention_mask", "token_type_ids"):
            np.testing.assert_array_equal(enc.inputs[k + suffix], reference[k])
    masks = [enc.inputs[f"attention_mask{s}"].sum(1) for s in ("", "_b", "_c")]
    np.testing.assert_array_equal(enc.lengths, np.max(masks, axis=0))

    bad = tmp_path / "bad-nli.csv"
    bad.write_text("\tid\tsentence1\tsentence2\n0\tx\ta\tb\n")
    with pytest.raises(ValueError, match=r"bad-nli\.csv: missing column\(s\) \['hard_negative'\]"):
        read_split(bad, TASKS["nli"])


def test_tweet_labels_map_to_sst_classes(tmp_path):
    path = tmp_path / "tweet-train.csv"
    path.write_text("\tid\tsentence\tsentiment\n0\tt0\tawful\t0\n1\tt1\tok\t1\n2\tt2\tgreat\t2\n"
                    "3\tt3\twow\t3\n4\tt4\thm\t1.5\n")
    ex = read_split(path, TASKS["tweet"], require_labels=True)
    assert ex.labels.tolist() == [0, 2, 4] and ex.labels.dtype == np.int32
    assert ex.skipped == {"label out of range": 1, "unparsable label": 1}
    assert ex.skipped_rows == {"label out of range": [4], "unparsable label": [5]}


def test_hub_sources_of_nli_and_tweet(monkeypatch):
    datasets = pytest.importorskip("datasets")
    tables = {
        ("sentence-transformers/all-nli", "triplet", "train"): {
            "anchor": ["a man", "a dog"], "positive": ["a person", ""], "negative": ["a cat", "a bird"]},
        ("cardiffnlp/tweet_eval", "sentiment", "validation"): {"text": ["bad", "fine", "good"], "label": [0, 1, 2]},
    }
    monkeypatch.setattr(datasets, "load_dataset", lambda name, config=None, split=None:
                        datasets.Dataset.from_dict(tables[(name, config, split)]))
    nli = read_hf_split(TASKS["nli"], "train")
    assert (nli.texts, nli.pairs, nli.negatives) == (["a man"], ["a person"], ["a cat"])
    assert nli.labels is None and nli.skipped == {"empty text": 1}
    tweet = read_hf_split(TASKS["tweet"], "dev")
    assert tweet.labels.tolist() == [0, 2, 4] and tweet.name == "hf:cardiffnlp/tweet_eval:sentiment:validation"


def test_load_task_data_skips_splits_a_task_lacks(tmp_path):
    (tmp_path / "nli-train.csv").write_text(NLI_HEADER + "\n0\tn0\ta\tb\tc\n")
    logs = []
    overrides = {"tasks": "nli", "data.data_dir": str(tmp_path), "data.max_length": "8", "data.buckets": "8",
                 "data.cache_dir": "none"}
    out = load_task_data(load_config(None, overrides), tiny_tokenizer(tmp_path), ["train", "dev", "test"],
                         logs.append)
    assert set(out["nli"]) == {"train"} and out["nli"]["train"].inputs["input_ids_c"].shape == (1, 8)
    assert sum("no dev split" in line or "no test split" in line for line in logs) == 2
    # A file for a split the task lacks is refused by the config rule (load_task_data checked it before).
    with pytest.raises(ConfigError, match=re.escape("data.files.nli: the task has no dev split")):
        load_config(None, {**overrides, "data.files": {"nli": {"dev": "x.csv"}}})


def test_tweet_stays_out_of_the_summary_scores():
    dev = summarize({"sst": {"accuracy": 0.5}, "para": {"accuracy": 0.7}, "sts": {"pearson": 0.2},
                     "tweet": {"accuracy": 0.9}}, auxiliary={"tweet"})
    assert dev["mean"] == pytest.approx((0.5 + 0.7 + 0.2) / 3)
    assert dev["overall"] == pytest.approx((0.5 + 0.7 + 0.6) / 3) and dev["tweet"] == {"accuracy": 0.9}
    assert "mean" not in summarize({"tweet": {"accuracy": 0.9}}, auxiliary={"tweet"})


# ----------------------------------------------------------------------------- config


@pytest.mark.parametrize("argv, message", [
    (["--heads.activation=swish"], "heads.activation is 'swish'; allowed: relu, gelu, tanh, squared_relu"),
    (["--heads.sts_head=sigmoid"], "heads.sts_head is 'sigmoid'; allowed: cosine, sigmoid_cosine"),
    (["--losses.sts=mae"], "losses.sts is 'mae'; allowed: mse, cosine_embedding"),
    (["--hidden-layers=-1"], "heads.hidden_layers must be non-negative"),
    (["--heads.hidden_size=0"], "heads.hidden_size must be positive"),
    (["--heads.hidden_size=wide"], "heads.hidden_size: expected an integer"),
    (["--heads.cosine_scale=0"], "heads.cosine_scale must be positive"),
    (["--losses.sts=cosine_embedding", "--sts-head=cosine_concat"],
     "losses.sts 'cosine_embedding' .* heads.sts_head 'cosine' or 'sigmoid_cosine', not 'bi' and 'cosine_concat'"),
    (["--losses.sts=cosine_embedding", "--heads.sts_encoding=cross", "--sts-head=linear"],
     "losses.sts 'cosine_embedding' .* needs heads.sts_encoding 'bi'"),
    (["--losses.cosine_embedding_threshold=6"], "losses.cosine_embedding_threshold must be on the 0-5"),
    (["--losses.cosine_embedding_margin=-2"], "losses.cosine_embedding_margin must be in"),
    (["--losses.simcse_tasks=sst,nli"], "losses.simcse_tasks cannot include nli"),
    (["--tasks=sst,snli"], "must be a non-empty subset of the known tasks: sst, cfimdb, para, sts, nli, tweet"),
])
def test_config_errors_name_the_key(argv, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, parse_overrides(argv))


@pytest.mark.parametrize("text, message", [
    ("heads:\n  task_hidden_layers: {tweet: 1}\n", "heads.task_hidden_layers: 'tweet' is not a task with a head "
                                                    "of its own \\(nli trains the sts head, tweet trains the sst "
                                                    "head\\); known: sst, cfimdb, para, sts"),
    ("heads:\n  task_hidden_layers: {sts: -1}\n", "heads.task_hidden_layers.sts must be non-negative"),
    ("heads:\n  task_hidden_layers: {sts: one}\n", "heads.task_hidden_layers.sts: expected an integer"),
])
def test_task_hidden_layers_config_errors(tmp_path, text, message):
    path = tmp_path / "heads.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config(path)


def test_config_accepts_the_variants():
    config = load_config(None, parse_overrides([
        "--tasks=sst,sts,nli,tweet", "--hidden-layers=2", "--heads.hidden_size=64", "--activation=squared_relu",
        "--sts-head=sigmoid_cosine", "--heads.cosine_scale=20", "--losses.sts=cosine_embedding"]))
    assert (config.heads.hidden_layers, config.heads.hidden_size, config.heads.activation) == (2, 64, "squared_relu")
    assert config.losses.sts == "cosine_embedding" and config.losses.cosine_embedding_threshold == 2.5
    assert config.tasks == ["sst", "sts", "nli", "tweet"]


# ----------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def nli_tweet_workspace(tmp_path_factory):
    """Like conftest's `workspace` (a tiny BERT, the fixture files, here of 24 rows) plus NLI triplets and tweet
    sentiment: `(bert, data, root)`, for conftest's `run_config`."""
    root = tmp_path_factory.mktemp("variants")
    data = write_fixture_data(root / "data", rows=24)
    rng = np.random.default_rng(1)
    triplets = [f"{i}\tnli-{i}\t{sentence(rng, 6)}\t{sentence(rng, 5)}\t{sentence(rng, 5)}" for i in range(24)]
    (data / "nli-train.csv").write_text("\n".join([NLI_HEADER, *triplets, "24\tnli-24\tempty\t\tx"]) + "\n")
    for split, n in (("train", 24), ("dev", 12)):
        rows = [f"{i}\ttweet-{split}-{i}\t{sentence(rng, 7)}\t{rng.integers(0, 3)}" for i in range(n)]
        (data / f"tweet-{split}.csv").write_text("\n".join(["\tid\tsentence\tsentiment", *rows]) + "\n")
    return tiny_checkpoint(root / "bert"), data, root


def test_train_with_nli_and_tweet(nli_tweet_workspace):
    from jaxbert.training import train_and_evaluate

    workspace = nli_tweet_workspace
    _, _, root = workspace
    out = root / "four"
    logs = []
    results = train_and_evaluate(run_config(
        workspace, out, "--tasks=sst,sts,nli,tweet", "--epochs=2", "--sts-head=sigmoid_cosine", "--hidden-layers=1",
        "--activation=squared_relu", "--losses.sts=cosine_embedding"), log=logs.append)
    assert results == json.loads((out / "results.json").read_text())
    dev = results["metrics"]["dev"]
    assert set(dev) == {"sst", "sts", "tweet", "mean", "overall"}  # nli has no dev metric
    assert dev["overall"] == pytest.approx((dev["sst"]["accuracy"] + (dev["sts"]["pearson"] + 1) / 2) / 2)  # no tweet
    assert dev["mean"] == pytest.approx((dev["sst"]["accuracy"] + dev["sts"]["pearson"]) / 2)
    assert results["steps"] == 2 * (24 // 8) and results["best_epoch"] in (1, 2)
    assert any("nli-train.csv: 24 rows, skipped 1 (empty text 1: rows 25)" in line for line in logs), logs
    tweet = (out / "predictions" / "tweet-dev-output.csv").read_text().splitlines()
    assert tweet[0] == "id \t Predicted_Sentiment " and len(tweet) == 13
    assert not list((out / "predictions").glob("nli-*"))
    records = dev_rows(out)
    assert len(records) == 2 and all("tweet" in r["dev"] for r in records)

    # nli alone: nothing to score, so the run keeps its latest state and reports no dev metrics.
    alone = train_and_evaluate(run_config(workspace, root / "nli", "--tasks=nli", "--epochs=1"), log=lambda _: None)
    assert alone["metrics"] == {} and alone["best_epoch"] == 1 and alone["steps"] == 3
    assert (root / "nli" / "results.json").is_file() and not (root / "nli" / "dev_curves.png").exists()


def test_classifier_activation_squares_the_relu_of_the_sentiment_logits():
    """Report 001's sentiment head: linear, then squared ReLU on its logits; other heads are untouched."""
    model, params, batches = build(("sst", "para"), HeadsConfig())
    squared = model.clone(heads=HeadsConfig(classifier_activation="squared_relu"))
    logits = np.asarray(model.apply({"params": params}, "sst", batches["sst"]), np.float64)
    np.testing.assert_allclose(squared.apply({"params": params}, "sst", batches["sst"]),
                               np.maximum(logits, 0) ** 2, rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(squared.apply({"params": params}, "para", batches["para"]),
                                  model.apply({"params": params}, "para", batches["para"]))
    # The choice HeadSpec checked when built is the config's rule now.
    with pytest.raises(ConfigError, match=re.escape("heads.classifier_activation is 'softplus'; allowed: none, "
                                                    "relu, gelu, tanh, squared_relu")):
        load_config(None, parse_overrides(["--heads.classifier_activation=softplus"]))
