"""jaxbert.data: reading and validating the course CSVs, encoding, caching, batching."""

import re
from pathlib import Path

import numpy as np
import pytest

from jaxbert.config import ConfigError, load_config
from jaxbert.data import (batch_length, bucket_length, encode_split, load_task_data, make_batch, pad_indices,
                          read_hf_split, read_split)
from jaxbert.tasks import TASKS
from jaxbert.tokenization import BertTokenizer

REAL_DATA = Path(__file__).resolve().parents[2] / "shared/data/cs224n"
PROMPT = "Are these questions asking the same thing?"


def write_tsv(path: Path, header: str, *rows: str) -> Path:
    """Rows are raw lines (tabs and quotes as they appear in the file)."""
    path.write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
    return path


QUORA_HEADER = "\tid\tsentence1\tsentence2\tis_duplicate"
SST_HEADER = "\tid\tsentence\tsentiment"
STS_HEADER = "\tid\tsentence1\tsentence2\tsimilarity"


@pytest.fixture(scope="module")
def tok(minilm_dir):
    return BertTokenizer.from_dir(minilm_dir)


@pytest.fixture
def quora(tmp_path):
    return write_tsv(
        tmp_path / "quora-train.csv", QUORA_HEADER,
        '0\ta1\tHow do I learn?\t Where do I start learning? \t1.0',
        '1\ta2\t"""Which"" is it, ""the"" or ""a""?"\tSecond\t0.0',  # quoted, doubled quotes
        '2\ta3\t"spans\ntwo lines"\tok\t1',  # quoted line break
        '3\ta4\tno label\there\t',  # empty label
        '4\ta5\tbad\tlabel\t2.0',  # out of range
        '5\ta6\tbad\tlabel\tyes',  # unparsable
        '6\ta7\t   \tempty first\t0.0',  # empty text
        '7\ta8\ttoo few fields',  # malformed
        '8\ta9\tanother\tempty label\t',
    )


def data_config(tasks, data_dir, cache_dir=None, **overrides):
    """A validated config reading `tasks` from `data_dir` (no cache unless `cache_dir`); `overrides` are dotted
    keys with `__` for the dot (`data__max_length=16`)."""
    return load_config(None, {"tasks": tasks, "data.data_dir": str(data_dir),
                              "data.cache_dir": str(cache_dir) if cache_dir else "none",
                              **{k.replace("__", "."): v for k, v in overrides.items()}})


def test_task_specs():
    assert set(TASKS) == {"sst", "cfimdb", "para", "sts", "nli", "tweet"}
    assert len(TASKS["nli"].text) == 3 and TASKS["nli"].encoding == "triplet" and TASKS["nli"].file("dev") is None
    assert TASKS["para"].is_pair and not TASKS["sst"].is_pair and not TASKS["nli"].is_pair
    assert TASKS["para"].file("test") == "quora-test-student.csv"
    assert TASKS["cfimdb"].file("dev") == "ids-cfimdb-dev.csv"
    assert (TASKS["sst"].num_classes, TASKS["sts"].kind, TASKS["sts"].num_classes) == (5, "regression", 0)
    with pytest.raises(ValueError, match="unknown split"):
        TASKS["sst"].file("val")


def test_read_quoting_and_skips(quora):
    ex = read_split(quora, TASKS["para"])
    assert ex.ids == ["a1", "a2", "a3"]
    assert ex.texts == ["How do I learn?", '"Which" is it, "the" or "a"?', "spans\ntwo lines"]
    assert ex.pairs == ["Where do I start learning?", "Second", "ok"]  # stripped
    assert ex.labels.dtype == np.int32 and ex.labels.tolist() == [1, 0, 1]  # "1.0" -> 1
    assert ex.skipped == {"empty label": 2, "label out of range": 1, "unparsable label": 1,
                          "empty text": 1, "malformed row": 1}
    assert ex.skipped_rows["empty label"] == [4, 9] and ex.skipped_rows["malformed row"] == [8]
    summary = ex.summary()
    assert summary.startswith("quora-train.csv: 3 rows, skipped 6 (empty label 2: rows 4, 9;")
    assert "\n" not in summary and "malformed row 1: rows 8" in summary


