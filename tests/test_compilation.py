"""The jitted train step compiles once per combination of step shapes, and never again for a shape it has seen;
`data.step_shapes: step_max` bounds the combinations by the buckets; a second run of `train.py` loads every
program from the persistent compilation cache."""

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from conftest import ARGS, TINY, workspace  # noqa: F401 (fixture)
from jaxbert import build, compilation
from jaxbert import data as data_lib
from jaxbert.config import load_config, parse_overrides
from jaxbert.modeling import BertConfig, BertModel
from jaxbert.prefetch import prefetch
from jaxbert.tasks import TASKS as REGISTRY
from jaxbert.train_step import data_mesh, replicate, shard_batch, updates_per_step
from jaxbert.training import plan_for, step_batches

ROOT = Path(__file__).resolve().parents[1]
TASKS = ("sst", "para")
ROWS, BATCH, MAX_LENGTH = 24, 4, 24
BUCKETS = [8, 16, MAX_LENGTH]


def synthetic_split(task: str, rng: np.random.Generator) -> data_lib.Encoded:
    """A right-padded train split as `data.encode_split` makes it, with random lengths from 3 to MAX_LENGTH."""
    lengths = rng.integers(3, MAX_LENGTH + 1, ROWS).astype(np.int32)
    mask = (np.arange(MAX_LENGTH)[None, :] < lengths[:, None]).astype(np.int32)
    inputs = {"input_ids": rng.integers(5, TINY["vocab_size"], mask.shape).astype(np.int32) * mask,
              "attention_mask": mask, "token_type_ids": np.zeros_like(mask)}
    labels = rng.integers(0, REGISTRY[task].num_classes, ROWS).astype(np.int32)
    return data_lib.Encoded(REGISTRY[task], "train", np.arange(ROWS).astype(str), inputs, lengths, labels, 0)


