"""The jitted train step compiles once per combination of length buckets, and never again for a shape it has seen."""

import jax
import numpy as np
import optax
import pytest

from conftest import TINY
from jaxbert import data as data_lib
from jaxbert.config import Config
from jaxbert.heads import HeadSpec, MultitaskBert
from jaxbert.modeling import BertConfig
from jaxbert.prefetch import prefetch
from jaxbert.train_step import create_train_state, data_mesh, jit_train_step, make_train_step, replicate, shard_batch
from jaxbert.training import plan_for, step_batches

TASKS = ("sst", "para")
ROWS, BATCH, MAX_LENGTH = 24, 4, 24


def synthetic_split(task: str, rng: np.random.Generator) -> data_lib.Encoded:
    """A right-padded train split as `data.encode_split` makes it, with random lengths from 3 to MAX_LENGTH."""
    lengths = rng.integers(3, MAX_LENGTH + 1, ROWS).astype(np.int32)
    mask = (np.arange(MAX_LENGTH)[None, :] < lengths[:, None]).astype(np.int32)
    inputs = {"input_ids": rng.integers(5, TINY["vocab_size"], mask.shape).astype(np.int32) * mask,
              "attention_mask": mask, "token_type_ids": np.zeros_like(mask)}
    labels = rng.integers(0, data_lib.TASKS[task].num_classes, ROWS).astype(np.int32)
    return data_lib.Encoded(data_lib.TASKS[task], "train", np.arange(ROWS).astype(str), inputs, lengths, labels, 0)


class CompileCounter:
    """Counts XLA compilations of the jitted function named `name`, through JAX's public monitoring events."""

    EVENT = "/jax/core/compile/backend_compile_duration"

    def __init__(self, name: str):
        self.name, self.count = name, 0

    def __call__(self, event: str, duration: float, **kwargs):
        if event == self.EVENT and kwargs.get("fun_name") == f"jit({self.name})":
            self.count += 1


@pytest.fixture
def count_train_step_compiles():
    counter = CompileCounter("train_step")
    jax.monitoring.register_event_duration_secs_listener(counter)
    yield counter
    jax.monitoring.unregister_event_duration_listener(counter)


def bucket_combinations(plan, train, buckets) -> set[tuple]:
    """The distinct `(task, padded length)` tuples of the plan's steps: one compiled program each."""
    return {tuple((task, data_lib.batch_length(train[task], idx, buckets)) for task, idx in sorted(step.items()))
            for step in plan}


def test_one_compile_per_bucket_combination(count_train_step_compiles):
    config = Config(tasks=list(TASKS))
    config.data.max_length, config.data.buckets = MAX_LENGTH, [8, 16, MAX_LENGTH]
    # Sorting each whole pass by length makes every epoch's padded lengths the same multiset, so the second epoch
    # can only repeat the first one's shapes.
    config.train.batch_size, config.train.group_by_length, config.train.epochs = BATCH, ROWS // BATCH, 2
    rng = np.random.default_rng(0)
    train = {task: synthetic_split(task, rng) for task in TASKS}

    model = MultitaskBert(BertConfig(**{**TINY, "num_hidden_layers": 1}), TASKS, HeadSpec())
    dummy = {k: np.zeros((1, 4), np.int32) for k in ("input_ids", "attention_mask", "token_type_ids")}
    params = {}
    for task in TASKS:
        params.update(model.init(jax.random.key(0), task, dummy)["params"])
    mesh, tx = data_mesh(), optax.sgd(1e-3)
    state = replicate(create_train_state(params, tx), mesh)
    train_step = jit_train_step(make_train_step(model, tx, jax.random.key(1)), mesh)

    seen, compiles = set(), []
    for epoch in range(config.train.epochs):
        plan = plan_for(config, train, epoch)
        seen |= bucket_combinations(plan, train, config.data.buckets)
        for batches in prefetch(shard_batch(step_batches(train, step, config.data.buckets), mesh) for step in plan):
            state, _ = train_step(state, batches)
        compiles.append(count_train_step_compiles.count)
        if epoch == 0:
            first_epoch = set(seen)
            assert 1 < len(first_epoch) < len(plan), "the fixture must mix lengths, and the buckets must share shapes"
            assert len(first_epoch) <= len(config.data.buckets) ** len(TASKS)
        assert compiles[-1] == len(seen), (epoch, compiles, sorted(seen))
    assert seen == first_epoch and compiles[1] == compiles[0]  # the second epoch compiled nothing
