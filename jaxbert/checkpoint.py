"""Run checkpoints: the latest (for `--resume`) and the best by dev score, each with the loop position.

Each checkpoint holds the train state (step, params, optimizer state) and a JSON `progress` record: where the
loop stands (stage, epoch, step within it), the best score so far and the per-epoch history, which is all a
resumed run needs to continue exactly as an uninterrupted one would.

A checkpoint can be broken: a save killed half-way leaves an unfinished `<step>.orbax-checkpoint-tmp` folder, and
a file can be deleted, truncated or overwritten later. `latest/` keeps two checkpoints so that one survives a
save that dies; `newest_intact` finds the newest that reads whole, naming each newer one it skipped and why.
Every read of a broken checkpoint raises a one-line `CheckpointError` naming its folder, never Orbax's error.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from jaxbert.errors import CheckpointError

# The layout of the train state a checkpoint holds; a checkpoint of another layout is not resumed.
# 2: stacked over a seed axis, with the non-finite guard in `extra`.
STATE_FORMAT = 2


# An unfinished save's folder, as Orbax's atomic rename leaves it when the process dies before the rename.
_UNFINISHED = re.compile(r"(\d+)" + re.escape(ocp.path.step.TMP_DIR_SUFFIX))


@dataclasses.dataclass(frozen=True)
class Intact:
    """What `CheckpointStore.newest_intact` found."""

    step: int | None  # the newest checkpoint that reads whole (None: no checkpoint, or only unfinished saves)
    progress: dict[str, Any] | None  # its `progress` record
    skipped: tuple[str, ...] = ()  # "step 4 (why)" for each newer checkpoint that does not read, newest first


def _item_handlers() -> dict[str, Any]:
    # Named up front, so a fresh store reads a checkpoint's metadata before it has saved anything.
    return {"state": ocp.PyTreeCheckpointHandler(), "progress": ocp.JsonCheckpointHandler()}


class CheckpointStore:
    """`latest/` keeps the two newest checkpoints, `best/` the one with the highest `progress["score"]`.

    With `read_only` the store creates no folder (the checks before a run writes anything open it so) and
    cannot save or delete.
    """

    def __init__(self, directory: str | Path, read_only: bool = False):
        directory = self.directory = Path(directory).absolute()
        self.read_only = read_only
        # Synchronous saves: a checkpoint reported saved is on disk if the process dies the next moment. Two
        # latest ones: the older stays whole while the newer is written, in case the process dies mid-save.
        self.latest = ocp.CheckpointManager(
            directory / "latest", options=ocp.CheckpointManagerOptions(
                max_to_keep=2, enable_async_checkpointing=False, create=not read_only),
            item_handlers=_item_handlers())
        # One best: a save killed half-way leaves the previous best in place (Orbax deletes it after the rename).
        self.best = ocp.CheckpointManager(
            directory / "best", options=ocp.CheckpointManagerOptions(
                max_to_keep=1, best_fn=lambda metrics: metrics["score"], best_mode="max",
                keep_checkpoints_without_metrics=False, enable_async_checkpointing=False, create=not read_only),
            item_handlers=_item_handlers())

    def save(self, state: Any, progress: dict[str, Any], best: bool = False) -> None:
        """Saves `latest`, then `best` too when `best`."""
        self._check_writable()
        self.latest.save(_step(state), args=_save_args(state, progress), force=True)
        if best:
            self.save_best(state, progress)

    def save_best(self, state: Any, progress: dict[str, Any]) -> None:
        """Saves `best` alone: a seed of a vmapped run keeps its best here, its latest state lives in the run's
        stacked checkpoint."""
        self._check_writable()
        self.best.save(_step(state), args=_save_args(state, progress), metrics={"score": float(progress["score"])},
                       force=True)

    def newest_intact(self, which: str = "latest") -> Intact:
        """The newest checkpoint in `which` that reads whole, and each newer one skipped, with the reason.

        Each candidate, newest first, is read whole: its `progress` record, then its state onto the host (and
        dropped). Only a full read catches a truncated array file: its metadata still reads. A resumed run reads
        the state of the step found once more, into the devices.

        Raises:
          CheckpointError: there are checkpoints and none reads, naming the folder and why each does not.
        """
        manager, skipped = self._manager(which), []
        finished = set(manager.all_steps())
        unfinished = {int(m.group(1)) for p in _listing(manager) if (m := _UNFINISHED.fullmatch(p.name))}
        for step in sorted(finished | unfinished, reverse=True):
            if step not in finished:
                skipped.append(f"step {step} (an unfinished save: {step}{ocp.path.step.TMP_DIR_SUFFIX})")
                continue
            progress, problem = _read_whole(manager, step)
            if problem is None:
                return Intact(step, progress, tuple(skipped))
            skipped.append(f"step {step} ({problem})")
        if finished:
            raise CheckpointError(f"no intact checkpoint in {Path(manager.directory)}: {'; '.join(skipped)}")
        return Intact(None, None, tuple(skipped))

    def restore(self, abstract_state: Any, which: str = "latest", partial: bool = False,
                step: int | None = None) -> tuple[Any, dict[str, Any]] | None:
        """`(state, progress)` of checkpoint `step` in `which` (None: the newest), or None if there is none.

        The state takes the structure, dtypes and shardings of `abstract_state` (None: as saved, in host NumPy
        arrays). With `partial`, `abstract_state` may name a part of the saved state (`{"params": ...}`) and only
        that part is read: the params of a checkpoint whose optimizer state has another structure (another
        stage's).

        Raises:
          CheckpointError: the checkpoint's files do not read (the error of a state of another structure than
            `abstract_state` is Orbax's `ValueError`).
        """
        manager = self._manager(which)
        step = manager.latest_step() if step is None else step
        if step is None:
            return None
        with _reading(manager, step, "state"):
            _check_state_files(manager, step)
            if abstract_state is None:
                restore_args = _host_restore_args(manager, step)
        if abstract_state is not None:
            restore_args = ocp.checkpoint_utils.construct_restore_args(abstract_state)
        try:
            restored = manager.restore(step, args=ocp.args.Composite(
                state=ocp.args.PyTreeRestore(item=abstract_state, restore_args=restore_args, partial_restore=partial),
                progress=ocp.args.JsonRestore()))
        except MemoryError:
            raise
        except Exception:
            # Orbax raises the same errors for damaged files and for a state of another structure: reading the
            # checkpoint as saved tells them apart (and costs a second read only when the first failed).
            _, problem = _read_whole(manager, step)
            if problem is None:
                raise
            raise CheckpointError(f"checkpoint {_step_path(manager, step)} does not read ({problem})") from None
        return restored["state"], restored["progress"]

    def shapes(self, which: str = "latest", part: str = "params",
               step: int | None = None) -> dict[str, tuple[int, ...]] | None:
        """`{"bert/embeddings/...": shape}` of `part` of checkpoint `step` in `which` (None: the newest), read
        from its metadata alone; None if there is none."""
        manager = self._manager(which)
        step = manager.latest_step() if step is None else step
        if step is None:
            return None
        with _reading(manager, step, "state"):
            return _shapes(_saved_tree(manager, step)[part])

    def check_fits(self, abstract: Any, which: str = "latest", part: str = "params", step: int | None = None) -> None:
        """Raises `CheckpointError` unless `part` of checkpoint `step` in `which` (None: the newest) has exactly
        the leaves and shapes of `abstract` (a partial restore would fill a missing leaf silently)."""
        saved, wanted = self.shapes(which, part, step), _shapes(abstract)
        if saved is None or saved == wanted:
            return
        missing, unexpected = sorted(wanted.keys() - saved.keys()), sorted(saved.keys() - wanted.keys())
        reshaped = [f"{k} {saved[k]} (the model's {wanted[k]})" for k in sorted(saved.keys() & wanted.keys())
                    if saved[k] != wanted[k]]
        details = "; ".join(f"{label}: {', '.join(items[:3])}{', ...' if len(items) > 3 else ''}"
                            for label, items in (("not in the checkpoint", missing), ("only in the checkpoint",
                                                 unexpected), ("other shapes", reshaped)) if items)
        raise CheckpointError(f"{self.directory / which} holds another model than the config describes ({details})")

    def progress(self, which: str = "latest", step: int | None = None) -> dict[str, Any] | None:
        """The `progress` record of checkpoint `step` in `which` (None: the newest) alone, or None if there is
        none."""
        manager = self._manager(which)
        step = manager.latest_step() if step is None else step
        if step is None:
            return None
        with _reading(manager, step, "progress"):
            return _read_progress(manager, step)

    def discard_newer(self, step: int) -> list[int]:
        """Deletes every checkpoint, finished or not, newer than `step` in `latest` and `best`; returns their
        steps. A run resumed from `step` drops them: a skipped broken one, and a best saved after `step`, which
        the resumed run saves again when it gets there (the record of `step` does not know it)."""
        self._check_writable()
        deleted = []
        for manager in (self.latest, self.best):
            for newer in [s for s in manager.all_steps() if s > step]:
                manager.delete(newer)
                deleted.append(newer)
            for path in _listing(manager):
                if (m := _UNFINISHED.fullmatch(path.name)) and int(m.group(1)) > step:
                    if jax.process_index() == 0:  # one deleter of the folder all processes share
                        shutil.rmtree(path, ignore_errors=True)
                    deleted.append(int(m.group(1)))
        return sorted(set(deleted))

    def _check_writable(self) -> None:
        if self.read_only:
            raise ValueError(f"the checkpoint store of {self.directory} was opened read-only")

    def _manager(self, which: str) -> ocp.CheckpointManager:
        if which not in ("latest", "best"):
            raise ValueError(f"which must be 'latest' or 'best', got {which!r}")
        return self.latest if which == "latest" else self.best

    def close(self) -> None:
        self.latest.close()
        self.best.close()


def _read_progress(manager: ocp.CheckpointManager, step: int) -> dict[str, Any]:
    return manager.restore(step, args=ocp.args.Composite(progress=ocp.args.JsonRestore()))["progress"]


def _saved_tree(manager: ocp.CheckpointManager, step: int) -> Any:
    _check_state_files(manager, step)
    metadata = manager.item_metadata(step)["state"]
    if metadata is None:  # Orbax's answer when the state's `_METADATA` file is missing
        raise FileNotFoundError("state/_METADATA is missing")
    return metadata.tree


def _check_state_files(manager: ocp.CheckpointManager, step: int) -> None:
    # Without its OCDBT manifest Orbax takes the state for another format, and TensorStore's failed reads print
    # tracebacks ("Event loop is closed") from its threads beside the error.
    state = _step_path(manager, step) / "state"
    if any(state.glob("ocdbt.process_*")) and not (state / "manifest.ocdbt").is_file():
        raise FileNotFoundError("state/manifest.ocdbt is missing")


def _host_restore_args(manager: ocp.CheckpointManager, step: int) -> Any:
    return jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), _saved_tree(manager, step))


def _read_whole(manager: ocp.CheckpointManager, step: int) -> tuple[dict[str, Any] | None, str | None]:
    """Reads checkpoint `step` whole, its `progress` and then its state onto the host (dropped): `(progress,
    None)`, or `(None, why it does not read)`."""
    for item in ("progress", "state"):
        try:
            if item == "progress":
                progress = _read_progress(manager, step)
            else:
                manager.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
                    item=None, restore_args=_host_restore_args(manager, step))))
        except MemoryError:
            raise
        except Exception as e:  # noqa: BLE001 - the files', as in `_reading`
            return None, _why(item, e)
    return progress, None


@contextlib.contextmanager
def _reading(manager: ocp.CheckpointManager, step: int, item: str) -> Iterator[None]:
    """Turns any error reading `item` of checkpoint `step` into a one-line `CheckpointError` naming its folder.

    Every such error is the files': nothing of the caller's goes into the read. Orbax and TensorStore raise
    many kinds for damaged files: `ValueError` (TensorStore's OUT_OF_RANGE, NOT_FOUND or FAILED_PRECONDITION
    for a truncated or deleted array file or OCDBT manifest), a bare `Exception` (the same, read into given
    shardings), `json.JSONDecodeError` (a garbled progress record or `_METADATA`), `KeyError` (an item's folder
    gone), `FileNotFoundError` (the progress file gone).
    """
    try:
        yield
    except (MemoryError, CheckpointError):
        raise
    except Exception as e:  # noqa: BLE001 - see above
        raise CheckpointError(f"checkpoint {_step_path(manager, step)} does not read ({_why(item, e)})") from None


def _why(item: str, error: Exception) -> str:
    lines = str(error).strip().splitlines()
    message = lines[0].strip() if lines else ""
    message = message if len(message) <= 200 else message[:200] + "..."
    return f"{item}: {type(error).__name__}{': ' + message if message else ''}"


def _listing(manager: ocp.CheckpointManager) -> list[Path]:
    directory = Path(manager.directory)
    return sorted(directory.iterdir()) if directory.is_dir() else []


def _step_path(manager: ocp.CheckpointManager, step: int) -> Path:
    return Path(manager.directory) / str(step)


def _shapes(tree: Any) -> dict[str, tuple[int, ...]]:
    return {"/".join(str(getattr(k, "key", k)) for k in path): tuple(leaf.shape)
            for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _step(state: Any) -> int:
    return int(np.max(jax.device_get(state["step"])))  # a state stacked over seeds holds one step per seed, all equal


def _save_args(state: Any, progress: dict[str, Any]) -> ocp.args.Composite:
    return ocp.args.Composite(state=ocp.args.PyTreeSave(state), progress=ocp.args.JsonSave(progress))
