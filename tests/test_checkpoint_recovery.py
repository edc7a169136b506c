"""`--resume` past a broken checkpoint: a latest checkpoint killed mid-save, or with a file deleted, truncated or
garbled, is skipped for the newest intact one, which the run resumes from exactly; with none intact, a one-line
error naming the folder that changes nothing. A broken best checkpoint at the end of a run is a one-line error."""

import hashlib
import os
import shutil

import jax
import numpy as np
import pytest

from conftest import killed_after_checkpoint, restore, run_config, workspace  # noqa: F401 (fixture)
from jaxbert.checkpoint import CheckpointStore
from jaxbert.errors import CheckpointError
from jaxbert.run_folder import RunFolderError
from jaxbert.training import train_and_evaluate

pytestmark = pytest.mark.usefixtures("compilation_cache")

# Checkpoints after steps 2 and 4 of the first 5-step epoch: a run killed after its second one keeps both.
EXTRA = ("--train.checkpoint_every=2",)


def array_files(step_dir):
    return list((step_dir / "state").rglob("ocdbt.process_*/d/*"))


def biggest_array_file(step_dir):
    return max(array_files(step_dir), key=lambda f: f.stat().st_size)


def killed_mid_save(step_dir):
    # What Orbax's atomic rename leaves when the process dies while writing: the step under its temporary
    # name, without the commit marker and with files missing.
    (step_dir / "commit_success.txt").unlink()
    biggest_array_file(step_dir).unlink()
    step_dir.rename(step_dir.with_name(step_dir.name + ".orbax-checkpoint-tmp"))


