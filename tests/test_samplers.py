"""Tests for jaxbert.samplers: step counts, per-pass uniqueness, coverage, determinism, frequencies, errors."""

import numpy as np
import pytest

from jaxbert.samplers import annealing_alpha, describe, epoch_plan, task_probabilities

SIZES = {"sst": 103, "para": 250, "sts": 61}
BS = {"sst": 8, "para": 16, "sts": 4}
NB = {t: SIZES[t] // BS[t] for t in SIZES}  # full batches per pass: sst 12, para 15, sts 15


def _task_stream(plan, task):
    return [step[task] for step in plan if task in step]


def _check_passes(batches, size, batch_size):
    """Batches are full, int64, in range, and unique within each pass of size // batch_size batches."""
    nb = size // batch_size
    for b in batches:
        assert b.dtype == np.int64 and b.shape == (batch_size,)
        assert b.min() >= 0 and b.max() < size
    for start in range(0, len(batches), nb):
        chunk = np.concatenate(batches[start:start + nb])
        assert len(np.unique(chunk)) == len(chunk)


def plan(sampler, **kw):
    kw.setdefault("epoch", 1)
    kw.setdefault("num_epochs", 3)
    kw.setdefault("seed", 0)
    return epoch_plan(sampler, SIZES, BS, **kw)


@pytest.mark.parametrize("epoch_length,steps_per_epoch,expected", [
    ("min", None, min(NB.values())), ("max", None, max(NB.values())), ("steps", 40, 40)])
def test_roundrobin_lengths_and_passes(epoch_length, steps_per_epoch, expected):
    p = plan("roundrobin", epoch_length=epoch_length, steps_per_epoch=steps_per_epoch)
    assert len(p) == expected
    for step in p:
        assert list(step) == list(SIZES)
    for t in SIZES:
        _check_passes(_task_stream(p, t), SIZES[t], BS[t])
    assert describe(p) == {t: {"steps": expected, "examples": expected * BS[t]} for t in SIZES}


def test_roundrobin_max_covers_small_task_and_cycles():
    sizes, bs = {"big": 1000, "small": 30}, 4
    p = epoch_plan("roundrobin", sizes, bs, epoch=2, num_epochs=2, seed=5, epoch_length="max")
    assert len(p) == 250
    small = _task_stream(p, "small")
    _check_passes(small, 30, 4)
    seen = np.concatenate(small)
    # 250 steps of 7 batches per pass: 35 full passes and a bit, each pass drops 2 examples, fresh per pass.
    assert set(seen.tolist()) == set(range(30))
    first, second = np.concatenate(small[:7]), np.concatenate(small[7:14])
    assert not np.array_equal(first, second)  # fresh permutation per pass
    big = np.concatenate(_task_stream(p, "big"))
    assert np.array_equal(np.sort(big), np.arange(1000))


def test_roundrobin_min_sees_all_data_over_epochs():
    sizes, bs = {"big": 100, "small": 20}, 5
    seen = set()
    for e in range(1, 21):
        p = epoch_plan("roundrobin", sizes, bs, epoch=e, num_epochs=20, seed=1)
        assert len(p) == 4
        seen |= set(np.concatenate(_task_stream(p, "big")).tolist())
    # 20 fresh random 20-subsets of 100 cover ~1 - 0.8**20 = 99% of it (a fixed subset would give 20).
    assert len(seen) > 90


@pytest.mark.parametrize("sampler", ["roundrobin", "sequential", "proportional", "annealed"])
def test_determinism(sampler):
    a = plan(sampler, epoch=2, seed=7)
    b = plan(sampler, epoch=2, seed=7)
    c = plan(sampler, epoch=3, seed=7)
    d = plan(sampler, epoch=2, seed=8)
    same = lambda x, y: len(x) == len(y) and all(
        list(s) == list(t) and all(np.array_equal(s[k], t[k]) for k in s) for s, t in zip(x, y))
    assert same(a, b)
    assert not same(a, c)
    assert not same(a, d)


def test_uses_documented_permutation_stream():
    p = epoch_plan("roundrobin", {"a": 10, "b": 12}, 3, epoch=4, num_epochs=5, seed=11, epoch_length="max")
    perm_b = np.random.default_rng([11, 4, 1, 0]).permutation(12)
    assert np.array_equal(np.concatenate(_task_stream(p, "b")), perm_b)
    perm_a0 = np.random.default_rng([11, 4, 0, 0]).permutation(10)
    perm_a1 = np.random.default_rng([11, 4, 0, 1]).permutation(10)
    a = _task_stream(p, "a")
    assert np.array_equal(np.concatenate(a), np.concatenate([perm_a0[:9], perm_a1[:3]]))


def test_resume_is_a_slice_of_the_same_plan():
    full = plan("proportional", epoch=2, seed=3)
    again = plan("proportional", epoch=2, seed=3)[17:]
    assert all(list(s) == list(t) and all(np.array_equal(s[k], t[k]) for k in s) for s, t in zip(full[17:], again))


def test_sequential_order():
    p = plan("sequential", epoch=2)
    assert len(p) == sum(NB.values())
    tasks = [next(iter(step)) for step in p]
    expected = [t for t in SIZES for _ in range(NB[t])]
    assert tasks == expected
    for t in SIZES:
        batches = _task_stream(p, t)
        _check_passes(batches, SIZES[t], BS[t])
        assert len(batches) == NB[t]
    assert not np.array_equal(np.concatenate(_task_stream(p, "sst")), np.arange(NB["sst"] * BS["sst"]))


def test_proportional_frequencies():
    sizes = {"sst": 8544, "para": 20000, "sts": 6040}
    steps = 20000
    p = epoch_plan("proportional", sizes, 8, epoch=1, num_epochs=1, seed=0, steps_per_epoch=steps)
    assert len(p) == steps and all(len(s) == 1 for s in p)
    counts = describe(p)
    total = sum(sizes.values())
    for t, n in sizes.items():
        assert abs(counts[t]["steps"] / steps - n / total) < 0.02
        _check_passes(_task_stream(p, t), n, 8)


def test_proportional_default_length_and_cycling():
    p = plan("proportional")
    assert len(p) == sum(NB.values())
    for t in SIZES:
        _check_passes(_task_stream(p, t), SIZES[t], BS[t])


def test_annealing_alpha_values():
    assert annealing_alpha(1, 5) == 1.0
    assert annealing_alpha(5, 5) == pytest.approx(0.2)
    assert annealing_alpha(3, 5) == pytest.approx(0.6)
    assert annealing_alpha(1, 1) == 1.0
    with pytest.raises(ValueError, match="epoch"):
        annealing_alpha(0, 5)


def test_task_probabilities():
    sizes = {"a": 100, "b": 400, "c": 25}
    for alpha in (1.0, 0.2, 0.0):
        w = np.array([100, 400, 25], dtype=np.float64) ** alpha
        got = task_probabilities(sizes, alpha)
        assert list(got) == ["a", "b", "c"]
        np.testing.assert_allclose(list(got.values()), w / w.sum(), rtol=1e-12)
    assert task_probabilities(sizes, 0.0)["a"] == pytest.approx(1 / 3)


def test_annealed_frequencies_follow_alpha():
    sizes = {"a": 10000, "b": 400}
    steps = 20000
    last = epoch_plan("annealed", sizes, 4, epoch=4, num_epochs=4, seed=2, steps_per_epoch=steps)
    first = epoch_plan("annealed", sizes, 4, epoch=1, num_epochs=4, seed=2, steps_per_epoch=steps)
    for p, alpha in ((first, 1.0), (last, 0.2)):
        expected = task_probabilities(sizes, alpha)
        got = describe(p)
        for t in sizes:
            assert abs(got[t]["steps"] / steps - expected[t]) < 0.02
    override = epoch_plan("annealed", sizes, 4, epoch=4, num_epochs=4, seed=2, steps_per_epoch=steps, alpha=1.0)
    assert abs(describe(override)["a"]["steps"] / steps - task_probabilities(sizes, 1.0)["a"]) < 0.02


def test_errors():
    with pytest.raises(ValueError, match=r"sampler.*roundrobin.*sequential.*proportional.*annealed"):
        plan("random")
    with pytest.raises(ValueError, match=r"epoch_length.*min.*max.*steps"):
        plan("roundrobin", epoch_length="longest")
    with pytest.raises(ValueError, match="steps_per_epoch"):
        plan("roundrobin", epoch_length="steps")
    with pytest.raises(ValueError, match="'sts'"):
        epoch_plan("roundrobin", SIZES, {"sst": 8, "para": 8, "sts": 64}, epoch=1, num_epochs=1, seed=0)
    with pytest.raises(ValueError, match="'tiny'"):
        epoch_plan("sequential", {"big": 100, "tiny": 3}, 4, epoch=1, num_epochs=1, seed=0)
    with pytest.raises(ValueError, match="epoch"):
        plan("roundrobin", epoch=0)
    with pytest.raises(ValueError, match="batch_size"):
        epoch_plan("roundrobin", SIZES, {"sst": 8}, epoch=1, num_epochs=1, seed=0)


def test_proportional_task_draws_use_documented_stream():
    from jaxbert.samplers import TASK_DRAW_TAG
    tasks = lambda p: [next(iter(s)) for s in p]
    p2, p3 = plan("proportional", epoch=2, seed=9), plan("proportional", epoch=3, seed=9)
    assert tasks(p2) != tasks(p3)  # task order itself changes with the epoch, not only the examples
    probs = np.array(list(task_probabilities(SIZES, 1.0).values()))
    draws = np.random.default_rng([9, 2, TASK_DRAW_TAG]).choice(3, size=len(p2), p=probs)
    assert tasks(p2) == [list(SIZES)[d] for d in draws]


def test_length_grouping_sorts_runs_and_keeps_the_examples():
    rng = np.random.default_rng(0)
    sizes = {"a": 100, "b": 64}
    lengths = {t: rng.integers(1, 100, n) for t, n in sizes.items()}
    kw = dict(epoch=1, num_epochs=1, seed=3, epoch_length="min")
    plain = epoch_plan("roundrobin", sizes, 4, **kw)
    grouped = epoch_plan("roundrobin", sizes, 4, lengths=lengths, group_batches=4, **kw)
    for t in sizes:
        flat_plain = np.concatenate([s[t] for s in plain])
        flat_grouped = np.concatenate([s[t] for s in grouped])
        for run in range(0, len(flat_grouped), 16):  # 4 batches of 4: the same examples, now shortest first
            chunk = flat_grouped[run:run + 16]
            assert sorted(chunk) == sorted(flat_plain[run:run + 16])
            assert np.all(np.diff(lengths[t][chunk]) >= 0)
    with pytest.raises(ValueError, match="group_batches needs the per-example lengths"):
        epoch_plan("roundrobin", sizes, 4, group_batches=4, **kw)
