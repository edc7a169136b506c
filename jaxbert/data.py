"""Task data for multitask BERT fine-tuning: read, validate, tokenize once, batch.

A task's files and columns are its `jaxbert.tasks.Task`: delimited text files with a header row naming the
columns (the course's tab-separated CSVs: an unnamed row-index column, ``id``, the text column(s) and a label
column, which the student test files lack), or its Hugging Face source. An ``id`` column keys the predictions;
a file without one is keyed by row number.

Pipeline::

    examples = read_split(path, tasks.TASKS["para"])     # validated rows, skip counts
    encoded = encode_split(examples, tok, max_length=128,  # int32 [N, 128] arrays, cached
                           pair_encoding="cross", cache_dir=Path("cache"))
    length = batch_length(encoded, idx, buckets=(32, 64, 128))
    batch = make_batch(encoded, idx, length)               # int32 [len(idx), length]

Arrays are tokenized once, padded to ``max_length`` and cropped per batch to a
length bucket, so jit compiles one program per bucket instead of one per batch shape.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import math
import os
import re
import zipfile
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
import numpy as np

from jaxbert import choices
from jaxbert.config import Config
from jaxbert.errors import DataError, MissingFileError, OfflineError
from jaxbert.tasks import SPLITS, Task
from jaxbert.tokenization import BertTokenizer

MAX_SKIPPED_ROWS = 5  # row numbers kept per skip reason, for messages and logs
# What errors="surrogateescape" decodes a byte that is not UTF-8 to; valid UTF-8 never decodes to these.
_UNDECODED = re.compile("[\udc80-\udcff]")
_LINE_BREAK = re.compile("\r\n|\r|\n")  # the line ends csv and a file opened with newline="" split at
# A plain decimal, inf or nan: float() also takes "0_5" and non-ASCII digits, which no label file means.
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)(e[+-]?\d+)?|[+-]?(inf|infinity|nan)", re.ASCII | re.IGNORECASE)
# Bump when the cached arrays' layout or the reading/encoding rules change.
_CACHE_VERSION = 1


# ----------------------------------------------------------------------------- reading


@dataclass
class Examples:
    """Validated rows of one split.

    ``texts``/``pairs``/``negatives`` are whitespace-stripped; ``pairs`` is None for
    single-sentence tasks, ``negatives`` (a triplet's third sentence) for all but
    triplets. ``labels`` is int32 ``[N]`` (class/binary) or float32 ``[N]`` (score), or
    None when the source has no labels (predicted, not scored). ``skipped`` counts
    rejected rows by reason; ``skipped_rows`` keeps the first few 1-based data-row
    numbers (header excluded) per reason.
    """

    task: Task
    path: Path | str
    ids: list[str]
    texts: list[str]
    pairs: list[str] | None
    labels: np.ndarray | None
    skipped: dict[str, int] = field(default_factory=dict)
    skipped_rows: dict[str, list[int]] = field(default_factory=dict)
    negatives: list[str] | None = None

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def name(self) -> str:
        """File name for files, the full source string otherwise (e.g. ``hf:SetFit/sst5:train``)."""
        return self.path.name if isinstance(self.path, Path) else str(self.path)

    def summary(self) -> str:
        """One line, e.g. ``quora-train.csv: 14,212 rows, skipped 2 (empty label 2: rows 1801, 9961)``."""
        total = sum(self.skipped.values())
        line = f"{self.name}: {len(self):,} rows"
        if self.labels is None and self.task.label is not None:
            line += " (unlabeled)"
        if not total:
            return line + ", none skipped"
        parts = []
        for reason, count in sorted(self.skipped.items(), key=lambda kv: -kv[1]):
            rows = ", ".join(map(str, self.skipped_rows.get(reason, [])))
            more = ", ..." if count > len(self.skipped_rows.get(reason, [])) else ""
            parts.append(f"{reason} {count:,}: rows {rows}{more}")
        return f"{line}, skipped {total:,} ({'; '.join(parts)})"


class _Collector:
    """Accumulates accepted rows and skip reasons while a source is read."""

    def __init__(self, task: Task, labeled: bool, label_scale: float = 1.0) -> None:
        self.task, self.labeled, self.label_scale = task, labeled, label_scale
        self.ids: list[str] = []
        self.columns: list[list[str]] = [[] for _ in task.text]
        self.labels: list[float] = []
        self.skipped: Counter[str] = Counter()
        self.skipped_rows: dict[str, list[int]] = {}

    def skip(self, reason: str, row: int) -> None:
        self.skipped[reason] += 1
        kept = self.skipped_rows.setdefault(reason, [])
        if len(kept) < MAX_SKIPPED_ROWS:
            kept.append(row)

    def add(self, row: int, id_: object, texts: Sequence[object], label: object = None) -> None:
        # A Hub column of numbers or lists mapped as a text column; files hold only strings.
        if not all(t is None or isinstance(t, str) for t in texts):
            return self.skip("text not a string", row)
        id_ = str(id_).strip()
        stripped = [(t or "").strip() for t in texts]
        # A NUL is binary garbage in a text file, and would reach the tokenizer and the predictions file.
        if "\x00" in "".join([id_, *stripped, label if isinstance(label, str) else ""]):
            return self.skip("NUL byte", row)
        value = None
        if self.labeled:
            value, reason = _parse_label(label, self.task, self.label_scale)
            if reason:
                return self.skip(reason, row)
        if not all(stripped):
            return self.skip("empty text", row)
        self.ids.append(id_)
        for column, text in zip(self.columns, stripped):
            column.append(text)
        if value is not None:
            self.labels.append(value)

    def build(self, path: Path | str) -> Examples:
        """The rows read from `path`.

        Raises:
            DataError: no row is usable (an empty split would fail later, far from its cause).
        """
        labels = None
        if self.labeled:
            labels = np.asarray(self.labels, np.float32 if self.task.kind == "regression" else np.int32)
        examples = Examples(self.task, path, self.ids, self.columns[0],
                            self.columns[1] if len(self.columns) > 1 else None, labels,
                            dict(self.skipped), self.skipped_rows,
                            self.columns[2] if len(self.task.text) == 3 else None)
        if not examples and not self.skipped:
            raise DataError(f"{path}: no data rows" + (" after the header" if isinstance(path, Path) else ""))
        if not examples:
            skips = examples.summary().partition(", skipped ")[2]
            raise DataError(f"{path}: no usable row, skipped {skips}: fix the rows or the task's columns")
        return examples


def _parse_label(raw: object, task: Task, scale: float = 1.0) -> tuple[float | None, str | None]:
    """Returns ``(value, None)`` or ``(None, skip reason)``; `scale` multiplies the raw value (a Hub source's)."""
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return None, "empty label"
    if isinstance(raw, str) and not _NUMBER.fullmatch(raw.strip()):
        return None, "unparsable label"
    try:
        value = float(raw) * scale
    except (TypeError, ValueError):  # a Hub label that is a list, a dict, ...
        return None, "unparsable label"
    if not math.isfinite(value):  # nan and inf would reach the loss
        return None, "non-finite label"
    lo, hi = task.label_range
    if task.kind != "regression":
        # Quora stores 0/1 as "0.0"/"1.0"; a fractional class is corrupt, not out of range.
        if not value.is_integer():
            return None, "unparsable label"
        value = int(value)
    if not lo <= value <= hi:
        return None, "label out of range"
    if task.label_map is not None:
        value = task.label_map[value]
    return value, None


def read_split(path: str | os.PathLike, task: Task, *, require_labels: bool = False) -> Examples:
    """Read and validate one data file of `task`, its fields separated by `task.delimiter`.

    Quoting follows pandas' ``read_csv`` default (a field starting with ``"`` is quoted,
    ``""`` inside is a literal quote, quoted fields may span lines); for the course
    files this matches pandas field for field. A UTF-8 BOM and CRLF or CR line ends are read.

    Rows are skipped and counted, never silently dropped, for: bytes that are not UTF-8
    ("not UTF-8"), a NUL ("NUL byte"), a field over csv's size limit ("field too long"), a
    quote left open at the end of its line ("unbalanced quote": a stray quote costs its own
    line, not every line up to the next quote), a wrong field count ("malformed row"), an
    empty, unparsable, non-finite (nan, inf) or out-of-range label, or an empty text.

    Args:
        path: the file.
        task: its task; decides the columns and label validation.
        require_labels: raise when the label column is absent (train/dev files);
            otherwise a file without it is read as unlabeled (``labels`` None).

    Raises:
        MissingFileError: naming the file.
        DataError: the file is unreadable, empty, has no usable row, has a header that is not UTF-8 or cannot be
            split, has more rows that are not UTF-8 than rows that are (the message gives the line and byte offset
            of the first bad byte), or lacks a needed column (the message names the file, the missing and the
            expected columns).
    """
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"{task.name} data file not found: {path}")
    try:
        return _read_rows(path, task, require_labels)
    except OSError as e:
        raise DataError(f"{path}: cannot be read: {e.strerror or e}") from None


def _read_rows(path: Path, task: Task, require_labels: bool) -> Examples:
    # surrogateescape keeps bytes that are not UTF-8 where they are, so only their row is lost; newline="" lets
    # csv see quoted line breaks; utf-8-sig drops a BOM.
    with path.open(newline="", encoding="utf-8-sig", errors="surrogateescape") as fp:
        records = _records(fp, task.delimiter)
        first = next(records, None)
        if first is None:
            raise DataError(f"{path}: empty file, expected a header row")
        header, reason = first
        label = task.label
        expected = [*task.text, *([label] if label else [])]
        separator = "tab" if task.delimiter == "\t" else repr(task.delimiter)
        if reason == "not UTF-8":
            raise _not_utf8(path, "the header row")
        if reason:
            raise DataError(f"{path}: the header row cannot be read ({reason}); {task.name} expects a header naming "
                            f"the columns {expected}, {separator}-separated")
        header = [h.strip() for h in header]
        labeled = label is not None and label in header
        missing = [c for c in task.text if c not in header]
        if require_labels and label is not None and not labeled:
            missing.append(label)
        if missing:
            optional = " (the label is optional in a test file)" if label else ""
            shown = repr(header)
            shown = shown if len(shown) <= 300 else shown[:300] + " ..."  # a binary file's "header" is huge
            raise DataError(f"{path}: missing column(s) {missing}; {task.name} reads the columns {expected}"
                            f"{optional} and an optional id, {separator}-separated; the header has {shown}")
        where = {c: header.index(c) for c in ["id", *expected] if c in header}
        collector = _Collector(task, labeled)
        rows = 0
        for rows, (fields, reason) in enumerate(records, start=1):
            if reason is None and len(fields) != len(header):
                reason = "malformed row"
            if reason:
                collector.skip(reason, rows)
                continue
            collector.add(rows, fields[where["id"]] if "id" in where else rows,
                          [fields[where[c]] for c in task.text], fields[where[label]] if labeled else None)
    # One bad line is skipped; a file mostly undecodable is in another encoding, and skipping would hide that.
    undecoded = collector.skipped["not UTF-8"]
    if 2 * undecoded > rows:
        raise _not_utf8(path, f"{undecoded:,} of {rows:,} data rows")
    return collector.build(path)


def _records(lines: Iterable[str], delimiter: str) -> Iterator[tuple[list[str] | None, str | None]]:
    """Each row of `lines`, the header first, as ``(fields, None)``, or ``(None, reason)`` for one that cannot be
    split into fields: "not UTF-8", "field too long" or "unbalanced quote".

    A quoted field may span lines. A record that does, but has the wrong number of fields or a later line that is a
    whole row by itself, was joined by a stray quote: each of its lines is then a row of its own.
    """
    consumed: list[str] = []

    def source() -> Iterator[str]:
        for line in lines:
            consumed.append(line)
            yield line

    reader = csv.reader(source(), delimiter=delimiter)
    width = None  # the header's field count, once read
    while True:
        consumed.clear()
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error:  # the field size limit: a non-strict reader given whole lines raises no other
            fields = None
        record = list(consumed)
        if len(record) == 1:
            rows = [_split_line(record[0], delimiter)]
        elif width is not None and (fields is None or len(fields) != width or any(
                len(_split_line(line, delimiter)[0] or ()) == width for line in record[1:])):
            rows = [_split_line(line, delimiter) for line in record]
        elif _UNDECODED.search("".join(record)):
            rows = [(None, "not UTF-8")]
        else:
            rows = [(fields, None) if fields is not None else (None, "field too long")]
        yield from rows
        if width is None:
            width = len(rows[0][0] or ())


def _split_line(line: str, delimiter: str) -> tuple[list[str] | None, str | None]:
    """One line of a file as a row by itself: ``(fields, None)`` or ``(None, reason)``, as `_records`."""
    if _UNDECODED.search(line):
        return None, "not UTF-8"
    try:
        # Ended by "\n" alone, a quote still open at the end shows as a last field ending in it.
        fields = next(csv.reader([line.rstrip("\r\n") + "\n"], delimiter=delimiter))
    except csv.Error:  # the field size limit
        return None, "field too long"
    if fields and fields[-1].endswith("\n"):
        return None, "unbalanced quote"
    return fields, None


def _not_utf8(path: Path, where: str) -> DataError:
    """The refusal of `path` as not UTF-8 text, `where` saying how much of it, with the place of its first bad byte."""
    data = path.read_bytes()
    text = data.decode("utf-8", "surrogateescape")
    first = _UNDECODED.search(text).start()
    line = len(_LINE_BREAK.findall(text, 0, first)) + 1
    offset = len(text[:first].encode("utf-8", "surrogateescape"))
    utf16 = ", it looks UTF-16" if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)) else ""
    return DataError(f"{path}: not UTF-8 text ({where}; the first bad byte at line {line}, byte offset {offset}"
                     f"{utf16}): save it as UTF-8")


