"""The readers survive any input: a row is read, or skipped and counted with its reason and row number, or the
source is refused with one line naming it (`DataError`); never a traceback.

Property-based (hypothesis) over every reader: the course files of each built-in task, files of `task_defs` tasks
with their own delimiter and optional id column, raw bytes, and Hub rows (a fake `datasets.load_dataset`, so no
network); then the cases of the issue as examples.
"""

import codecs
import math
import re
from pathlib import Path

import numpy as np
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from jaxbert.config import load_config
from jaxbert.data import MAX_SKIPPED_ROWS, read_hf_split, read_split
from jaxbert.errors import DataError, UserError
from jaxbert.tasks import TASKS

REAL_DATA = Path(__file__).resolve().parents[2] / "shared/data/cs224n"
SST_HEADER = "\tid\tsentence\tsentiment"
STS_HEADER = "\tid\tsentence1\tsentence2\tsimilarity"
# A classification task of the user's read from comma-separated files keyed by row number, and a regression task
# from semicolon-separated files with an id column.
USER = load_config(None, {"tasks": "stars,score", "task_defs": {
    "stars": {"kind": "classification", "num_classes": 3, "text": ["review"], "label": "stars", "delimiter": ",",
              "files": {"train": "stars.csv"}},
    "score": {"kind": "regression", "label_range": [-1.0, 1.0], "text": ["a", "b"], "label": "y",
              "delimiter": ";", "files": {"train": "score.csv"}}}})
FILE_TASKS = [*TASKS.values(), USER.task("stars"), USER.task("score")]
HUB_TASKS = [task for task in TASKS.values() if task.hub is not None]
LINE_END = re.compile("\r\n|\r|\n")  # where a file opened with newline="" splits its lines
MAX_FIELD = 131072  # csv's default field size limit

TEXTS = st.one_of(
    st.sampled_from(["good", "a fine film", "  padded  ", "", "   ", '"quoted"', 'say "hi"', "é ü 日本"]),
    st.text(max_size=12),
    st.text(st.sampled_from('ab "\t,;\r\n\x00\ufeff\x85\u2028'), max_size=8),
    st.sampled_from(["word " * 4000, "x" * (MAX_FIELD + 10)]),  # long, and over csv's field limit
)
LABELS = st.one_of(
    st.integers(-2, 6).map(str),
    st.floats(-2, 6, allow_nan=False).map(lambda v: f"{v:.3g}"),
    st.sampled_from(["1.0", "0.0", " 3 ", "", "nan", "NaN", "inf", "-inf", "Infinity", "1e400", "abc", "0_5", "٣",
                     "1,5", "0x1", "+2", ".5", "5."]),
)
INSERTS = st.one_of(st.sampled_from([b"\xff\xfe", b"\x00", b'"', b"\xe9", b"\r", b"\n", b"\t", b",", b";"]),
                    st.binary(min_size=1, max_size=4))


def mostly(valid, other):
    """`valid` two times in three, else `other` (`st.one_of` would weigh each branch of a nested `one_of`)."""
    return st.integers(0, 2).flatmap(lambda i: other if i == 0 else valid)


@st.composite
def data_files(draw, task):
    """The bytes of a file of `task`: a header (at times lacking a column), rows of valid and invalid fields (at
    times a field short or long), CRLF or CR line ends, a BOM, and bytes inserted anywhere."""
    columns = [*task.text, *([task.label] if task.label else [])]
    if task.defined_in is None:
        header = ["", "id", *columns]
    else:
        header = draw(st.permutations(columns + (["id"] if draw(st.booleans()) else [])))
    if draw(st.integers(0, 9)) == 0:
        header = header[:-1]
    lo, hi = task.label_range if task.label else (0, 0)
    valid = (st.floats(lo, hi).map(lambda v: f"{v:.3g}") if task.kind == "regression" else
             st.integers(int(lo), int(hi)).map(str))
    field = {"": st.integers(0, 99).map(str), "id": st.sampled_from(["a1", "b2", "", " c "]),
             task.label: mostly(valid, LABELS)}
    texts = mostly(st.sampled_from(["good", "a fine film", "bad"]), TEXTS)

    @st.composite
    def rows(draw):
        fields = [draw(field.get(column, texts)) for column in header]
        shape = draw(st.integers(0, 9))
        return fields[:-1] if shape == 0 else [*fields, "extra"] if shape == 1 else fields

    delimiter, end = task.delimiter, draw(st.sampled_from(["\n", "\r\n", "\r"]))
    text = "".join(delimiter.join(row) + end for row in [header, *draw(st.lists(rows(), min_size=1, max_size=8))])
    data = text.encode()[:None if draw(st.booleans()) else -len(end)]  # at times no line end after the last row
    for _ in range(draw(st.sampled_from([0, 0, 1, 1, 2, 3]))):
        at = draw(st.integers(0, len(data)))
        data = data[:at] + draw(INSERTS) + data[at:]
    return (codecs.BOM_UTF8 if draw(st.booleans()) else b"") + data


