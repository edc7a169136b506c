"""Several processes training one run, on JAX's own runtime (`jax.distributed`).

Every process runs the same program on the same plan: it loads the checkpoint and the data itself, feeds its
slice of each batch (`train_step.shard_batch`) and takes part in every checkpoint save (Orbax writes one
checkpoint together). Only process 0 writes the rest of the run folder (config, metrics, TensorBoard,
predictions, results, the lock) and prints the log; `barrier` keeps the others from running ahead of what it
writes.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils

from jaxbert.config import DistributedConfig


def initialize(config: DistributedConfig) -> None:
    """Joins the processes `config` describes (nothing for a single process); before any other JAX call."""
    if jax.distributed.is_initialized() or not (config.auto or config.coordinator_address):
        return
    if config.auto:  # SLURM, Open MPI, Cloud TPU, Kubernetes: JAX reads the cluster's environment
        jax.distributed.initialize()
    else:
        jax.distributed.initialize(config.coordinator_address, num_processes=config.num_processes,
                                   process_id=config.process_id)


def is_writer() -> bool:
    """Whether this process writes the run folder's files and the log: process 0."""
    return jax.process_index() == 0


def barrier(name: str) -> None:
    """Waits until every process reaches the barrier `name`."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


def all_agree(ok: bool) -> bool:
    """Process 0's `ok`, on every process (a barrier too): so that a decision only process 0 can make stops all
    of them, not only itself."""
    if jax.process_count() == 1:
        return ok
    return bool(multihost_utils.broadcast_one_to_all(np.asarray(ok)))


def to_host(tree: Any) -> Any:
    """`jax.device_get` for arrays of every process: one sharded over several processes is gathered whole."""
    def fetch(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable and not x.is_fully_replicated:
            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return jax.device_get(x)

    return jax.tree.map(fetch, tree)