def test_class_and_score_labels(tmp_path):
    sst = read_split(write_tsv(tmp_path / "s.csv", SST_HEADER, "0\ti0\t Good .\t4", "1\ti1\tx\t5",
                               "2\ti2\tx\t-1", "3\ti3\tx\t2.5", "4\ti4\tFine\t3.0"), TASKS["sst"])
    assert sst.texts == ["Good .", "Fine"] and sst.labels.tolist() == [4, 3] and sst.labels.dtype == np.int32
    assert sst.skipped == {"label out of range": 2, "unparsable label": 1}
    sts = read_split(write_tsv(tmp_path / "t.csv", STS_HEADER, "0\ti0\ta\tb\t5.0", "1\ti1\ta\tb\t5.1",
                               "2\ti2\ta\tb\t0.8", "3\ti3\ta\tb\tnan"), TASKS["sts"])
    assert sts.labels.dtype == np.float32 and np.allclose(sts.labels, [5.0, 0.8])
    assert sts.skipped == {"label out of range": 1, "non-finite label": 1}
    assert read_split(write_tsv(tmp_path / "u.csv", SST_HEADER, "0\ti0\tok\t1"), TASKS["sst"]).summary() == \
        "u.csv: 1 rows, none skipped"


def test_missing_column_and_file(tmp_path):
    bad = write_tsv(tmp_path / "sts-dev.csv", "\tid\tsentence1\tsim", "0\ti\ta\t1")
    with pytest.raises(ValueError, match=r"sts-dev.csv: missing column\(s\) \['sentence2'\];"):
        read_split(bad, TASKS["sts"])  # the label column is optional here (test files lack it)
    with pytest.raises(ValueError) as err:
        read_split(bad, TASKS["sts"], require_labels=True)
    msg = str(err.value)
    assert "sts-dev.csv" in msg and "missing column(s) ['sentence2', 'similarity']" in msg
    assert "sts reads the columns ['sentence1', 'sentence2', 'similarity']" in msg
    with pytest.raises(FileNotFoundError, match="nope-train.csv"):
        read_split(tmp_path / "nope-train.csv", TASKS["sst"])


def test_test_file_without_labels(tmp_path):
    path = write_tsv(tmp_path / "quora-test-student.csv", "\tid\tsentence1\tsentence2", "0\tq0\tA?\tB?",
                     "1\tq1\t\tB?")
    ex = read_split(path, TASKS["para"])
    assert ex.labels is None and ex.ids == ["q0"] and ex.skipped == {"empty text": 1}
    assert "(unlabeled)" in ex.summary()
    with pytest.raises(ValueError, match="is_duplicate"):
        read_split(path, TASKS["para"], require_labels=True)


def test_encode_cross_and_bi_match_tokenizer(quora, tok):
    ex = read_split(quora, TASKS["para"])
    cross = encode_split(ex, tok, max_length=24, pair_encoding="cross")
    ref = tok.encode(ex.texts, ex.pairs, max_length=24, pad_to=24)
    assert len(cross) == 3 and cross.split_name == "quora-train" and not cross.bi_encoded
    assert set(cross.inputs) == {"input_ids", "attention_mask", "token_type_ids"}
    for k, v in cross.inputs.items():
        assert v.dtype == np.int32 and v.shape == (3, 24)
        np.testing.assert_array_equal(v, ref[k])
    row = cross.inputs["token_type_ids"][0]
    n_first = len(tok.encode([ex.texts[0]])["input_ids"][0])  # [CLS] s1 [SEP]
    assert not row[:n_first].any() and row[n_first:cross.lengths[0]].all() and not row[cross.lengths[0]:].any()
    np.testing.assert_array_equal(cross.lengths, ref["attention_mask"].sum(1))
    np.testing.assert_array_equal(cross.labels, [1, 0, 1])
    assert cross.ids.tolist() == ["a1", "a2", "a3"]

    bi = encode_split(ex, tok, max_length=24, pair_encoding="bi")
    assert bi.bi_encoded
    a, b = tok.encode(ex.texts, max_length=24, pad_to=24), tok.encode(ex.pairs, max_length=24, pad_to=24)
    for k in ("input_ids", "attention_mask", "token_type_ids"):
        np.testing.assert_array_equal(bi.inputs[k], a[k])
        np.testing.assert_array_equal(bi.inputs[k + "_b"], b[k])
    assert not bi.inputs["token_type_ids_b"].any()
    np.testing.assert_array_equal(bi.lengths, np.maximum(a["attention_mask"].sum(1), b["attention_mask"].sum(1)))

    # Single-sentence tasks ignore pair_encoding.
    sst = read_split(write_tsv(quora.parent / "s.csv", SST_HEADER, "0\ti\tgood\t1"), TASKS["sst"])
    assert not encode_split(sst, tok, max_length=8, pair_encoding="bi").bi_encoded


