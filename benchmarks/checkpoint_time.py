"""How long the checkpoint a preempted run writes takes: the whole train state (params, AdamW moments, `extra`)
of a config's model, saved as `CheckpointStore.save` does when SIGTERM arrives, timed over a few saves.

    python benchmarks/checkpoint_time.py --config configs/minilm_cpu.yaml [--saves 5] [--dir /tmp/ckpt]

Prints the state's size, each save's wall time and their median: the grace period a preemption needs
beyond the step in flight.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # a script in benchmarks/ imports the library from the root


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/minilm_cpu.yaml")
    parser.add_argument("--saves", type=int, default=5)
    parser.add_argument("--dir", default=None, help="where to write (default: a temporary folder)")
    args = parser.parse_args(argv)

    from jaxbert import build
    from jaxbert.checkpoint import CheckpointStore
    from jaxbert.config import load_config
    from jaxbert.train_step import data_mesh, replicate

    config = load_config(args.config)
    encoder = build.load_encoder(config, log=lambda _: None)
    model = build.model(config, encoder.config)
    params = build.initial_params(model, encoder.params, config.train.seed_list)
    tx = build.optimizer(config, params, total_updates=1000)
    state = replicate(build.train_state(params, tx, config), data_mesh())
    items = state.checkpoint_items()
    size = sum(leaf.nbytes for leaf in jax.tree.leaves(items))
    folder = Path(args.dir or tempfile.mkdtemp(prefix="jaxbert-ckpt-"))
    store = CheckpointStore(folder / "checkpoints")
    times = []
    for k in range(args.saves):
        items["step"] = items["step"] + 1  # a new step each time, as the loop saves them
        jax.block_until_ready(items)
        start = time.perf_counter()
        store.save(items, {"stage": 0, "epoch": 0, "step_in_epoch": k, "seeds": []})
        times.append(time.perf_counter() - start)
    store.close()
    shutil.rmtree(folder, ignore_errors=True)
    print(f"{args.config}: train state {size / 2**20:.0f} MiB on {jax.devices()[0].platform}; saves "
          f"{', '.join(f'{t:.2f}' for t in times)} s; median {np.median(times):.2f} s")


if __name__ == "__main__":
    main()