def _one_line(error: Exception) -> str:
    """`error`'s message on one line: datasets' and the Hub's run over several, and ours are one line."""
    return " ".join(str(error).split())


def read_hf_split(task: Task, split: str) -> Examples:
    """Load a split of the task's Hugging Face source (`Task.hub`) into the same :class:`Examples`.

    The source maps the task's columns to the dataset's and scales its labels (STS-B's 0-1 to 0-5); labels then
    go through the task's own validation, so tweet_eval's 0/1/2 become 0/2/4 as in the local files. A split
    whose labels are all missing or -1 (GLUE's hidden test labels) is unlabeled; isolated -1 labels are
    skipped as "empty label". Rows are skipped and counted as a file's are, and a text that is not a string
    (a column of numbers or lists) as "text not a string".

    Raises:
        ValueError: the task has no hub source or the split is unknown.
        OfflineError: the Hub cannot be reached (and the dataset is not in the local cache).
        DataError: the dataset cannot be loaded, lacks a column, or has no usable row.
    """
    if task.hub is None:
        raise ValueError(f"no Hugging Face source for task {task.name!r}")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    import datasets  # lazy: only online users need it, and it is slow to import

    hub = task.hub
    hub_split = hub.splits[split]
    try:
        ds = datasets.load_dataset(hub.dataset, hub.config, split=hub_split)
    except ConnectionError as e:
        raise OfflineError(f"{task.name}: cannot download {hub.dataset} from the Hugging Face Hub "
                           f"({_one_line(e)})") from None
    except (OSError, ValueError, datasets.exceptions.DatasetsError) as e:  # not found, gated, HTTP errors, ...
        raise DataError(f"{task.name}: cannot load the Hugging Face dataset {hub.dataset}"
                        f"{' (' + hub.config + ')' if hub.config else ''}, split {hub_split}: {_one_line(e)}") from None
    text_columns = [hub.columns[c] for c in task.text]
    missing = [c for c in text_columns if c not in ds.column_names]
    if missing:
        raise DataError(f"{hub.dataset}:{hub_split}: missing column(s) {missing}; found {ds.column_names}")
    label_column = hub.columns.get(task.label) if task.label else None
    raw = ds[label_column] if label_column is not None and label_column in ds.column_names else []
    raw = [None if v is None or v == -1 else v for v in raw]
    labeled = any(v is not None for v in raw)
    ids = ds["idx"] if "idx" in ds.column_names else [f"{hub_split}-{i}" for i in range(len(ds))]
    # Scaled once parsed: the raw value may be a string or anything else a dataset holds.
    collector = _Collector(task, labeled, hub.label_scale)
    columns = [ds[c] for c in text_columns]
    for i in range(len(ds)):
        collector.add(i + 1, ids[i], [col[i] for col in columns], raw[i] if labeled else None)
    return collector.build(f"hf:{hub.dataset}{':' + hub.config if hub.config else ''}:{hub_split}")


