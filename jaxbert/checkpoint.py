"""Run checkpoints: the latest (for `--resume`) and the best by dev score, each with the loop position.

Each checkpoint holds the train state (step, params, optimizer state) and a JSON `progress` record: where the
loop stands (epoch, step within it), the best score so far and the per-epoch history, which is all a
resumed run needs to continue exactly as an uninterrupted one would.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp


class CheckpointStore:
    """`latest/` keeps the newest checkpoint, `best/` the one with the highest `progress["score"]`."""

    def __init__(self, directory: str | Path):
        directory = Path(directory).absolute()
        # Synchronous saves: a checkpoint reported saved is on disk if the process dies the next moment.
        self.latest = ocp.CheckpointManager(
            directory / "latest", options=ocp.CheckpointManagerOptions(max_to_keep=1, enable_async_checkpointing=False))
        self.best = ocp.CheckpointManager(
            directory / "best", options=ocp.CheckpointManagerOptions(
                max_to_keep=1, best_fn=lambda metrics: metrics["score"], best_mode="max",
                keep_checkpoints_without_metrics=False, enable_async_checkpointing=False))

    def save(self, state: Any, progress: dict[str, Any], best: bool = False) -> None:
        """Saves `latest`, then `best` too when `best`."""
        self.latest.save(_step(state), args=_save_args(state, progress), force=True)
        if best:
            self.save_best(state, progress)

    def save_best(self, state: Any, progress: dict[str, Any]) -> None:
        """Saves `best` alone: a seed of a vmapped run keeps its best here, its latest state lives in the run's
        stacked checkpoint."""
        self.best.save(_step(state), args=_save_args(state, progress), metrics={"score": float(progress["score"])},
                       force=True)

    def restore(self, abstract_state: Any, which: str = "latest") -> tuple[Any, dict[str, Any]] | None:
        """`(state, progress)` of the newest checkpoint in `which`, or None if there is none."""
        manager = self.latest if which == "latest" else self.best
        step = manager.latest_step()
        if step is None:
            return None
        restored = manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), progress=ocp.args.JsonRestore()))
        return restored["state"], restored["progress"]

    def close(self) -> None:
        self.latest.close()
        self.best.close()


def _step(state: Any) -> int:
    return int(np.max(jax.device_get(state["step"])))  # a state stacked over seeds holds one step per seed, all equal


def _save_args(state: Any, progress: dict[str, Any]) -> ocp.args.Composite:
    return ocp.args.Composite(state=ocp.args.StandardSave(state), progress=ocp.args.JsonSave(progress))
