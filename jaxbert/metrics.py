"""Evaluation metrics of the multitask BERT (pure NumPy, float64).

A task is scored by its `Task.metric`: accuracy for classification, Pearson r for regression. The overall
score maps each correlation from [-1, 1] to [0, 1] and averages, which for the course's three tasks is its
``(acc_sst + acc_para + (r_sts + 1) / 2) / 3``. Auxiliary tasks (tweet sentiment, which only feeds the SST head)
are reported but enter no summary score.
"""

from __future__ import annotations

import math
from typing import Any, Collection, Mapping

import numpy as np

from jaxbert import tasks

__all__ = ["accuracy", "pearson", "overall_score", "mean_score", "task_metric", "summarize", "selection_score"]


def _pair(pred, labels, name: str) -> tuple[np.ndarray, np.ndarray]:
    pred, labels = np.asarray(pred), np.asarray(labels)
    if pred.shape != labels.shape:
        raise ValueError(f"{name}: predictions shape {pred.shape} != labels shape {labels.shape}")
    if pred.size == 0:
        raise ValueError(f"{name}: empty predictions")
    return pred.reshape(-1), labels.reshape(-1)


def accuracy(pred, labels) -> float:
    """Fraction of predictions equal to the labels (predictions are class ids, not logits)."""
    pred, labels = _pair(pred, labels, "accuracy")
    return float(np.mean(pred == labels))


def pearson(pred, labels) -> float:
    """Pearson correlation computed in float64.

    If either side is constant (including a single element) the correlation is undefined; this returns 0.0
    instead of nan (no linear association), so a collapsed regressor scores like an uninformative one.  The
    result is clipped to [-1, 1] against rounding.
    """
    x, y = _pair(pred, labels, "pearson")
    x, y = x.astype(np.float64), y.astype(np.float64)
    if np.all(x == x[0]) or np.all(y == y[0]):
        return 0.0
    xc, yc = x - x.mean(), y - y.mean()
    denom = math.sqrt(float(np.dot(xc, xc))) * math.sqrt(float(np.dot(yc, yc)))
    if denom == 0.0 or not math.isfinite(denom):
        return 0.0 if denom == 0.0 else float("nan")
    return float(np.clip(np.dot(xc, yc) / denom, -1.0, 1.0))


METRICS = {"accuracy": accuracy, "pearson": pearson}


def overall_score(sst_acc: float, para_acc: float, sts_r: float) -> float:
    """The course's overall score ``(acc_sst + acc_para + (r_sts + 1) / 2) / 3``."""
    return (float(sst_acc) + float(para_acc) + (float(sts_r) + 1.0) / 2.0) / 3.0


def mean_score(sst_acc: float, para_acc: float, sts_r: float) -> float:
    """Plain mean of the three primary metrics (the correlation is not rescaled)."""
    return (float(sst_acc) + float(para_acc) + float(sts_r)) / 3.0


def task_metric(task: tasks.Task, predictions, labels) -> dict[str, float]:
    """``{task.metric: value}``: accuracy of class-id predictions, or Pearson r of scores."""
    if task.metric is None:
        raise ValueError(f"task {task.name!r} ({task.kind}) has no metric to score predictions by")
    return {task.metric: METRICS[task.metric](predictions, labels)}


def _primary(metrics) -> tuple[str, float] | None:
    if not isinstance(metrics, Mapping):
        return None
    for name in METRICS:
        if name in metrics:
            return name, float(metrics[name])
    return None


def summarize(dev_metrics: Mapping[str, Mapping[str, float]], auxiliary: Collection[str] = ()) -> dict:
    """Copy of ``dev_metrics`` (task -> metric dict) with the summary scores of its tasks but the `auxiliary`
    ones (omitted when no task counts):

    ``overall``: the mean over tasks of accuracy, or of ``(r + 1) / 2`` for a Pearson r, so every term lies in
    [0, 1]; for sst, para and sts exactly the course's ``overall_score``. Checkpoints are chosen by it.
    ``mean``: the plain mean of those metrics, the correlation not rescaled.
    Existing top-level "overall"/"mean" entries are recomputed, not averaged in.
    """
    out = {task: (dict(m) if isinstance(m, Mapping) else m) for task, m in dev_metrics.items()
           if task not in ("overall", "mean")}
    primaries = [p for p in (_primary(m) for t, m in out.items() if t not in auxiliary) if p is not None]
    if primaries:
        out["overall"] = float(np.mean([(v + 1.0) / 2.0 if name == "pearson" else v for name, v in primaries]))
        out["mean"] = float(np.mean([v for _, v in primaries]))
    return out


def selection_score(dev_metrics: Mapping[str, Any], select_by: str = "overall") -> float | None:
    """The dev score `train.select_by` names, from `summarize`'s output: ``overall``, ``mean``, or a task's
    own metric; None when the metrics hold no such score (no task that counts, or that task unscored)."""
    if select_by in ("overall", "mean"):
        return float(dev_metrics[select_by]) if select_by in dev_metrics else None
    primary = _primary(dev_metrics.get(select_by))
    return None if primary is None else primary[1]