# ----------------------------------------------------------------------------- encoding


@dataclass
class Encoded:
    """One split tokenized once, right-padded to ``max_length``.

    ``inputs`` holds int32 ``[N, max_length]`` arrays ``input_ids``, ``attention_mask``,
    ``token_type_ids`` and, for bi-encoded pairs, the second sentence's
    ``input_ids_b``, ``attention_mask_b``, ``token_type_ids_b``; triplets add the third
    sentence's with the suffix ``_c``. ``lengths`` int32 ``[N]``
    is each example's longest real sequence after truncation (what a batch may be
    cropped to). ``labels`` as in :class:`Examples`. ``num_truncated`` counts truncated
    sequences (for bi-encoding each sentence counts).
    """

    task: Task
    split_name: str
    ids: np.ndarray
    inputs: dict[str, np.ndarray]
    lengths: np.ndarray
    labels: np.ndarray | None
    num_truncated: int
    cached: bool = False  # loaded from the cache rather than tokenized

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def max_length(self) -> int:
        return self.inputs["input_ids"].shape[1]

    @property
    def bi_encoded(self) -> bool:
        return "input_ids_b" in self.inputs


def _content_digest(examples: Examples) -> str:
    # Hashing the parsed rows rather than the file bytes also invalidates the cache when
    # the reading rules change, and covers hub sources that have no file.
    h = hashlib.sha1()
    triplet = [examples.negatives] if examples.negatives is not None else []
    for column in (examples.ids, examples.texts, examples.pairs or [], *triplet):
        h.update("\x1f".join(column).encode())
        h.update(b"\x1e")
    if examples.labels is not None:
        h.update(examples.labels.tobytes())
    return h.hexdigest()