def tiny_config(**overrides):
    return load_config(None, {"tasks": list(TASKS), "data.max_length": MAX_LENGTH, "data.buckets": BUCKETS,
                              "train.batch_size": BATCH, "train.group_by_length": ROWS // BATCH, **overrides})


def tiny_step(config, plans, **bert_overrides):
    """`(host state, jitted train step, mesh)` as the trainer builds them, on a random one-layer encoder."""
    bert_config = BertConfig(**{**TINY, "num_hidden_layers": 1, **bert_overrides})
    ids = jnp.zeros((1, 4), jnp.int32)
    bert_params = BertModel(bert_config).init(jax.random.key(0), ids, ids)["params"]
    model = build.model(config, bert_config)
    params = build.initial_params(model, bert_params, [0])
    tx = build.optimizer(config, params, sum(updates_per_step(config.train, len(step)) for plan in plans
                                             for step in plan))
    mesh = data_mesh()
    return jax.device_get(build.train_state(params, tx, config)), build.train_step(model, tx, config, [0], mesh), mesh


def bucket_combinations(plan, train, buckets) -> set[tuple]:
    """The distinct `(task, padded length)` tuples of the plan's steps: one compiled program each."""
    return {tuple((task, data_lib.batch_length(train[task], idx, buckets)) for task, idx in sorted(step.items()))
            for step in plan}


def test_one_compile_per_bucket_combination():
    # Sorting each whole pass by length makes every epoch's padded lengths the same multiset, so the second epoch
    # can only repeat the first one's shapes.
    config = tiny_config(**{"train.epochs": 2})
    rng = np.random.default_rng(0)
    train = {task: synthetic_split(task, rng) for task in TASKS}
    plans = [plan_for(config, train, epoch) for epoch in range(config.train.epochs)]
    host, train_step, mesh = tiny_step(config, plans)
    state = replicate(host, mesh)

    seen, compiles = set(), []
    with compilation.compile_log() as log:
        for epoch, plan in enumerate(plans):
            seen |= bucket_combinations(plan, train, BUCKETS)
            for batches in prefetch(shard_batch(step_batches(train, step, BUCKETS), mesh) for step in plan):
                state, _ = train_step(state, batches)
            compiles.append(len(log.of("train_step")))
            if epoch == 0:
                first_epoch = set(seen)
                assert 1 < len(first_epoch) < len(plan), "the fixture must mix lengths, and buckets must share shapes"
                assert len(first_epoch) <= len(BUCKETS) ** len(TASKS)
            assert compiles[-1] == len(seen), (epoch, compiles, sorted(seen))
    assert seen == first_epoch and compiles[1] == compiles[0]  # the second epoch compiled nothing


def test_step_max_compiles_a_program_per_bucket_and_computes_the_same_losses():
    # Without dropout a step's losses and gradient do not depend on how far its batches are padded.
    config = tiny_config(**{"heads.dropout": 0.0})
    rng = np.random.default_rng(1)
    train = {task: synthetic_split(task, rng) for task in TASKS}
    plan = plan_for(config, train, 0)
    host, train_step, mesh = tiny_step(config, [plan], hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    per_task = bucket_combinations(plan, train, BUCKETS)
    longest = [max(length for _, length in next(iter(bucket_combinations([step], train, BUCKETS)))) for step in plan]
    step_max = {tuple((task, length) for task in sorted(TASKS)) for length in longest}
    metrics, compiles = {}, {}
    with compilation.compile_log() as log:
        for shapes in ("step_max", "per_task"):  # one jitted step: per_task compiles the shapes step_max did not
            # Every step from the same state, so both see the same params at each step.
            metrics[shapes] = [jax.device_get(train_step(replicate(host, mesh), shard_batch(
                step_batches(train, step, BUCKETS, shapes), mesh))[1]) for step in plan]
            compiles[shapes] = len(log.of("train_step"))
    assert compiles["step_max"] == len(set(longest)) <= len(BUCKETS) < len(per_task)
    assert compiles["per_task"] == len(per_task | step_max)
    for step, length in zip(plan, longest):
        assert {b["input_ids"].shape[1] for b in step_batches(train, step, BUCKETS, "step_max").values()} == {length}
    for a, b in zip(metrics["per_task"], metrics["step_max"], strict=True):
        assert a.keys() == b.keys()
        for name in a:
            np.testing.assert_allclose(b[name], a[name], rtol=2e-5, atol=1e-6, err_msg=name)


@contextlib.contextmanager
def jax_cache_settings(directory):
    """The block runs with JAX's compilation cache folder set to `directory`; the settings come back after it."""
    keys = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs")
    saved = {key: getattr(jax.config, key) for key in keys}
    jax.config.update("jax_compilation_cache_dir", directory)
    try:
        yield
    finally:
        for key, value in saved.items():
            jax.config.update(key, value)


def test_the_cache_setting_turns_jaxs_cache_on_or_leaves_it_alone(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    for off in ("null", "off"):
        with jax_cache_settings(None):
            compilation.use_cache(load_config(None, parse_overrides([f"--train.compilation_cache={off}"])))
            assert jax.config.jax_compilation_cache_dir is None
    with jax_cache_settings(None):
        config = load_config()
        assert compilation.cache_folder(config) == str(tmp_path / "xdg" / "jaxbert" / "xla")
        compilation.use_cache(config)
        assert jax.config.jax_compilation_cache_dir == str(tmp_path / "xdg" / "jaxbert" / "xla")
        assert jax.config.jax_persistent_cache_min_compile_time_secs == 0
    with jax_cache_settings(None):
        compilation.use_cache(load_config(None, {"train.compilation_cache": str(tmp_path / "mine")}))
        assert jax.config.jax_compilation_cache_dir == str(tmp_path / "mine")
    with jax_cache_settings(str(tmp_path / "users")):  # JAX_COMPILATION_CACHE_DIR, or a suite's shared folder
        for setting in ("auto", "null"):
            config = load_config(None, parse_overrides([f"--train.compilation_cache={setting}"]))
            assert compilation.cache_folder(config) == str(tmp_path / "users")
            compilation.use_cache(config)
            assert jax.config.jax_compilation_cache_dir == str(tmp_path / "users")


# train.py in a process of its own, its compilations counted.
COUNTED = """
import json, sys
import train
from jaxbert.compilation import compile_log
with compile_log() as log:
    train.main(sys.argv[1:])
print(json.dumps({"programs": len(log.programs), "hits": log.cache_hits, "writes": log.cache_writes}))
"""


def test_a_second_run_of_train_py_compiles_nothing(workspace, tmp_path):
    bert, data, root = workspace
    env = {key: value for key, value in os.environ.items() if key != "JAX_COMPILATION_CACHE_DIR"}
    env.update(XDG_CACHE_HOME=str(tmp_path / "xdg"), JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
    counts = []
    for run in ("first", "second"):
        argv = [f"--checkpoint={bert}", f"--data-dir={data}", f"--out={tmp_path / run}",
                f"--data.cache_dir={root / 'cache'}", *ARGS[1:], "--epochs=1"]
        done = subprocess.run([sys.executable, "-c", COUNTED, *argv], cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        assert f"compilation cache {tmp_path / 'xdg' / 'jaxbert' / 'xla'}" in done.stdout
        counts.append(json.loads(done.stdout.splitlines()[-1]))
    first, second = counts
    assert first["writes"] > 0, first
    assert second["writes"] == 0 and second["hits"] == second["programs"] > 0, counts  # every program loaded
