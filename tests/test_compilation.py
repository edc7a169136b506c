"""The jitted train step compiles once per combination of length buckets, and never again for a shape it has seen."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import TINY
from jaxbert import build
from jaxbert import data as data_lib
from jaxbert.config import load_config
from jaxbert.modeling import BertConfig, BertModel
from jaxbert.prefetch import prefetch
from jaxbert.tasks import TASKS as REGISTRY
from jaxbert.train_step import data_mesh, replicate, shard_batch, updates_per_step
from jaxbert.training import plan_for, step_batches

TASKS = ("sst", "para")
ROWS, BATCH, MAX_LENGTH = 24, 4, 24


def synthetic_split(task: str, rng: np.random.Generator) -> data_lib.Encoded:
    """A right-padded train split as `data.encode_split` makes it, with random lengths from 3 to MAX_LENGTH."""
    lengths = rng.integers(3, MAX_LENGTH + 1, ROWS).astype(np.int32)
    mask = (np.arange(MAX_LENGTH)[None, :] < lengths[:, None]).astype(np.int32)
    inputs = {"input_ids": rng.integers(5, TINY["vocab_size"], mask.shape).astype(np.int32) * mask,
              "attention_mask": mask, "token_type_ids": np.zeros_like(mask)}
    labels = rng.integers(0, REGISTRY[task].num_classes, ROWS).astype(np.int32)
    return data_lib.Encoded(REGISTRY[task], "train", np.arange(ROWS).astype(str), inputs, lengths, labels, 0)


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
    # Sorting each whole pass by length makes every epoch's padded lengths the same multiset, so the second epoch
    # can only repeat the first one's shapes.
    config = load_config(None, {"tasks": list(TASKS), "data.max_length": MAX_LENGTH,
                                "data.buckets": [8, 16, MAX_LENGTH], "train.batch_size": BATCH,
                                "train.group_by_length": ROWS // BATCH, "train.epochs": 2})
    rng = np.random.default_rng(0)
    train = {task: synthetic_split(task, rng) for task in TASKS}
    plans = [plan_for(config, train, epoch) for epoch in range(config.train.epochs)]

    # The step as the trainer builds it, on a random encoder.
    bert_config = BertConfig(**{**TINY, "num_hidden_layers": 1})
    ids = jnp.zeros((1, 4), jnp.int32)
    bert_params = BertModel(bert_config).init(jax.random.key(0), ids, ids)["params"]
    model = build.model(config, bert_config)
    params = build.initial_params(model, bert_params, [0])
    tx = build.optimizer(config, params, sum(updates_per_step(config.train, len(step)) for plan in plans
                                             for step in plan))
    mesh = data_mesh()
    state = replicate(build.train_state(params, tx, config), mesh)
    train_step = build.train_step(model, tx, config, [0], mesh)

    seen, compiles = set(), []
    for epoch, plan in enumerate(plans):
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