def encode_split(
    examples: Examples,
    tokenizer: BertTokenizer,
    *,
    max_length: int,
    pair_encoding: str = "cross",
    prompt: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    split_name: str | None = None,
) -> Encoded:
    """Tokenize a split into fixed-width arrays, optionally via an ``.npz`` cache.

    Args:
        examples: from :func:`read_split` or :func:`read_hf_split`.
        tokenizer: the model's tokenizer.
        max_length: tokens per sequence, special tokens included; also the padded width.
        pair_encoding: for pair tasks, "cross" (``[CLS] s1 [SEP] s2 [SEP]``, s2 with
            token type 1) or "bi" (each sentence alone, second into the ``*_b`` arrays).
            Ignored for single-sentence tasks; triplets always encode each sentence
            alone (``*``, ``*_b``, ``*_c``).
        prompt: pair tasks with cross encoding only: text placed before the first
            sentence, e.g. "Are these questions asking the same thing?".
        cache_dir: if given, arrays are stored in / loaded from
            ``{cache_dir}/{task}-{split}-{hash}.npz``, the hash covering the rows, the
            tokenizer, ``max_length``, the pair encoding and the prompt.
        split_name: recorded in the result and the cache name; defaults to the source name.

    Raises:
        ValueError: unknown ``pair_encoding``, or ``prompt`` where it does not apply.
    """
    task = examples.task
    if task.is_pair and pair_encoding not in choices.PAIR_ENCODINGS:
        raise ValueError(f"pair_encoding must be one of {choices.PAIR_ENCODINGS}, got {pair_encoding!r}")
    if prompt is not None and not (task.is_pair and pair_encoding == "cross"):
        raise ValueError(f"prompt applies to cross-encoded pair tasks only, not {task.name} "
                         f"with pair_encoding={pair_encoding!r}")
    if prompt is not None and not prompt.strip():
        raise ValueError("prompt is blank; pass None for no prompt")
    # So ignored settings do not split the cache.
    mode = pair_encoding if task.is_pair else "triplet" if len(task.text) == 3 else "single"
    split_name = split_name or examples.name.removesuffix(".csv")

    cache_path = None
    if cache_dir is not None:
        key = repr((_CACHE_VERSION, task.name, _content_digest(examples), tokenizer.fingerprint,
                    max_length, mode, prompt))
        safe_split = "".join(c if c.isalnum() or c in "-_" else "_" for c in split_name)
        cache_path = Path(cache_dir) / f"{task.name}-{safe_split}-{hashlib.sha1(key.encode()).hexdigest()[:16]}.npz"
        loaded = _load_cache(cache_path, task, split_name)
        if loaded is not None:
            return loaded

    def encode(texts: Sequence[str], pairs: Sequence[str] | None = None) -> tuple[dict[str, np.ndarray], int]:
        out = tokenizer.encode(texts, pairs, max_length=max_length, pad_to=max_length)
        truncated = int(out.pop("num_truncated"))
        return out, truncated

    if mode in ("bi", "triplet"):
        columns = {"": examples.texts, "_b": examples.pairs, "_c": examples.negatives}
        inputs, num_truncated = {}, 0
        for suffix in ("", "_b", "_c")[:3 if mode == "triplet" else 2]:
            arrays, truncated = encode(columns[suffix])
            inputs.update({f"{k}{suffix}": v for k, v in arrays.items()})
            num_truncated += truncated
        lengths = np.max([v.sum(1) for k, v in inputs.items() if k.startswith("attention_mask")], axis=0)
    else:
        texts = examples.texts if prompt is None else [f"{prompt.strip()} {t}" for t in examples.texts]
        inputs, num_truncated = encode(texts, examples.pairs)
        lengths = inputs["attention_mask"].sum(1)

    encoded = Encoded(task, split_name, np.asarray(examples.ids, dtype=str), inputs,
                      lengths.astype(np.int32), examples.labels, num_truncated)
    if cache_path is not None:
        _save_cache(cache_path, encoded)
    return encoded