def test_prompt(quora, tok):
    ex = read_split(quora, TASKS["para"])
    enc = encode_split(ex, tok, max_length=40, pair_encoding="cross", prompt=PROMPT)
    ref = tok.encode([f"{PROMPT} {t}" for t in ex.texts], ex.pairs, max_length=40, pad_to=40)
    np.testing.assert_array_equal(enc.inputs["input_ids"], ref["input_ids"])
    assert tok.decode(enc.inputs["input_ids"][0]).startswith("are these questions asking the same thing? how do i")
    with pytest.raises(ValueError, match="cross-encoded pair tasks only"):
        encode_split(ex, tok, max_length=40, pair_encoding="bi", prompt=PROMPT)
    sst = read_split(write_tsv(quora.parent / "s.csv", SST_HEADER, "0\ti\tgood\t1"), TASKS["sst"])
    with pytest.raises(ValueError, match="cross-encoded pair tasks only"):
        encode_split(sst, tok, max_length=8, prompt=PROMPT)
    with pytest.raises(ValueError, match="pair_encoding"):
        encode_split(ex, tok, max_length=8, pair_encoding="siamese")


def test_truncation_count(tmp_path, tok):
    path = write_tsv(tmp_path / "sst.csv", SST_HEADER, "0\ti0\t" + "word " * 30 + "\t1", "1\ti1\tshort\t2",
                     "2\ti2\t" + "more words " * 10 + "\t3")
    enc = encode_split(read_split(path, TASKS["sst"]), tok, max_length=12)
    assert enc.num_truncated == 2 and enc.lengths.tolist() == [12, 3, 12]
    pairs = write_tsv(tmp_path / "p.csv", STS_HEADER, "0\ti0\t" + "a " * 20 + "\tb\t1", "1\ti1\tx\ty\t1")
    bi = encode_split(read_split(pairs, TASKS["sts"]), tok, max_length=12, pair_encoding="bi")
    assert bi.num_truncated == 1 and bi.lengths.tolist() == [12, 3]


def test_cache_hit(quora, tok, tmp_path, monkeypatch):
    ex = read_split(quora, TASKS["para"])
    cache = tmp_path / "cache"
    first = encode_split(ex, tok, max_length=24, pair_encoding="bi", cache_dir=cache, split_name="train")
    assert not first.cached and len(list(cache.glob("para-train-*.npz"))) == 1

    def boom(*args, **kwargs):
        raise AssertionError("tokenizer called despite cache")

    monkeypatch.setattr(tok, "encode", boom)
    again = encode_split(read_split(quora, TASKS["para"]), tok, max_length=24, pair_encoding="bi",
                         cache_dir=cache, split_name="train")
    assert again.cached and again.bi_encoded and again.num_truncated == first.num_truncated
    for k in first.inputs:
        np.testing.assert_array_equal(again.inputs[k], first.inputs[k])
        assert again.inputs[k].dtype == np.int32
    for attr in ("ids", "lengths", "labels"):
        np.testing.assert_array_equal(getattr(again, attr), getattr(first, attr))
    # Any change of settings or content is a miss (reaches the patched tokenizer).
    for kwargs in (dict(max_length=32, pair_encoding="bi"), dict(max_length=24, pair_encoding="cross"),
                   dict(max_length=24, pair_encoding="cross", prompt=PROMPT)):
        with pytest.raises(AssertionError, match="despite cache"):
            encode_split(ex, tok, cache_dir=cache, split_name="train", **kwargs)
    ex.labels[0] = 0
    with pytest.raises(AssertionError, match="despite cache"):
        encode_split(ex, tok, max_length=24, pair_encoding="bi", cache_dir=cache, split_name="train")

    # A corrupt cache file is re-tokenized and overwritten, not trusted.
    monkeypatch.undo()
    (path,) = cache.glob("para-train-*.npz")
    path.write_bytes(b"not a zip")
    fresh = encode_split(read_split(quora, TASKS["para"]), tok, max_length=24, pair_encoding="bi",
                         cache_dir=cache, split_name="train")
    assert not fresh.cached and encode_split(read_split(quora, TASKS["para"]), tok, max_length=24,
                                             pair_encoding="bi", cache_dir=cache, split_name="train").cached