def check_examples(ex, task, rows):
    """What training may trust of a read split of `rows` rows."""
    n = len(ex)
    assert n >= 1 and len(ex.texts) == n and sum(ex.skipped.values()) + n == rows
    for column in (ex.texts, ex.pairs, ex.negatives):
        assert column is None or len(column) == n
    assert (ex.pairs is not None) == (len(task.text) >= 2) and (ex.negatives is not None) == (len(task.text) == 3)
    for value in [*ex.ids, *ex.texts, *(ex.pairs or []), *(ex.negatives or [])]:
        assert isinstance(value, str) and "\x00" not in value
        value.encode("utf-8")  # no byte that was not UTF-8 came through
    for column in (ex.texts, ex.pairs or [], ex.negatives or []):
        assert all(text and text == text.strip() for text in column)
    if ex.labels is not None:
        assert len(ex.labels) == n and np.isfinite(ex.labels).all()
        if task.kind == "regression":
            lo, hi = task.score_range
            assert ex.labels.dtype == np.float32 and ((lo <= ex.labels) & (ex.labels <= hi)).all()
        else:
            assert ex.labels.dtype == np.int32 and set(ex.labels.tolist()) <= set(task.label_map or
                                                                                  range(task.num_classes))
    for reason, count in ex.skipped.items():
        kept = ex.skipped_rows[reason]
        assert count >= 1 and len(kept) == min(count, MAX_SKIPPED_ROWS) and kept == sorted(set(kept))
        assert 1 <= kept[0] and kept[-1] <= rows
    assert 2 * ex.skipped.get("not UTF-8", 0) <= rows  # a file mostly not UTF-8 is refused
    assert "\n" not in ex.summary() and "\r" not in ex.summary()


def check_file(path, data, task, require_labels):
    """`read_split` of `data` reads it as `check_examples` trusts, or raises a one-line `DataError` naming it."""
    path.write_bytes(data)
    try:
        ex = read_split(path, task, require_labels=require_labels)
    except UserError as e:
        message = str(e)
        assert isinstance(e, DataError) and message.startswith(f"{path}: ") and not re.search("[\r\n]", message)
        event("refused: " + re.sub(r"[(\d].*", "", message.removeprefix(f"{path}: ")))
        return
    text = data.decode("utf-8", "surrogateescape").removeprefix("\ufeff")
    lines = len(LINE_END.split(text)) - (text[-1:] in ("\r", "\n"))
    rows = len(ex) + sum(ex.skipped.values())
    # A line is a row, but for a quoted field that spans lines.
    assert rows == lines - 1 if '"' not in text else rows <= lines - 1
    check_examples(ex, task, rows)
    event("read, skipping " + (", ".join(sorted(ex.skipped)) or "none"))
    if require_labels and task.label:
        assert ex.labels is not None


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


@pytest.mark.parametrize("task", FILE_TASKS, ids=lambda task: task.name)
@settings(max_examples=100, deadline=None)
@given(data=st.data(), require_labels=st.booleans())
def test_any_file_of_a_task_is_read_or_refused_in_one_line(folder, task, data, require_labels):
    check_file(folder / f"{task.name}.csv", data.draw(data_files(task)), task, require_labels)


@settings(max_examples=200, deadline=None)
@given(task=st.sampled_from(FILE_TASKS), head=st.sampled_from([b"", SST_HEADER.encode() + b"\n"]),
       body=st.binary(max_size=400))
def test_any_bytes_are_read_or_refused_in_one_line(folder, task, head, body):
    check_file(folder / "bytes.csv", head + body, task, False)


class FakeDataset:
    """What `read_hf_split` uses of a `datasets.Dataset`, holding any Python values (Arrow would refuse mixed
    types before the reader saw them)."""

    def __init__(self, columns):
        self.columns = columns
        self.column_names = list(columns)

    def __len__(self):
        return len(next(iter(self.columns.values())))

    def __getitem__(self, name):
        return self.columns[name]


HUB_VALUES = st.one_of(st.none(), st.text(max_size=8), st.sampled_from(["", " ", "good", "1", "nan", "-1", "x\x00"]),
                       st.integers(-2, 6), st.floats(), st.booleans(), st.lists(st.integers(), max_size=2),
                       st.binary(max_size=3), st.dictionaries(st.text(max_size=2), st.integers(), max_size=1))