def _save_cache(path: Path, encoded: Encoded) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {**{f"inputs/{k}": v for k, v in encoded.inputs.items()},
              "ids": encoded.ids, "lengths": encoded.lengths,
              "num_truncated": np.asarray(encoded.num_truncated)}
    if encoded.labels is not None:
        arrays["labels"] = encoded.labels
    # Write-then-rename so a crash or a concurrent reader never sees half a file.
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    with tmp.open("wb") as fp:
        np.savez(fp, **arrays)
    os.replace(tmp, path)


def _load_cache(path: Path, task: Task, split_name: str) -> Encoded | None:
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError, zipfile.BadZipFile):
        return None  # unreadable cache: tokenize again and overwrite it
    inputs = {k.removeprefix("inputs/"): v for k, v in arrays.items() if k.startswith("inputs/")}
    return Encoded(task, split_name, arrays["ids"], inputs, arrays["lengths"], arrays.get("labels"),
                   int(arrays["num_truncated"]), cached=True)


# ----------------------------------------------------------------------------- batching


def bucket_length(max_len: int, buckets: Sequence[int]) -> int:
    """Smallest bucket ``>= max_len``; the largest bucket if ``max_len`` exceeds all."""
    if not buckets:
        raise ValueError("no length buckets")
    fitting = [b for b in buckets if b >= max_len]
    return min(fitting) if fitting else max(buckets)


