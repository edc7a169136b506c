"""Tests for jaxbert.metrics against independent NumPy formulas."""

import math

import numpy as np
import pytest

from jaxbert.metrics import METRICS, accuracy, mean_score, overall_score, pearson, summarize, task_metric
from jaxbert.tasks import TASKS


def test_accuracy():
    assert accuracy([0, 1, 2, 3], [0, 1, 0, 3]) == 0.75
    rng = np.random.default_rng(0)
    p, y = rng.integers(0, 5, 1000), rng.integers(0, 5, 1000)
    assert accuracy(p, y) == pytest.approx(np.mean(p == y), abs=0)
    with pytest.raises(ValueError, match="shape"):
        accuracy([0, 1], [0, 1, 2])


def test_pearson_matches_corrcoef():
    rng = np.random.default_rng(1)
    x = rng.normal(size=500)
    y = 0.3 * x + rng.normal(size=500)
    assert pearson(x, y) == pytest.approx(np.corrcoef(x, y)[0, 1], abs=1e-12)
    # float32 inputs are promoted: compare with the float64 reference.
    x32, y32 = x.astype(np.float32), y.astype(np.float32)
    ref = np.corrcoef(x32.astype(np.float64), y32.astype(np.float64))[0, 1]
    assert pearson(x32, y32) == pytest.approx(ref, abs=1e-12)
    assert pearson(x, 2 * x + 1) == pytest.approx(1.0, abs=1e-12)
    assert pearson(x, -x) == pytest.approx(-1.0, abs=1e-12)


def test_pearson_constant_is_zero():
    assert pearson(np.full(10, 0.1), np.arange(10.0)) == 0.0
    assert pearson(np.arange(10.0), np.full(10, 3.0)) == 0.0
    assert pearson([1.0], [2.0]) == 0.0
    assert not math.isnan(pearson(np.full(7, 2.5), np.full(7, 2.5)))


def test_scores():
    assert overall_score(0.5, 0.8, 0.6) == pytest.approx((0.5 + 0.8 + 0.8) / 3)
    assert overall_score(0.5, 0.8, -1.0) == pytest.approx(1.3 / 3)
    assert mean_score(0.5, 0.8, 0.6) == pytest.approx(1.9 / 3)


def test_task_metric():
    # A softmax classifier (sst, tweet), a two-class classifier (cfimdb) and a binary one (para): accuracy.
    for name in ("sst", "tweet"):
        assert task_metric(TASKS[name], [1, 2, 3], [1, 2, 0]) == {"accuracy": pytest.approx(2 / 3)}
    for name in ("cfimdb", "para"):
        assert task_metric(TASKS[name], [1, 0], [1, 0]) == {"accuracy": 1.0}
    x = np.array([0.0, 1.0, 2.0, 4.0])
    y = np.array([0.5, 1.0, 3.0, 3.5])
    assert task_metric(TASKS["sts"], x, y) == {"pearson": pytest.approx(np.corrcoef(x, y)[0, 1], abs=1e-12)}
    assert {name: task.metric for name, task in TASKS.items()} == {
        "sst": "accuracy", "cfimdb": "accuracy", "para": "accuracy", "sts": "pearson", "nli": None,
        "tweet": "accuracy"}
    assert set(METRICS) == {"accuracy", "pearson"}
    # A task with nothing to score (nli's triplets) has no metric.
    with pytest.raises(ValueError, match="task 'nli' \\(contrastive\\) has no metric"):
        task_metric(TASKS["nli"], x, y)


def test_summarize():
    dev = {"sst": {"accuracy": 0.5}, "para": {"accuracy": 0.8}, "sts": {"pearson": 0.6}}
    s = summarize(dev)
    assert s["overall"] == pytest.approx(overall_score(0.5, 0.8, 0.6))
    assert s["mean"] == pytest.approx(mean_score(0.5, 0.8, 0.6))
    assert s["sst"] == {"accuracy": 0.5} and "overall" not in dev  # input not modified
    assert summarize(s) == s  # idempotent

    # Any set of tasks: the mean of accuracies and rescaled correlations (here sst and sts alone).
    partial = summarize({"sst": {"accuracy": 0.4}, "sts": {"pearson": 0.2}})
    assert partial["overall"] == pytest.approx((0.4 + 0.6) / 2)
    assert partial["mean"] == pytest.approx(0.3)
    assert summarize({"mine": {"pearson": -1.0}})["overall"] == 0.0
    assert "mean" not in summarize({}) and "overall" not in summarize({})
    # An auxiliary task is reported but counts in neither score.
    aux = summarize({**dev, "tweet": {"accuracy": 0.0}}, auxiliary={"tweet"})
    assert aux["overall"] == pytest.approx(s["overall"]) and aux["tweet"] == {"accuracy": 0.0}
