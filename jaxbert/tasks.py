"""What a task is, once: its files and columns, its labels, the head it trains, its loss, metric and predictions.

Every other module reads these attributes instead of keeping a table of its own, so a task is one entry here.
A `Task` is plain data (no JAX), the bottom of the library's layers:

    tasks → config → model, heads, losses, smart, gradients, optim, samplers, data → train_step → build
    → training → runs, export → experiments and the entry scripts.

Kinds:
  classification  integer labels; the head has `num_classes` logits and a softmax cross-entropy, or with
                  `binary` one logit and a sigmoid cross-entropy (para); scored by accuracy.
  regression      float labels in `score_range`; the head gives a score, trained by mean squared error;
                  scored by Pearson r.
  contrastive     unlabeled groups of sentences (NLI triplets: premise, entailment, contradiction) trained with
                  supervised SimCSE; no metric.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping

KINDS = ("classification", "regression", "contrastive")
SPLITS = ("train", "dev", "test")


@dataclasses.dataclass(frozen=True)
class HubSource:
    """A Hugging Face `datasets` source: `columns` maps each of the task's columns (text and label) to the
    dataset's, `splits` each of our splits to the dataset's; a label is multiplied by `label_scale`."""

    dataset: str
    columns: Mapping[str, str]
    config: str | None = None
    splits: Mapping[str, str] = dataclasses.field(
        default_factory=lambda: {"train": "train", "dev": "validation", "test": "test"})
    label_scale: float = 1.0


@dataclasses.dataclass(frozen=True)
class Task:
    """One task.

    Attributes:
      name: its key in configs (`tasks: [sst, para]`) and file names of its outputs.
      display: its name in tables ("Quora").
      text: its text columns: one (a sentence), two (a pair) or three (a triplet).
      label: the label column; None for an unlabeled task.
      kind: one of `KINDS`.
      files: the default file of each split it has, under `data.data_dir`; a test file is optional.
      num_classes: classification: the logits of the head it trains.
      binary: classification with 2 classes as one logit and a sigmoid cross-entropy.
      label_map: classification: raw label i is class `label_map[i]` (tweet's 3 onto SST's 5 classes).
      score_range: regression: the inclusive range of a valid label.
      encoding: how its sentences reach the encoder by default: single | cross | bi | triplet.
      head: the task whose head (and PALs) it trains, when not its own.
      auxiliary: trained and reported, but counted in no aggregate score.
      prediction_header: the second column's header in the course's prediction files (None: no predictions).
      hub: its Hugging Face source, if any.
      delimiter: the field separator of its files (each has a header row naming its columns).
      class_names: classification: the name of each class, for people reading predictions.
      defined_in: where the task was defined, for messages (`task_defs.imdb`); None for a built-in.
    """

    name: str
    display: str
    text: tuple[str, ...]
    label: str | None
    kind: str
    files: Mapping[str, str]
    num_classes: int = 0
    binary: bool = False
    label_map: tuple[int, ...] | None = None
    score_range: tuple[float, float] | None = None
    encoding: str = "single"
    head: str | None = None
    auxiliary: bool = False
    prediction_header: str | None = None
    hub: HubSource | None = None
    delimiter: str = "\t"
    class_names: tuple[str, ...] | None = None
    defined_in: str | None = None

    @property
    def owner(self) -> str:
        """The task whose parameters it trains: itself unless it borrows another's head."""
        return self.head or self.name

    @property
    def is_pair(self) -> bool:
        return len(self.text) == 2

    @property
    def label_range(self) -> tuple[float, float]:
        """The inclusive range a raw label must lie in: integer classes, or the score range."""
        if self.kind == "regression":
            return self.score_range
        return 0, (len(self.label_map) if self.label_map else self.num_classes) - 1

    @property
    def metric(self) -> str | None:
        """accuracy | pearson, or None for a task with nothing to score."""
        return {"classification": "accuracy", "regression": "pearson"}.get(self.kind)

    @property
    def outputs(self) -> int:
        """Outputs of its head: the logits of a softmax classifier, else 1 (a logit, or a score)."""
        return self.num_classes if self.kind == "classification" and not self.binary else 1

    @property
    def divergence(self) -> str | None:
        """How SMART compares two of its outputs: classification | binary | regression; None: no prediction."""
        if self.kind == "classification":
            return "binary" if self.binary else "classification"
        return "regression" if self.kind == "regression" else None

    def has_split(self, split: str) -> bool:
        """Whether the task has `split`: a file for it, or a split of its Hub source."""
        return self.file(split) is not None or (self.hub is not None and split in self.hub.splits)

    def file(self, split: str) -> str | None:
        """The default file name of `split`; None if the task has no such split."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
        return self.files.get(split)


def _course_files(prefix: str, test: bool = True) -> dict[str, str]:
    return {"train": f"{prefix}-train.csv", "dev": f"{prefix}-dev.csv",
            **({"test": f"{prefix}-test-student.csv"} if test else {})}


_SENTENCE, _PAIR = ("sentence",), ("sentence1", "sentence2")
# The course's prediction headers, kept verbatim (typo included) so its scripts read our files.
TASKS: dict[str, Task] = {task.name: task for task in (
    Task("sst", "SST", _SENTENCE, "sentiment", "classification", _course_files("ids-sst"), num_classes=5,
         prediction_header="Predicted_Sentiment",
         hub=HubSource("SetFit/sst5", {"sentence": "text", "sentiment": "label"}),
         class_names=("very negative", "negative", "neutral", "positive", "very positive")),
    Task("cfimdb", "CFIMDB", _SENTENCE, "sentiment", "classification", _course_files("ids-cfimdb"), num_classes=2,
         prediction_header="Predicted_Sentiment"),
    Task("para", "Quora", _PAIR, "is_duplicate", "classification", _course_files("quora"), num_classes=2,
         binary=True, encoding="cross", prediction_header="Predicted_Is_Paraphrase",
         hub=HubSource("nyu-mll/glue", {"sentence1": "question1", "sentence2": "question2",
                                        "is_duplicate": "label"}, config="qqp")),
    Task("sts", "STS", _PAIR, "similarity", "regression", _course_files("sts"), score_range=(0.0, 5.0),
         encoding="bi", prediction_header="Predicted_Similiarity",
         hub=HubSource("sentence-transformers/stsb", {"sentence1": "sentence1", "sentence2": "sentence2",
                                                      "similarity": "score"}, label_scale=5.0)),  # 0-1 → 0-5
    # Report 001's extra data: NLI triplets through the STS head's projection (the layer it shares with STS),
    # and 3-class tweet sentiment through SST's classifier, its negative, neutral, positive as SST's 0, 2, 4.
    Task("nli", "NLI", (*_PAIR, "hard_negative"), None, "contrastive", {"train": "nli-train.csv"},
         encoding="triplet", head="sts", auxiliary=True,
         hub=HubSource("sentence-transformers/all-nli", {"sentence1": "anchor", "sentence2": "positive",
                                                          "hard_negative": "negative"}, config="triplet",
                       splits={"train": "train"})),
    Task("tweet", "Tweet", _SENTENCE, "sentiment", "classification", _course_files("tweet", test=False),
         num_classes=5, label_map=(0, 2, 4), head="sst", auxiliary=True, prediction_header="Predicted_Sentiment",
         hub=HubSource("cardiffnlp/tweet_eval", {"sentence": "text", "sentiment": "label"}, config="sentiment",
                       splits={"train": "train", "dev": "validation"})),
)}


def get(name: str) -> Task:
    """The task named `name`; a ValueError listing the known ones otherwise."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; known: {', '.join(TASKS)}")
    return TASKS[name]