@settings(max_examples=200, deadline=None)
@given(task=st.sampled_from(HUB_TASKS), data=st.data())
def test_any_hub_rows_are_read_or_refused_in_one_line(task, data):
    datasets = pytest.importorskip("datasets")
    hub = task.hub
    split, n = data.draw(st.sampled_from(sorted(hub.splits))), data.draw(st.integers(0, 6))
    text = mostly(st.one_of(st.sampled_from(["good", "a fine film"]), st.text(max_size=8)), HUB_VALUES)
    values = {hub.columns[c]: text for c in task.text}
    if task.label:
        lo, hi = task.label_range
        valid = st.floats(lo / hub.label_scale, hi / hub.label_scale) if task.kind == "regression" else \
            st.integers(int(lo), int(hi))
        values[hub.columns[task.label]] = mostly(valid, HUB_VALUES)
    if data.draw(st.integers(0, 4)) == 0:  # a column the source lacks
        del values[data.draw(st.sampled_from(sorted(values)))]
    if data.draw(st.booleans()):
        values["idx"] = HUB_VALUES
    columns = {name: data.draw(st.lists(value, min_size=n, max_size=n)) for name, value in values.items()}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(datasets, "load_dataset", lambda *args, **kwargs: FakeDataset(columns))
        try:
            ex = read_hf_split(task, split)
        except UserError as e:
            assert isinstance(e, DataError) and task.hub.dataset in str(e) and not re.search("[\r\n]", str(e))
            event("refused: " + re.sub(r"[(\d\[].*", "", str(e).partition(": ")[2]))
            return
    check_examples(ex, task, n)
    event("read, skipping " + (", ".join(sorted(ex.skipped)) or "none"))


# ----------------------------------------------------------------------------- the issue's cases


def write(path, *lines, end="\n"):
    path.write_text("".join(line + end for line in lines), encoding="utf-8", newline="")
    return path


def sst_train(path, n=20):
    return write(path, SST_HEADER, *(f"{i}\tid{i}\tsentence number {i}\t{i % 5}" for i in range(n)))


def test_a_line_not_utf8_is_skipped_with_its_row_number(tmp_path):
    path = sst_train(tmp_path / "ids-sst-train.csv")
    with path.open("ab") as fp:
        fp.write(b"\xff\xfe\n")
    ex = read_split(path, TASKS["sst"], require_labels=True)
    assert len(ex) == 20 and ex.skipped == {"not UTF-8": 1} and ex.skipped_rows == {"not UTF-8": [21]}
    assert ex.summary() == "ids-sst-train.csv: 20 rows, skipped 1 (not UTF-8 1: rows 21)"


@pytest.mark.skipif(not (REAL_DATA / "ids-sst-train.csv").is_file(), reason=f"course data not found at {REAL_DATA}")
def test_the_issues_file(tmp_path):
    path = tmp_path / "ids-sst-train.csv"
    path.write_bytes((REAL_DATA / "ids-sst-train.csv").read_bytes() + b"\xff\xfe\n")
    ex = read_split(path, TASKS["sst"], require_labels=True)
    assert len(ex) == 7444 and ex.skipped_rows == {"not UTF-8": [7445]}


def test_a_file_mostly_not_utf8_is_refused_at_its_first_bad_byte(tmp_path):
    path = tmp_path / "ids-sst-dev.csv"
    good, before = f"{SST_HEADER}\n0\ti0\tfine\t1\n", "1\ti1\tcaf"
    path.write_bytes(good.encode() + f"{before}é\t2\n2\ti2\tnaïve\t3\n".encode("latin-1"))
    with pytest.raises(DataError) as err:
        read_split(path, TASKS["sst"])
    assert str(err.value) == (f"{path}: not UTF-8 text (2 of 3 data rows; the first bad byte at line 3, byte offset "
                              f"{len(good + before)}): save it as UTF-8")
    utf16 = write(tmp_path / "utf16.csv", SST_HEADER, "0\ti0\tfine\t1")
    utf16.write_bytes(utf16.read_text().encode("utf-16"))
    with pytest.raises(DataError, match=re.escape(f"{utf16}: not UTF-8 text (the header row; the first bad byte at "
                                                  "line 1, byte offset 0, it looks UTF-16): save it as UTF-8")):
        read_split(utf16, TASKS["sst"])


