"""A run folder's life: whether a run may start in it, what `--overwrite` clears, what `--resume` may change.

A folder is locked while a run writes it (`.lock`: the host and pid), and used once it holds a run's `config.yaml` or
checkpoints. A new run into a used folder stops before
touching a file; `--overwrite` clears the previous run's outputs first (only the files a run writes: anything
else in the folder stays); `--resume` continues the run only if the command describes the same training, as
`config.yaml` recorded it, up to `RESUME_MAY_DIFFER`. Every check here runs before a run writes anything.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fnmatch
import json
import os
import re
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Any, Callable, Iterator

from jaxbert.checkpoint import STATE_FORMAT, CheckpointStore, Intact
from jaxbert.config import Config, ConfigError, get, load_config, to_dict
from jaxbert.errors import CheckpointError, UserError
from jaxbert.members import members

# What a run writes into its folder (and each `seed<k>/` of a multi-seed run); `--overwrite` clears these.
OUTPUTS = ("config.yaml", "checkpoints", "metrics.jsonl", "tensorboard", "results.json", "predictions",
           "dev_curves.png", "encoder", "commit.txt")
SEED_FOLDER = re.compile(r"seed\d+")
# Keys a resumed run may set otherwise than the run it continues: how long it trains (its schedule is laid out
# over the new length), where files are, how often it logs, checkpoints and evaluates in what batch size, and what
# a non-finite step does, and on how many processes it runs.
# Anything else shapes the training, and a resumed run would not be the run its folder holds.
RESUME_MAY_DIFFER = ("out", "train.epochs", "train.max_steps", "train.log_every", "train.checkpoint_every",
                     "train.eval_batch_size", "train.nonfinite", "train.max_nonfinite", "train.compilation_cache",
                     "model.checkpoint", "data.data_dir", "data.cache_dir", "data.files*", "task_defs.*.files*",
                     "distributed.*")


class RunFolderError(UserError):
    """A run that cannot start in its folder: used by another run, or a resume that would change the run."""


LOCK = ".lock"  # in a run folder while a run writes it: {"host", "pid", "since"}


@dataclasses.dataclass(frozen=True)
class Holder:
    host: str
    pid: int
    since: str

    def __str__(self) -> str:
        return f"pid {self.pid} on host {self.host} (since {self.since})"

    @property
    def gone(self) -> bool:
        """Whether the holding process is known to have ended: on this host, no process has its pid. A holder on
        another host is never known to be gone."""
        if self.host != socket.gethostname():
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:  # another user's live process
            return False
        return False


    @property
    def is_me(self) -> bool:
        return self.host == socket.gethostname() and self.pid == os.getpid()


def lock_holder(folder: Path) -> Holder | None:
    """Who holds `folder`'s lock (None: nobody). A lock file cut short by a crash as it was written holds nothing."""
    try:
        record = json.loads((folder / LOCK).read_text())
        return Holder(str(record["host"]), int(record["pid"]), str(record["since"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def check_unlocked(folder: Path) -> None:
    """Raises unless `folder` is free of another live run's lock."""
    holder = lock_holder(folder)
    if holder is not None and not holder.gone and not holder.is_me:
        raise RunFolderError(f"{folder} is in use by the run of {holder}: wait for it to end, or train into another "
                             f"folder with --out DIR (if that run is gone, delete {folder / LOCK})")


@contextlib.contextmanager
def locked(folder: Path, log: Callable[[str], None]) -> Iterator[None]:
    """Holds `folder`'s lock for the block: another run on the folder stops at once; a lock whose process is gone
    is taken over, and said."""
    folder.mkdir(parents=True, exist_ok=True)
    me = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
    path = folder / LOCK
    staged = folder / f"{LOCK}.{me['pid']}"
    staged.write_text(json.dumps(me))
    for _ in range(2):
        try:
            os.link(staged, path)  # atomic and whole: of two runs starting at once, one creates it, holding its record
            break
        except FileExistsError:
            check_unlocked(folder)
            log(f"{folder}: took over the lock of the run of {lock_holder(folder) or 'unknown'}, which is gone")
            path.unlink(missing_ok=True)
    else:
        staged.unlink()
        raise RunFolderError(f"{folder}: another run took the lock while this one started; try again")
    staged.unlink()
    try:
        yield
    finally:
        path.unlink(missing_ok=True)


@dataclasses.dataclass(frozen=True)
class Start:
    """What `check_start` found: `mode` "new" (nothing there yet, or `--overwrite`), "resume" or "finished"."""

    mode: str
    folder: Path
    used: bool  # the folder holds a previous run (cleared first when `mode` is "new")
    progress: dict[str, Any] | None = None  # "resume": the latest checkpoint's record (None: no checkpoint yet)
    step: int | None = None  # "resume": that checkpoint's step, the one to restore the state of
    skipped: tuple[str, ...] = ()  # "resume": "step 4 (why)" for each newer checkpoint that does not read


def is_used(folder: Path) -> bool:
    """Whether `folder` holds a run: its `config.yaml` or checkpoints, its own or a seed folder's."""
    return any((f / "config.yaml").is_file() or (f / "checkpoints").is_dir()
               for f in [folder, *_seed_folders(folder)])


def check_start(config: Config, resume: bool = False, overwrite: bool = False, check_lock: bool = True) -> Start:
    """Whether the run of `config` may start in `config.out`, checked before anything is written (the lock
    too, unless `check_lock` is False: a process other than the run's writer, or a seed inside a locked run).

    Raises:
      RunFolderError: a new run into a used folder (naming `--resume`, `--out` and `--overwrite`), `--resume`
        and `--overwrite` together, or a resume whose config differs from the saved one in a key that shapes
        the training (naming the keys and both values).
    """
    folder = Path(config.out)
    if check_lock:
        check_unlocked(folder)
    used = is_used(folder)
    if resume and overwrite:
        raise RunFolderError("--resume continues the run in the out folder and --overwrite clears it: pass one")
    if not used or overwrite:
        return Start("new", folder, used)
    if not resume:
        raise RunFolderError(f"{folder} holds a run already ({', '.join(_what_is_there(folder))}): continue it with "
                             "--resume, train into another folder with --out DIR, or clear it first with --overwrite")
    saved_path = folder / "config.yaml"
    if not saved_path.is_file():
        raise RunFolderError(f"--resume: {folder} has checkpoints but no config.yaml to check this command against; "
                             "train into another folder with --out DIR, or clear it with --overwrite")
    try:
        saved = load_config(saved_path)
    except ConfigError as e:
        raise RunFolderError(f"--resume: the run's own config does not load: {e}") from None
    changed = resume_differences(saved, config)
    if changed:
        shown = "; ".join(f"{key}: {old!r} in the run, {new!r} now" for key, old, new in changed[:6])
        raise RunFolderError(f"--resume: this command trains another run than {saved_path} describes ({shown}"
                             f"{'; ...' if len(changed) > 6 else ''}); drop those options to continue the run, or "
                             "train into another folder with --out DIR")
    length = ("train.epochs", "train.max_steps")
    if all((f / "results.json").is_file() for f in result_folders(config)) and all(
            get(saved, key) == get(config, key) for key in length):
        return Start("finished", folder, used)
    found = latest_progress(folder, len(members(config)))
    return Start("resume", folder, used, found.progress, found.step, found.skipped)


def latest_progress(folder: Path, seeds: int) -> Intact:
    """The newest intact latest checkpoint in `folder` (its step and `progress` record, None: none yet; and each
    newer one that does not read, skipped), checked to be resumable by a run of `seeds` seeds. Reads only.

    Raises:
      RunFolderError: there are checkpoints and none reads (naming the folder and why each does not), or the
        checkpoint is of another number of members (seeds, times the points of a sweep).
    """
    where = folder / "checkpoints"
    if not where.is_dir():
        return Intact(None, None)
    store = CheckpointStore(where, read_only=True)
    try:
        found = store.newest_intact()
    except CheckpointError as e:
        raise RunFolderError(f"--resume: {e}; train again with --overwrite, or into another folder with --out DIR"
                             ) from None
    finally:
        store.close()
    progress = found.progress
    if progress is not None and progress.get("format") != STATE_FORMAT:
        raise RunFolderError(f"--resume: the checkpoint in {where} was written by an older jaxbert, whose train state "
                             "had another layout: finish it with that version, or train into another out folder")
    if progress is not None and len(progress["seeds"]) != seeds:
        raise RunFolderError(f"--resume: the checkpoint in {where} holds {len(progress['seeds'])} seed(s), this run "
                             f"trains {seeds} (train.seeds, train.vmap_seeds, sweep): resume with the settings it "
                             "was started with, or train into another out folder")
    return found


def resume_differences(saved: Config, config: Config) -> list[tuple[str, Any, Any]]:
    """`[(key, saved value, new value)]` for every key outside `RESUME_MAY_DIFFER` where the configs differ."""
    old, new = flatten(to_dict(saved)), flatten(to_dict(config))
    return [(key, old.get(key), new.get(key)) for key in dict.fromkeys([*old, *new])
            if old.get(key) != new.get(key) and not any(fnmatch.fnmatchcase(key, p) for p in RESUME_MAY_DIFFER)]


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """`{"train.lr": 2e-5, "stages[0].lr": 1e-3, "heads.task_hidden_layers.sts": 1, ...}`: every leaf by path.
    An empty mapping or list is a leaf, so that one appearing or vanishing is a difference too."""
    if isinstance(tree, dict) and tree:
        return {k: v for name, sub in tree.items() for k, v in flatten(sub, f"{prefix}{name}.").items()}
    if isinstance(tree, list) and tree and all(isinstance(x, dict) for x in tree):
        return {k: v for i, sub in enumerate(tree) for k, v in flatten(sub, f"{prefix[:-1]}[{i}].").items()}
    return {prefix[:-1]: tree}


def result_folders(config: Config) -> list[Path]:
    """The folders holding the run's `results.json`: its own, or each member's (`jaxbert.members`)."""
    return [Path(member.config.out) for member in members(config)]


def saved_results(config: Config) -> dict[str, Any] | dict[int | str, dict[str, Any]]:
    """A finished run's `results.json` (`{member key: ...}` for several members), as `train_and_evaluate`
    returns it."""
    results = {member.key: json.loads((Path(member.config.out) / "results.json").read_text())
               for member in members(config)}
    return results if len(results) > 1 else next(iter(results.values()))


def clear(folder: Path) -> list[str]:
    """Deletes a previous run's outputs in `folder` (its `OUTPUTS` and seed folders'); returns what it deleted."""
    deleted = []
    for f in [folder, *_seed_folders(folder)]:
        for name in OUTPUTS:
            path = f / name
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
            else:
                continue
            deleted.append(str(path.relative_to(folder)))
        for empty in (f, f.parent) if f != folder else ():  # a sweep point's folder goes with its last seed
            if empty != folder and not any(empty.iterdir()):
                empty.rmdir()
    return deleted


def _seed_folders(folder: Path) -> list[Path]:
    """The member folders in `folder`: `seed<k>/`, and a sweep's `<point>/seed<k>/`."""
    if not folder.is_dir():
        return []
    points = [p for p in sorted(folder.iterdir()) if p.is_dir() and "=" in p.name]
    return [*(p for p in sorted(folder.iterdir()) if p.is_dir() and SEED_FOLDER.fullmatch(p.name)),
            *(q for p in points for q in sorted(p.iterdir()) if q.is_dir() and SEED_FOLDER.fullmatch(q.name))]


def _what_is_there(folder: Path) -> list[str]:
    found = [name for name in ("config.yaml", "checkpoints", "results.json") if (folder / name).exists()]
    seeds = [p.name for p in _seed_folders(folder) if is_used(p)]
    return [*found, *([f"{len(seeds)} seed folder(s)"] if seeds else [])]


def code_commit() -> str:
    """`git rev-parse --short HEAD` of the checkout holding this code, `-dirty` when it has uncommitted changes
    or files git neither tracks nor ignores (new code the commit lacks); `unknown` outside a git checkout."""
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
        changes = subprocess.run(["git", "-C", str(root), "status", "--porcelain"],
                                 capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("-dirty" if changes else "")


def record_commit(folder: Path, commit: str) -> None:
    """Appends `commit` to the run's commit.txt unless it is already the last line: one line per code version
    the run was trained with (a resumed run may span two)."""
    path = folder / "commit.txt"
    lines = path.read_text().split() if path.is_file() else []
    if lines[-1:] != [commit]:
        path.write_text("".join(f"{line}\n" for line in [*lines, commit]))