def batch_length(encoded: Encoded, indices: np.ndarray, buckets: Sequence[int]) -> int:
    """The bucketed width for a batch of ``indices``."""
    longest = int(encoded.lengths[indices].max()) if len(indices) else 1
    return bucket_length(longest, buckets)


def make_batch(encoded: Encoded, indices: np.ndarray, length: int) -> dict[str, np.ndarray]:
    """Gather rows ``indices`` cropped to ``length`` tokens.

    Cropping is lossless because rows are right-padded and ``length`` is checked to
    cover the batch's longest real sequence.

    Returns:
        Every ``encoded.inputs`` array as int32 ``[len(indices), length]`` plus
        ``labels`` ``[len(indices)]`` when the split is labeled.

    Raises:
        ValueError: ``length`` would cut real tokens or exceeds the padded width.
    """
    indices = np.asarray(indices)
    longest = int(encoded.lengths[indices].max()) if len(indices) else 0
    if not longest <= length <= encoded.max_length:
        raise ValueError(f"batch length {length} must lie in [{longest} (longest row in batch), "
                         f"{encoded.max_length} (padded width)]")
    batch = {k: v[indices, :length] for k, v in encoded.inputs.items()}
    if encoded.labels is not None:
        batch["labels"] = encoded.labels[indices]
    return batch