def test_bom_and_line_ends(tmp_path):
    rows = ["stars,review", "2,fine", "0,meh", '1,"a, b"']
    lf = read_split(write(tmp_path / "lf.csv", *rows), USER.task("stars"))
    assert lf.texts == ["fine", "meh", "a, b"] and lf.ids == ["1", "2", "3"] and not lf.skipped
    for name, end in (("crlf.csv", "\r\n"), ("cr.csv", "\r")):
        ex = read_split(write(tmp_path / name, *rows, end=end), USER.task("stars"))
        assert (ex.ids, ex.texts, ex.labels.tolist(), ex.skipped) == (lf.ids, lf.texts, lf.labels.tolist(), {})
    bom = tmp_path / "bom.csv"
    bom.write_bytes(codecs.BOM_UTF8 + (tmp_path / "crlf.csv").read_bytes())  # "stars" is the first column
    assert read_split(bom, USER.task("stars"), require_labels=True).labels.tolist() == [2, 0, 1]


def test_non_finite_and_odd_labels_are_skipped(tmp_path):
    labels = ["inf", "nan", "-inf", "1e400", "Infinity", "0_5", "٣", "5.1", "2.5", " 4 "]
    path = write(tmp_path / "sts-train.csv", STS_HEADER, *(f"{i}\ts{i}\ta\tb\t{v}" for i, v in enumerate(labels)))
    ex = read_split(path, TASKS["sts"], require_labels=True)
    assert ex.labels.tolist() == [2.5, 4.0] and np.isfinite(ex.labels).all()
    assert ex.skipped == {"non-finite label": 5, "unparsable label": 2, "label out of range": 1}
    assert ex.skipped_rows["non-finite label"] == [1, 2, 3, 4, 5] and ex.skipped_rows["unparsable label"] == [6, 7]
    assert "non-finite label 5: rows 1, 2, 3, 4, 5" in ex.summary()


def test_nul_long_fields_and_stray_quotes_cost_their_row(tmp_path):
    path = write(tmp_path / "ids-sst-train.csv", SST_HEADER,
                 "0\ti0\tnu\x00l\t1",  # NUL
                 f"1\ti1\t{'x' * (MAX_FIELD + 1)}\t2",  # over csv's field limit
                 '2\ti2\t"stray quote\t3',  # would swallow every line up to the next quote
                 "3\ti3\tkept\t4",
                 '4\ti4\t"a ""quoted"" word"\t0',
                 '5\ti5\t"a quoted field\nover two lines"\t1',  # legitimate: one row
                 "6\ti6\ttoo\tmany\tfields\t1",
                 '7\ti7\tunclosed at the end\t"2')
    ex = read_split(path, TASKS["sst"])
    assert ex.ids == ["i3", "i4", "i5"] and ex.texts[1:] == ['a "quoted" word', "a quoted field\nover two lines"]
    assert ex.skipped_rows == {"NUL byte": [1], "field too long": [2], "unbalanced quote": [3, 8],
                               "malformed row": [7]}


def test_files_without_rows_are_refused_in_one_line(tmp_path):
    cases = {b"": "empty file, expected a header row", f"{SST_HEADER}\n".encode(): "no data rows after the header",
             f"{SST_HEADER}\n0\ti0\t\t1\n1\ti1\tok\t9\n".encode():
                 "no usable row, skipped 2 (empty text 1: rows 1; label out of range 1: rows 2): fix the rows or the "
                 "task's columns",
             b"\tid\ttext\tlabel\n0\ti0\tok\t1\n": "missing column(s) ['sentence', 'sentiment']",
             b'\tid\t"sentence\tsentiment\n': "the header row cannot be read (unbalanced quote)"}
    for i, (data, message) in enumerate(cases.items()):
        path = tmp_path / f"{i}.csv"
        path.write_bytes(data)
        with pytest.raises(DataError, match=re.escape(f"{path}: {message}")):
            read_split(path, TASKS["sst"], require_labels=True)


def test_hub_labels_of_any_type_and_non_finite_scores(monkeypatch):
    datasets = pytest.importorskip("datasets")
    tables = {"SetFit/sst5": {"text": ["a", "b", 3, "d", "e\x00"], "label": ["1", "x", 2, [1], 4]},
              "sentence-transformers/stsb": {"sentence1": ["a", "b", "c"], "sentence2": ["x", "y", "z"],
                                             "score": [math.nan, math.inf, 0.5]}}
    monkeypatch.setattr(datasets, "load_dataset", lambda name, config=None, split=None: FakeDataset(tables[name]))
    sst = read_hf_split(TASKS["sst"], "train")
    assert sst.texts == ["a"] and sst.labels.tolist() == [1]
    assert sst.skipped == {"unparsable label": 2, "text not a string": 1, "NUL byte": 1}
    sts = read_hf_split(TASKS["sts"], "train")
    assert sts.labels.tolist() == [2.5] and sts.skipped_rows == {"non-finite label": [1, 2]}