def test_buckets_and_batches(quora, tok):
    assert [bucket_length(n, (32, 64, 128)) for n in (1, 32, 33, 128, 500)] == [32, 32, 64, 128, 128]
    # The buckets rule lives in the config now: unsorted and repeated lengths are fine, and bucket as their
    # sorted unique set would.
    buckets = load_config(None, {"data.buckets": "64,16,64", "data.max_length": "64"}).data.buckets
    assert ([bucket_length(n, buckets) for n in (1, 16, 17, 64, 500)]
            == [bucket_length(n, (16, 64)) for n in (1, 16, 17, 64, 500)] == [16, 16, 64, 64, 64])
    for bad in ([16, 32], [16, 128], [0, 64], []):
        message = f"data.buckets {bad} must be positive lengths, data.max_length 64 the largest"
        with pytest.raises(ConfigError, match=re.escape(message)):
            load_config(None, {"data.buckets": bad, "data.max_length": "64"})

    enc = encode_split(read_split(quora, TASKS["para"]), tok, max_length=32, pair_encoding="bi")
    idx = np.array([2, 0])
    length = batch_length(enc, idx, (8, 16, 32))
    assert length == bucket_length(int(enc.lengths[idx].max()), (8, 16, 32))
    batch = make_batch(enc, idx, length)
    assert set(batch) == set(enc.inputs) | {"labels"}
    for k, v in enc.inputs.items():
        assert batch[k].shape == (2, length)
        np.testing.assert_array_equal(batch[k], v[idx, :length])
        assert not v[idx, length:].any()  # nothing real was cropped
    np.testing.assert_array_equal(batch["labels"], enc.labels[idx])
    with pytest.raises(ValueError, match="longest row"):
        make_batch(enc, idx, int(enc.lengths[idx].max()) - 1)
    with pytest.raises(ValueError, match="padded width"):
        make_batch(enc, idx, 33)

    padded, valid = pad_indices(np.arange(5), 4)
    assert padded.tolist() == [0, 1, 2, 3, 4, 4, 4, 4] and valid.tolist() == [True] * 5 + [False] * 3
    padded, valid = pad_indices(np.array([7, 3]), 2)
    assert padded.tolist() == [7, 3] and valid.all()
    assert pad_indices(np.array([], dtype=int), 4)[0].size == 0
    with pytest.raises(ValueError):
        pad_indices(np.arange(3), 0)


def test_load_task_data(tmp_path, tok):
    d = tmp_path / "data"
    d.mkdir()
    write_tsv(d / "ids-sst-train.csv", SST_HEADER, "0\ti0\tgood\t4", "1\ti1\tbad\t")
    write_tsv(d / "ids-sst-dev.csv", SST_HEADER, "0\td0\tok\t2")
    write_tsv(d / "my-sts.csv", STS_HEADER, "0\ts0\ta\tb\t3.2")
    logs = []
    short = dict(data__max_length="16", data__buckets="16")
    config = data_config("sst,sts", d, tmp_path / "cache", data__files={"sts": {"train": "my-sts.csv"}},
                         heads__sts_encoding="cross", heads__sts_head="linear", **short)
    out = load_task_data(config, tok, ["train", "test"], logs.append)
    assert set(out["sst"]) == {"train"} and set(out["sts"]) == {"train"}  # test files absent
    assert out["sst"]["train"].split_name == "train" and len(out["sst"]["train"]) == 1
    assert not out["sts"]["train"].bi_encoded and out["sts"]["train"].max_length == 16  # as the config says
    assert any("ids-sst-train.csv: 1 rows, skipped 1 (empty label 1: rows 2)" in line for line in logs)
    assert any("my-sts.csv: 1 rows, none skipped; 0 truncated" in line for line in logs)
    assert sum("absent" in line and "test" in line for line in logs) == 2
    logs.clear()
    load_task_data(data_config("sst", d, tmp_path / "cache", **short), tok, ["train"], logs.append)
    assert logs[0] == f"sst: files in {d}/" and logs[1].endswith("(cached)")
    # The encoding of a pair task is the config's (`heads.sts_encoding`, bi by default).
    bi = load_task_data(data_config("sts", d, data__files={"sts": {"train": "my-sts.csv"}}, **short), tok,
                        ["train"], logs.append)
    assert bi["sts"]["train"].bi_encoded

    with pytest.raises(FileNotFoundError, match="sts-dev.csv"):
        load_task_data(data_config("sts", d, data__source="local", **short), tok, ["dev"], logs.append)
    # What load_task_data checked of its arguments is the config's rules now.
    with pytest.raises(ConfigError, match=re.escape("heads.sts_encoding is 'siamese'; allowed: cross, bi")):
        data_config("sts", d, heads__sts_encoding="siamese", **short)
    with pytest.raises(ConfigError, match=re.escape("tasks ['quora'] must be a non-empty subset of the known tasks: sst")):
        data_config("quora", d, **short)
    with pytest.raises(ConfigError, match=re.escape("data.files.quora: 'quora' is not a task")):
        data_config("sst", d, data__files={"quora": {"train": "x.csv"}}, **short)
    with pytest.raises(ValueError, match="unknown split"):
        load_task_data(data_config("sst", d, **short), tok, ["validation"], logs.append)