def pad_indices(indices: np.ndarray, multiple: int) -> tuple[np.ndarray, np.ndarray]:
    """Pad ``indices`` to a length divisible by ``multiple`` by repeating the last index.

    Used at evaluation so every device gets an equal share; the mask tells which rows
    are real so repeated ones are not scored twice.

    Returns:
        ``(padded [M], valid bool [M])`` with ``M`` the next multiple of ``multiple``.
    """
    if multiple < 1:
        raise ValueError(f"multiple must be >= 1, got {multiple}")
    indices = np.asarray(indices)
    n = len(indices)
    pad = -n % multiple
    valid = np.arange(n + pad) < n
    if n == 0:
        return indices, valid
    return np.concatenate([indices, np.repeat(indices[-1:], pad)]), valid


# ----------------------------------------------------------------------------- loading


def local_path(config: Config, task: Task, split: str) -> Path | None:
    """The file `split` of `task` is read from: its `data.files` override or the task's own file name, under
    `data.data_dir` unless absolute; None when neither names one (a task defined by its Hub source alone)."""
    name = config.data.files.get(task.name, {}).get(split, task.file(split))
    return None if name is None else Path(config.data.data_dir) / name


def task_source(config: Config, task: Task) -> str:
    """Where `task`'s data comes from, "local" or "hf": `data.source`, or for "auto" its local files when its
    train file is there and its Hub source otherwise.

    Raises:
        MissingFileError: "auto" finds neither, saying where to put which files.
    """
    if config.data.source != "auto":
        return config.data.source
    train = local_path(config, task, "train")
    if train is not None and train.is_file():
        return "local"
    if task.hub is not None:
        return "hf"
    raise MissingFileError(f"no data for {task.name}: {missing_files_hint(config, task)}")


def missing_files_hint(config: Config, task: Task) -> str:
    """Where to put `task`'s files and under which names, and the options that say where they are."""
    names = [str(local_path(config, task, split).name) for split in SPLITS if local_path(config, task, split)]
    hub = (f", or read its Hugging Face source {task.hub.dataset} with --data.source=hf (needs the network)"
           if task.hub else "")
    if not names:  # a task defined by its Hub source alone
        return f"it names no files ({task.defined_in or task.name}.files){hub}"
    return (f"put its files {', '.join(names)} (test optional) in {config.data.data_dir}/ or pass --data-dir DIR"
            f"{hub}")