CORRUPTIONS = {  # how to break a checkpoint's folder, and what the skip names
    "array file deleted": (lambda d: biggest_array_file(d).unlink(), "state: ValueError"),
    "array file truncated": (lambda d: os.truncate(biggest_array_file(d), biggest_array_file(d).stat().st_size // 2),
                             "OUT_OF_RANGE"),
    "progress garbled": (lambda d: (d / "progress" / "metadata").write_text('{"stage": 0, "ep'),
                         "progress: JSONDecodeError"),
    "killed mid-save": (killed_mid_save, "an unfinished save: 4.orbax-checkpoint-tmp"),
}


def quiet(_):
    return None


@pytest.fixture(scope="module")
def cut(workspace):
    """A run killed right after its checkpoint of step 4 (latest/ holds steps 2 and 4), and its state at step 4."""
    _, _, root = workspace
    with pytest.MonkeyPatch.context() as monkeypatch, killed_after_checkpoint(monkeypatch, 2):
        train_and_evaluate(run_config(workspace, root / "cut", *EXTRA), log=quiet)
    state, progress = restore(root / "cut")
    assert (int(state["step"][0]), progress["step_in_epoch"]) == (4, 4)
    return root / "cut", state


@pytest.fixture(scope="module")
def full(workspace):
    """The same run, not interrupted: its folder and results."""
    _, _, root = workspace
    return root / "full", train_and_evaluate(run_config(workspace, root / "full", *EXTRA), log=quiet)


def copy_of(folder, tmp_path):
    return shutil.copytree(folder, tmp_path / folder.name)


def latest(folder):
    return folder / "checkpoints" / "latest"


def files(folder):
    """Every file and folder under `folder`, with a hash of each file's bytes."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(folder.rglob("*"))}


def assert_same_params(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("corruption", list(CORRUPTIONS))
def test_resume_skips_a_broken_latest_checkpoint(workspace, cut, tmp_path, monkeypatch, corruption):
    folder, state_at_4 = cut
    folder = copy_of(folder, tmp_path)
    corrupt, reason = CORRUPTIONS[corruption]
    corrupt(latest(folder) / "4")

    logs = []
    with killed_after_checkpoint(monkeypatch, 1):  # enough to see where it resumed: dies at its own step 4
        train_and_evaluate(run_config(workspace, folder, *EXTRA), log=logs.append, resume=True)
    skips = [line for line in logs if "skipped checkpoint" in line]
    assert len(skips) == 1 and skips[0].startswith("--resume: skipped checkpoint step 4 (") and reason in skips[0], logs
    assert "\n" not in skips[0]
    assert any(line.startswith("resumed from step 2 ") for line in logs), logs
    # The broken checkpoint is gone, the step trained again in its place, to the same state.
    assert sorted(p.name for p in latest(folder).iterdir()) == ["2", "4"]
    state, progress = restore(folder)
    assert progress["step_in_epoch"] == 4
    assert_same_params(state["params"], state_at_4["params"])
    assert_same_params(state["opt_state"], state_at_4["opt_state"])


def test_resumed_past_a_broken_checkpoint_ends_as_an_uninterrupted_run(workspace, cut, full, tmp_path):
    folder = copy_of(cut[0], tmp_path)
    CORRUPTIONS["array file truncated"][0](latest(folder) / "4")
    resumed = train_and_evaluate(run_config(workspace, folder, *EXTRA), log=quiet, resume=True)
    assert resumed["steps"] == full[1]["steps"] == 10 and resumed["metrics"] == full[1]["metrics"]
    (a, _), (b, _) = restore(full[0]), restore(folder)
    assert_same_params(a["params"], b["params"])
    assert (folder / "metrics.jsonl").read_text().count('"dev"') == 2


def test_no_intact_checkpoint_is_a_one_line_error_naming_the_folder(workspace, cut, tmp_path):
    folder = copy_of(cut[0], tmp_path)
    CORRUPTIONS["progress garbled"][0](latest(folder) / "4")
    (latest(folder) / "2" / "state" / "_METADATA").unlink()
    before = files(folder)
    with pytest.raises(RunFolderError) as error:
        train_and_evaluate(run_config(workspace, folder, *EXTRA), log=quiet, resume=True)
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith(f"--resume: no intact checkpoint in {latest(folder)}: step 4 (progress: "
                              "JSONDecodeError"), message
    assert "; step 2 (state: FileNotFoundError: state/_METADATA is missing)" in message
    assert message.endswith("; train again with --overwrite, or into another folder with --out DIR")
    assert files(folder) == before


def test_a_broken_best_checkpoint_is_a_one_line_error_with_a_way_out(workspace, full, tmp_path):
    """The results come from the best checkpoint: a broken one stops the run's end, naming it, and taking the
    results from the latest state instead is the user's choice (deleting `best/`)."""
    folder = copy_of(full[0], tmp_path)
    (folder / "results.json").unlink()  # as if it had died after its last checkpoint
    best = folder / "checkpoints" / "best"
    (step,) = [p for p in best.iterdir()]
    for data_file in array_files(step):  # OCDBT packs arrays into its files in no fixed order: break them all
        os.truncate(data_file, 10)
    with pytest.raises(CheckpointError) as error:
        train_and_evaluate(run_config(workspace, folder, *EXTRA), log=quiet, resume=True)
    message = str(error.value)
    assert "\n" not in message and message.startswith(f"checkpoint {step} does not read (state: ValueError: ")
    assert message.endswith(f"delete {best} and run again with --resume to take them from the latest state "
                            "instead, or train again with --overwrite")

    shutil.rmtree(best)
    results = train_and_evaluate(run_config(workspace, folder, *EXTRA), log=quiet, resume=True)
    assert results["metrics"]["dev"] and (folder / "results.json").is_file()


def test_a_state_of_another_structure_is_not_called_broken(tmp_path):
    """Orbax raises the same errors for damaged files and for a template of another structure: only the first
    is a `CheckpointError`."""
    w = np.arange(1000, dtype=np.float32)  # stored in a data file of its own, not inline in OCDBT's index
    store = CheckpointStore(tmp_path)
    store.save({"step": np.int32(3), "params": {"w": w}}, {"score": 1.0}, best=True)
    store.close()
    store = CheckpointStore(tmp_path, read_only=True)  # as the end of a resumed run finds it, nothing cached
    with pytest.raises(ValueError) as error:
        store.restore({"step": np.int32(0), "other": {"w": w}}, which="best")
    assert not isinstance(error.value, CheckpointError)
    os.truncate(biggest_array_file(tmp_path / "best" / "3"), 100)
    with pytest.raises(CheckpointError, match=r"checkpoint .*best/3 does not read \(state: ValueError: OUT_OF_RANGE"):
        store.restore({"params": {"w": w}}, which="best", partial=True)
    store.close()