def test_read_hf_split(monkeypatch):
    datasets = pytest.importorskip("datasets")
    tables = {
        ("SetFit/sst5", None, "validation"): {"text": [" nice ", "meh"], "label": [4, 2],
                                              "label_text": ["very positive", "neutral"]},
        ("nyu-mll/glue", "qqp", "test"): {"question1": ["a?", "b?"], "question2": ["c?", "d?"],
                                         "label": [-1, -1], "idx": [0, 1]},
        ("nyu-mll/glue", "qqp", "train"): {"question1": ["a?", "b?", "e?"], "question2": ["c?", "d?", ""],
                                          "label": [1, -1, 0], "idx": [5, 6, 7]},
        ("sentence-transformers/stsb", None, "train"): {"sentence1": ["x", "y"], "sentence2": ["z", "w"],
                                                        "score": [1.0, 0.36]},
    }
    calls = []

    def fake_load(name, config=None, split=None):
        calls.append((name, config, split))
        return datasets.Dataset.from_dict(tables[(name, config, split)])

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    sst = read_hf_split(TASKS["sst"], "dev")
    assert sst.texts == ["nice", "meh"] and sst.labels.tolist() == [4, 2] and sst.pairs is None
    assert sst.ids == ["validation-0", "validation-1"] and sst.name == "hf:SetFit/sst5:validation"
    qqp_test = read_hf_split(TASKS["para"], "test")
    assert qqp_test.labels is None and qqp_test.pairs == ["c?", "d?"] and qqp_test.ids == ["0", "1"]
    qqp = read_hf_split(TASKS["para"], "train")
    assert qqp.ids == ["5"] and qqp.skipped == {"empty label": 1, "empty text": 1}
    sts = read_hf_split(TASKS["sts"], "train")
    assert sts.labels.dtype == np.float32 and np.allclose(sts.labels, [5.0, 1.8])
    assert calls[1] == ("nyu-mll/glue", "qqp", "test")
    with pytest.raises(ValueError, match="cfimdb"):
        read_hf_split(TASKS["cfimdb"], "train")


def test_auto_source_takes_local_files_when_there_else_the_hub(tmp_path, tok, monkeypatch):
    datasets = pytest.importorskip("datasets")
    calls = []

    def fake_load(name, config=None, split=None):
        calls.append((name, config, split))
        return datasets.Dataset.from_dict({"sentence1": ["x", "y"], "sentence2": ["z", "w"], "score": [1.0, 0.2]})

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    d = tmp_path / "data"
    d.mkdir()
    write_tsv(d / "ids-sst-train.csv", SST_HEADER, "0\ti0\tgood\t4")
    write_tsv(d / "ids-sst-dev.csv", SST_HEADER, "0\td0\tok\t2")
    logs = []
    out = load_task_data(data_config("sst,sts", d), tok, ["train", "dev"], logs.append)
    assert out["sst"]["train"].ids.tolist() == ["i0"] and np.allclose(out["sts"]["dev"].labels, [5.0, 1.0])
    assert calls == [("sentence-transformers/stsb", None, "train"), ("sentence-transformers/stsb", None, "validation")]
    assert f"sst: files in {d}/" in logs
    assert f"sts: {d / 'sts-train.csv'} absent, reading the Hugging Face dataset sentence-transformers/stsb" in logs
    # `local` keeps its strict meaning: no Hub, the missing file named with where the files go.
    with pytest.raises(FileNotFoundError) as err:
        load_task_data(data_config("sts", d, data__source="local"), tok, ["train"], logs.append)
    assert str(err.value) == (f"sts train file not found: {d / 'sts-train.csv'}; put its files sts-train.csv, "
                              f"sts-dev.csv, sts-test-student.csv (test optional) in {d}/ or pass --data-dir DIR, or "
                              "read its Hugging Face source sentence-transformers/stsb with --data.source=hf (needs "
                              "the network)")
    assert len(calls) == 2