def token_cache_dir(config: Config) -> Path:
    """Where tokenized splits are cached: `data.cache_dir`, else the user's cache folder (the data folder may be
    read-only, and the cache is keyed by the files' contents, so any run of any folder may share it)."""
    if config.data.cache_dir is not None:
        return Path(config.data.cache_dir).expanduser().absolute()
    return user_cache_dir("tokens")


def user_cache_dir(name: str) -> Path:
    """The folder of jaxbert's cache `name`: `$XDG_CACHE_HOME/jaxbert/<name>`, else `~/.cache/jaxbert/<name>`."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "jaxbert" / name


def encode_for_run(config: Config, examples: Examples, tokenizer: BertTokenizer, cache_dir: str | None = None,
                   split_name: str | None = None) -> Encoded:
    """`encode_split` of `examples` as a run of `config` encodes them: its `max_length`, and a pair task's
    encoding and prompt from `config.heads`."""
    task = examples.task
    return encode_split(examples, tokenizer, max_length=config.data.max_length,
                        pair_encoding=config.heads.encoding(task) if task.is_pair else "cross",
                        prompt=config.heads.prompt(task), cache_dir=cache_dir, split_name=split_name)


def load_task_data(config: Config, tokenizer: BertTokenizer, splits: Iterable[str] = SPLITS,
                   log: Callable[[str], None] = print) -> dict[str, dict[str, Encoded]]:
    """Read, validate and encode every ``(task, split)`` of the run: its `config.tasks` from `config.data`
    (`data_dir` and the default file names, or the `files` overrides, relative to `data_dir` unless absolute;
    or the tasks' Hugging Face sources, as `task_source` decides per task), each pair task encoded as
    `config.heads` says.

    Returns:
        ``{task: {split: Encoded}}``; a test split whose file is absent is left out (and logged), since test
        files are optional, and so is a split the task does not have (nli has no dev or test split, tweet no
        test split). ``log`` receives a line per task saying where its data comes from, and one summary line
        per split (rows, skips by reason, truncation).

    Raises:
        MissingFileError: a train or dev file is absent (naming it, and saying where the files go).
        OfflineError: a Hub source cannot be downloaded (saying where the files go instead).
        DataError: the errors of :func:`read_split` and :func:`read_hf_split`.
    """
    data, out = config.data, {}
    for task in config.run_tasks:
        source = task_source(config, task)
        if data.source == "auto":
            log(f"{task.name}: " + (f"files in {data.data_dir}/" if source == "local" else
                                    f"{local_path(config, task, 'train') or 'no train file'} absent, reading the "
                                    f"Hugging Face dataset {task.hub.dataset}"))
        out[task.name] = {}
        for split in splits:
            if not task.has_split(split) or (source == "hf" and split not in task.hub.splits):
                log(f"{task.name} {split}: the task has no {split} split, skipping")
                continue
            if source == "hf":
                try:
                    examples = read_hf_split(task, split)
                except OfflineError as e:
                    raise OfflineError(f"{e}; {missing_files_hint(config, task)}") from None
            else:
                path = local_path(config, task, split)
                if split == "test" and (path is None or not path.is_file()):
                    log(f"{task.name} test: {path} absent, skipping")
                    continue
                if path is None or not path.is_file():
                    raise MissingFileError(f"{task.name} {split} file not found: {path or 'none named'}; "
                                           f"{missing_files_hint(config, task)}")
                examples = read_split(path, task, require_labels=split != "test")
            enc = encode_for_run(config, examples, tokenizer, token_cache_dir(config), split)
            log(f"{task.name} {split}: {examples.summary()}; {enc.num_truncated:,} truncated to {data.max_length} "
                "tokens" + (" (cached)" if enc.cached else ""))
            out[task.name][split] = enc
    return out
