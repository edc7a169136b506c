"""Run checkpoints: the latest (for `--resume`) and the best by dev score, each with the loop position.

Each checkpoint holds the train state (step, params, optimizer state) and a JSON `progress` record: where the
loop stands (stage, epoch, step within it), the best score so far and the per-epoch history, which is all a
resumed run needs to continue exactly as an uninterrupted one would.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from jaxbert.errors import CheckpointError


def _item_handlers() -> dict[str, Any]:
    # Named up front, so a fresh store reads a checkpoint's metadata before it has saved anything.
    return {"state": ocp.PyTreeCheckpointHandler(), "progress": ocp.JsonCheckpointHandler()}


class CheckpointStore:
    """`latest/` keeps the newest checkpoint, `best/` the one with the highest `progress["score"]`."""

    def __init__(self, directory: str | Path):
        directory = self.directory = Path(directory).absolute()
        # Synchronous saves: a checkpoint reported saved is on disk if the process dies the next moment.
        self.latest = ocp.CheckpointManager(
            directory / "latest", options=ocp.CheckpointManagerOptions(max_to_keep=1, enable_async_checkpointing=False),
            item_handlers=_item_handlers())
        self.best = ocp.CheckpointManager(
            directory / "best", options=ocp.CheckpointManagerOptions(
                max_to_keep=1, best_fn=lambda metrics: metrics["score"], best_mode="max",
                keep_checkpoints_without_metrics=False, enable_async_checkpointing=False),
            item_handlers=_item_handlers())

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

    def restore(self, abstract_state: Any, which: str = "latest",
                partial: bool = False) -> tuple[Any, dict[str, Any]] | None:
        """`(state, progress)` of the newest checkpoint in `which`, or None if there is none.

        The state takes the structure, dtypes and shardings of `abstract_state` (None: as saved, in host NumPy
        arrays). With `partial`, `abstract_state` may name a part of the saved state (`{"params": ...}`) and only
        that part is read: the params of a checkpoint whose optimizer state has another structure (another
        stage's).
        """
        manager = self._manager(which)
        step = manager.latest_step()
        if step is None:
            return None
        if abstract_state is None:
            saved = manager.item_metadata(step)["state"].tree
            restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), saved)
        else:
            restore_args = ocp.checkpoint_utils.construct_restore_args(abstract_state)
        restored = manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.PyTreeRestore(item=abstract_state, restore_args=restore_args, partial_restore=partial),
            progress=ocp.args.JsonRestore()))
        return restored["state"], restored["progress"]

    def shapes(self, which: str = "latest", part: str = "params") -> dict[str, tuple[int, ...]] | None:
        """`{"bert/embeddings/...": shape}` of `part` of the newest checkpoint in `which`, read from its metadata
        alone; None if there is none."""
        manager = self._manager(which)
        step = manager.latest_step()
        if step is None:
            return None
        return _shapes(manager.item_metadata(step)["state"].tree[part])

    def check_fits(self, abstract: Any, which: str = "latest", part: str = "params") -> None:
        """Raises `CheckpointError` unless `part` of the newest checkpoint in `which` has exactly the leaves and
        shapes of `abstract` (a partial restore would fill a missing leaf silently)."""
        saved, wanted = self.shapes(which, part), _shapes(abstract)
        if saved is None or saved == wanted:
            return
        missing, unexpected = sorted(wanted.keys() - saved.keys()), sorted(saved.keys() - wanted.keys())
        reshaped = [f"{k} {saved[k]} (the model's {wanted[k]})" for k in sorted(saved.keys() & wanted.keys())
                    if saved[k] != wanted[k]]
        details = "; ".join(f"{label}: {', '.join(items[:3])}{', ...' if len(items) > 3 else ''}"
                            for label, items in (("not in the checkpoint", missing), ("only in the checkpoint",
                                                 unexpected), ("other shapes", reshaped)) if items)
        raise CheckpointError(f"{self.directory / which} holds another model than the config describes ({details})")

    def progress(self, which: str = "latest") -> dict[str, Any] | None:
        """The `progress` record of the newest checkpoint in `which` alone, or None if there is none."""
        manager = self._manager(which)
        step = manager.latest_step()
        if step is None:
            return None
        return manager.restore(step, args=ocp.args.Composite(progress=ocp.args.JsonRestore()))["progress"]

    def _manager(self, which: str) -> ocp.CheckpointManager:
        if which not in ("latest", "best"):
            raise ValueError(f"which must be 'latest' or 'best', got {which!r}")
        return self.latest if which == "latest" else self.best

    def close(self) -> None:
        self.latest.close()
        self.best.close()


def _shapes(tree: Any) -> dict[str, tuple[int, ...]]:
    return {"/".join(str(getattr(k, "key", k)) for k in path): tuple(leaf.shape)
            for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _step(state: Any) -> int:
    return int(np.max(jax.device_get(state["step"])))  # a state stacked over seeds holds one step per seed, all equal


def _save_args(state: Any, progress: dict[str, Any]) -> ocp.args.Composite:
    return ocp.args.Composite(state=ocp.args.PyTreeSave(state), progress=ocp.args.JsonSave(progress))