def test_no_local_files_and_no_network_says_where_the_files_go(tmp_path, tok, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")  # the Hub unreachable, at once
    with pytest.raises(ConnectionError) as err:
        load_task_data(data_config("para", tmp_path), tok, ["train"], lambda _: None)
    message = str(err.value)
    assert message.startswith("para: cannot download nyu-mll/glue from the Hugging Face Hub")
    assert (f"put its files quora-train.csv, quora-dev.csv, quora-test-student.csv (test optional) in {tmp_path}/"
            in message)
    assert "--data-dir DIR" in message and "--data.source=hf" in message


def test_id_column_is_optional_and_the_delimiter_the_tasks(tmp_path):
    config = load_config(None, {"tasks": "mine", "task_defs": {"mine": {
        "kind": "classification", "num_classes": 3, "text": ["review"], "label": "stars", "delimiter": ",",
        "files": {"train": "mine.csv"}}}})
    task = config.task("mine")
    path = write_tsv(tmp_path / "mine.csv", "stars,review,extra", "2,fine,x", "5,too high,x", "0,meh,x")
    examples = read_split(path, task)
    assert examples.ids == ["1", "3"] and examples.texts == ["fine", "meh"] and examples.labels.tolist() == [2, 0]
    assert examples.skipped == {"label out of range": 1}
    with pytest.raises(ValueError) as err:
        read_split(write_tsv(tmp_path / "tabs.csv", "stars\treview", "1\tok"), task, require_labels=True)
    assert str(err.value) == (f"{tmp_path / 'tabs.csv'}: missing column(s) ['review', 'stars']; mine reads the "
                              "columns ['review', 'stars'] (the label is optional in a test file) and an optional "
                              "id, ','-separated; the header has ['stars\\treview']")


def test_undecodable_file_is_one_clear_error(tmp_path):
    path = tmp_path / "ids-sst-dev.csv"
    before = f"{SST_HEADER}\n0\ti0\tcaf"
    path.write_bytes(f"{before}\xe9\t2\n".encode("latin-1"))
    with pytest.raises(ValueError) as err:  # its one row is bad: a file mostly not UTF-8 is refused, not skipped
        read_split(path, TASKS["sst"])
    assert str(err.value) == (f"{path}: not UTF-8 text (1 of 1 data rows; the first bad byte at line 2, byte offset "
                              f"{len(before)}): save it as UTF-8")
    with pytest.raises(FileNotFoundError, match=re.escape(f"sst data file not found: {tmp_path}")):
        read_split(tmp_path, TASKS["sst"])  # a folder is not a data file


@pytest.mark.skipif(not REAL_DATA.is_dir(), reason=f"course data not found at {REAL_DATA}")
def test_real_files(tok, tmp_path):
    expected = {"ids-sst-train.csv": 7444, "ids-sst-dev.csv": 1100, "sts-train.csv": 5180, "sts-dev.csv": 860,
                "quora-dev.csv": 2000}
    for task in TASKS.values():
        for split in ("train", "dev"):
            name = task.file(split)  # None: the task has no such split (nli has no dev file)
            if name is None or not (REAL_DATA / name).is_file():
                continue
            path = REAL_DATA / name
            ex = read_split(path, task, require_labels=True)
            if path.name in expected:
                assert len(ex) == expected[path.name] and not ex.skipped, ex.summary()
            assert len(ex.texts) == len(ex.ids) == len(ex.labels)
    quora = read_split(REAL_DATA / "quora-train.csv", TASKS["para"])
    assert quora.skipped and set(quora.skipped) <= {"empty label", "empty text"}, quora.summary()
    assert quora.skipped["empty label"] >= 1 and "empty label" in quora.summary()
    assert set(np.unique(quora.labels)) <= {0, 1}

    logs = []
    config = data_config("para", REAL_DATA, tmp_path, data__max_length="128", heads__para_encoding="cross",
                         heads__para_prompt=PROMPT)
    out = load_task_data(config, tok, ["train"], logs.append)
    assert len(out["para"]["train"]) == len(quora)
    print("\n".join(logs))
