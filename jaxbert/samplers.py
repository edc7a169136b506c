"""Deterministic multitask batch schedules (pure NumPy, no mutable state).

The plan of one epoch is a pure function of ``(seed, epoch)`` and the other arguments, so a run's position
is fully described by ``(epoch, step_in_epoch)``: a resumed run recomputes ``epoch_plan(...)`` and skips the
first ``step_in_epoch`` steps (``plan[step_in_epoch:]``) to see exactly the data it would have seen.

Epochs are **1-based** everywhere in this module (``epoch`` runs from 1 to ``num_epochs``), matching the
annealed-sampling formula of Stickland & Murray (2019).

Per-task example order
----------------------
Task ``i`` (its position in ``sizes``, in the dict's order) has a *permutation stream*: pass ``p`` (0, 1, 2, ...)
is ``np.random.default_rng([seed, epoch, i, p]).permutation(N_i)``, cut into ``N_i // B_i`` full batches of
``B_i`` examples (the incomplete remainder of every pass is dropped).  The ``k``-th batch a task receives in an
epoch is batch ``k % nb`` of pass ``k // nb`` (``nb = N_i // B_i``), so the indices within one pass are unique,
and a task that needs more batches than one pass holds cycles through fresh permutations.

Samplers
--------
``"roundrobin"``   every step holds one batch of every task; ``epoch_length`` picks the number of steps:
                   ``"min"`` (smallest task's batch count), ``"max"`` (largest task's), ``"steps"``
                   (``steps_per_epoch``).
``"sequential"``   every step holds one task: all full batches of task 1, then task 2, ... (one pass each).
``"proportional"`` every step holds one task drawn with ``p_i ∝ N_i ** alpha`` (``alpha = 1`` by default).
``"annealed"``     as proportional with ``alpha = annealing_alpha(epoch, num_epochs)`` unless ``alpha`` is given.
                   For both, the number of steps is ``steps_per_epoch`` if given, else the total number of full
                   batches of all tasks; the task draws come from ``default_rng([seed, epoch, TASK_DRAW_TAG])``.
"""

from __future__ import annotations

import math
from numbers import Integral, Real
from typing import Mapping

import numpy as np

from jaxbert.choices import EPOCH_LENGTHS, SAMPLERS

TASK_DRAW_TAG = 0x5EED7A5C  # constant last seed word of the task-draw stream of proportional/annealed sampling

__all__ = ["SAMPLERS", "EPOCH_LENGTHS", "TASK_DRAW_TAG", "epoch_plan", "annealing_alpha", "task_probabilities",
           "describe"]


def _is_int(value) -> bool:
    return isinstance(value, Integral) and not isinstance(value, bool)


def _check_epoch(epoch, num_epochs) -> None:
    if not _is_int(num_epochs) or num_epochs < 1:
        raise ValueError(f"num_epochs must be an integer >= 1, got {num_epochs!r}")
    if not _is_int(epoch) or not 1 <= epoch <= num_epochs:
        raise ValueError(f"epoch must be an integer in [1, num_epochs={num_epochs}] (epochs are 1-based), "
                         f"got {epoch!r}")


def _check_sizes(sizes: Mapping[str, int]) -> None:
    if not isinstance(sizes, Mapping) or len(sizes) == 0:
        raise ValueError(f"sizes must be a non-empty dict task -> number of examples, got {sizes!r}")
    for task, n in sizes.items():
        if not _is_int(n) or n < 0:
            raise ValueError(f"sizes[{task!r}] must be a non-negative integer, got {n!r}")


def annealing_alpha(epoch: int, num_epochs: int) -> float:
    """Stickland & Murray (2019) annealed exponent ``1 - 0.8 (e - 1) / (E - 1)`` for the 1-based epoch ``e``.

    Goes from 1.0 at ``e = 1`` (proportional sampling) to 0.2 at ``e = E``; 1.0 when ``E = 1``.
    """
    _check_epoch(epoch, num_epochs)
    if num_epochs == 1:
        return 1.0
    return 1.0 - 0.8 * (epoch - 1) / (num_epochs - 1)


def task_probabilities(sizes: Mapping[str, int], alpha: float = 1.0) -> dict[str, float]:
    """``p_i = N_i ** alpha / sum_j N_j ** alpha`` (float64), in the order of ``sizes``.

    ``alpha = 1`` is proportional sampling, ``alpha = 0`` uniform.  Every size must be positive.
    """
    _check_sizes(sizes)
    if not isinstance(alpha, Real) or isinstance(alpha, bool) or not math.isfinite(alpha):
        raise ValueError(f"alpha must be a finite number, got {alpha!r}")
    for task, n in sizes.items():
        if n <= 0:
            raise ValueError(f"task {task!r} has no examples (size {n}); cannot assign it a sampling probability")
    weights = np.array([float(n) for n in sizes.values()], dtype=np.float64) ** float(alpha)
    probs = weights / weights.sum()
    return {task: float(p) for task, p in zip(sizes, probs)}


class _TaskStream:
    """Full batches of one task, from the cycling permutation stream seeded by (seed, epoch, task_idx, pass)."""

    def __init__(self, size: int, batch_size: int, seed: int, epoch: int, task_idx: int,
                 lengths: np.ndarray | None = None, group_batches: int = 0):
        self.size, self.batch_size = size, batch_size
        self.seed, self.epoch, self.task_idx = seed, epoch, task_idx
        self.lengths, self.group_batches = lengths, group_batches
        self.batches_per_pass = size // batch_size
        self._pass_no, self._perm = -1, None

    def batch(self, k: int) -> np.ndarray:
        pass_no, b = divmod(k, self.batches_per_pass)
        if pass_no != self._pass_no:
            rng = np.random.default_rng([self.seed, self.epoch, self.task_idx, pass_no])
            self._perm = self._group_by_length(rng.permutation(self.size).astype(np.int64))
            self._pass_no = pass_no
        start = b * self.batch_size
        return self._perm[start:start + self.batch_size].copy()

    def _group_by_length(self, perm: np.ndarray) -> np.ndarray:
        """Sorts each run of `group_batches` batches of the permutation by length, shortest first.

        Batches then hold examples of similar length and pad little. Every task sorts its runs the same way, so
        in a round-robin step all tasks are at the same rank of their runs: their lengths rise and fall together,
        and one padded length per step wastes little.
        """
        if self.lengths is None or self.group_batches <= 0:
            return perm
        run = self.group_batches * self.batch_size
        return np.concatenate([chunk[np.argsort(self.lengths[chunk], kind="stable")]
                               for chunk in np.split(perm, range(run, len(perm), run))])


def epoch_plan(sampler: str, sizes: dict[str, int], batch_size: int | dict[str, int], *, epoch: int,
               num_epochs: int, seed: int, epoch_length: str = "min", steps_per_epoch: int | None = None,
               alpha: float | None = None, lengths: Mapping[str, np.ndarray] | None = None,
               group_batches: int = 0) -> list[dict[str, np.ndarray]]:
    """The batches of epoch ``epoch`` (1-based): a list of steps, each ``{task: int64 example indices}``.

    Args:
      sampler: one of ``SAMPLERS`` (see the module docstring).
      sizes: task -> number of examples; the dict's order is the task order (task index, sequential order).
      batch_size: one batch size for all tasks, or a dict task -> batch size covering every task.
      epoch, num_epochs: 1-based epoch and total epochs (``num_epochs`` drives annealing).
      seed: non-negative integer.
      epoch_length: roundrobin only: ``"min"``, ``"max"`` or ``"steps"``.
      steps_per_epoch: required by roundrobin ``"steps"``; optional for proportional/annealed; not accepted
        otherwise.
      alpha: proportional/annealed only: overrides the exponent of ``p_i ∝ N_i ** alpha``.
      lengths, group_batches: with both given (task -> per-example token lengths, and a positive number of
        batches), each run of ``group_batches`` batches of a pass is sorted by length (length-grouped batching:
        the examples of a pass and its run boundaries are unchanged, only their order within a run).

    Raises ValueError for an unknown ``sampler``/``epoch_length`` (listing the allowed values), a task with fewer
    examples than its batch size (naming the task), and other invalid arguments.
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; allowed values: {', '.join(SAMPLERS)}")
    if epoch_length not in EPOCH_LENGTHS:
        raise ValueError(f"unknown epoch_length {epoch_length!r}; allowed values: {', '.join(EPOCH_LENGTHS)}")
    _check_epoch(epoch, num_epochs)
    _check_sizes(sizes)
    if not _is_int(seed) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    tasks = list(sizes)

    if isinstance(batch_size, Mapping):
        missing = [t for t in tasks if t not in batch_size]
        if missing:
            raise ValueError(f"batch_size dict has no entry for task(s) {missing}")
        batch_sizes = {t: batch_size[t] for t in tasks}
    else:
        batch_sizes = {t: batch_size for t in tasks}
    for t, b in batch_sizes.items():
        if not _is_int(b) or b < 1:
            raise ValueError(f"batch_size for task {t!r} must be a positive integer, got {b!r}")
        if sizes[t] < b:
            raise ValueError(f"task {t!r} has {sizes[t]} examples, fewer than its batch size {b}: "
                             f"it has no full batch")

    if steps_per_epoch is not None:
        if not _is_int(steps_per_epoch) or steps_per_epoch < 1:
            raise ValueError(f"steps_per_epoch must be a positive integer, got {steps_per_epoch!r}")
        if sampler == "sequential" or (sampler == "roundrobin" and epoch_length != "steps"):
            raise ValueError(f"steps_per_epoch is only used by sampler 'roundrobin' with epoch_length='steps' "
                             f"and by 'proportional'/'annealed'; got sampler={sampler!r}, "
                             f"epoch_length={epoch_length!r}")
    if alpha is not None and sampler not in ("proportional", "annealed"):
        raise ValueError(f"alpha is only used by samplers 'proportional' and 'annealed', got sampler={sampler!r}")

    if group_batches and lengths is None:
        raise ValueError("group_batches needs the per-example lengths of every task")
    streams = {t: _TaskStream(sizes[t], batch_sizes[t], seed, epoch, i, lengths and lengths[t], group_batches)
               for i, t in enumerate(tasks)}
    nbatches = {t: s.batches_per_pass for t, s in streams.items()}

    if sampler == "roundrobin":
        if epoch_length == "min":
            steps = min(nbatches.values())
        elif epoch_length == "max":
            steps = max(nbatches.values())
        else:
            if steps_per_epoch is None:
                raise ValueError("epoch_length='steps' requires steps_per_epoch")
            steps = steps_per_epoch
        columns = {t: [streams[t].batch(k) for k in range(steps)] for t in tasks}
        return [{t: columns[t][k] for t in tasks} for k in range(steps)]

    if sampler == "sequential":
        return [{t: streams[t].batch(k)} for t in tasks for k in range(nbatches[t])]

    # proportional / annealed
    if alpha is None:
        alpha = 1.0 if sampler == "proportional" else annealing_alpha(epoch, num_epochs)
    probs = task_probabilities(sizes, alpha)
    steps = steps_per_epoch if steps_per_epoch is not None else sum(nbatches.values())
    rng = np.random.default_rng([seed, epoch, TASK_DRAW_TAG])
    draws = rng.choice(len(tasks), size=steps, p=np.array([probs[t] for t in tasks]))
    counters = {t: 0 for t in tasks}
    plan = []
    for d in draws:
        t = tasks[int(d)]
        plan.append({t: streams[t].batch(counters[t])})
        counters[t] += 1
    return plan


def describe(plan: list[dict[str, np.ndarray]]) -> dict[str, dict[str, int]]:
    """Per-task ``{"steps": steps containing the task, "examples": examples of the task}``, for logs."""
    out: dict[str, dict[str, int]] = {}
    for step in plan:
        for task, idx in step.items():
            entry = out.setdefault(task, {"steps": 0, "examples": 0})
            entry["steps"] += 1
            entry["examples"] += int(len(idx))
    return out
