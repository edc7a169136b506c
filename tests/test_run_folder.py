"""A run folder a user can trust: a rerun or a resume that would change the run stops before touching a file,
`--overwrite` clears only the run's outputs, a finished run says so, and `metrics.jsonl` holds the train rows."""

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import dev_rows, run_config, staged_config, workspace  # noqa: F401 (fixture)
from jaxbert import training
from jaxbert.run_folder import RunFolderError, check_start, clear, flatten, resume_differences
from jaxbert.training import train_and_evaluate

pytestmark = pytest.mark.usefixtures("compilation_cache")
ONE_EPOCH = ("--epochs=1",)


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def finished(workspace):
    """A finished one-epoch run (5 steps) and its log; tests copy it before changing anything."""
    _, _, root = workspace
    logs = []
    results = train_and_evaluate(run_config(workspace, root / "finished", *ONE_EPOCH), log=logs.append)
    return root / "finished", results, logs


def copy_of(finished, tmp_path) -> Path:
    folder = tmp_path / "run"
    shutil.copytree(finished[0], folder)
    return folder


def test_the_log_opens_with_the_settings_and_ends_with_the_outputs(finished):
    folder, _, logs = finished
    assert logs[0].startswith("sst: files in ")  # where each task's data comes from, then the header
    header = next(i for i, line in enumerate(logs) if line.startswith("run: "))
    assert logs[header] == f"run: {folder.absolute()} (a new run)"
    text = "\n".join(logs[header:header + 7])
    for expected in ("model: ", "2 layers, hidden 32, float32", "tasks: sst (40 train, 20 dev, 5 test), para (40 "
                     "train, 20 dev), sts (40 train, 20 dev)", "sampler roundrobin, losses sum, surgery none",
                     "batch 8 per task, lr 0.001 constant", "steps: 5 in 1 epoch(s)", "devices: 1 × cpu; seed(s) 0"):
        assert expected in text, text
    assert logs[-1] == (f"results: {folder / 'results.json'}; predictions: {folder / 'predictions'}/; dev curves: "
                        f"{folder / 'dev_curves.png'}; train and dev metrics per step: {folder / 'metrics.jsonl'} and "
                        f"`tensorboard --logdir {folder}`")


def test_a_new_run_into_a_used_folder_stops_before_touching_a_file(workspace, finished, tmp_path):
    folder = copy_of(finished, tmp_path)
    before = snapshot(folder)
    with pytest.raises(RunFolderError, match=r"holds a run already \(config.yaml, checkpoints, results.json\): "
                                             r"continue it with --resume, train into another folder with --out DIR, "
                                             r"or clear it first with --overwrite"):
        train_and_evaluate(run_config(workspace, folder, *ONE_EPOCH), log=lambda _: None)
    assert snapshot(folder) == before  # metrics.jsonl included: it used to be truncated to 0 bytes


def test_overwrite_clears_the_run_and_keeps_other_files(workspace, finished, tmp_path):
    folder = copy_of(finished, tmp_path)
    (folder / "notes.txt").write_text("mine")
    (folder / "seed7").mkdir()
    (folder / "seed7" / "results.json").write_text("{}")
    logs = []
    results = train_and_evaluate(run_config(workspace, folder, *ONE_EPOCH), log=logs.append, overwrite=True)
    assert any(line.startswith("--overwrite: deleted config.yaml, checkpoints, metrics.jsonl") for line in logs), logs
    assert f"run: {folder.absolute()} (a new run, replacing the previous run there (--overwrite))" in logs
    assert (folder / "notes.txt").read_text() == "mine" and not (folder / "seed7").exists()
    assert results["metrics"] == finished[1]["metrics"]  # the same run again, from a clean folder
    assert len(dev_rows(folder)) == 1


def test_resume_and_overwrite_together_are_refused(workspace, finished, tmp_path):
    with pytest.raises(RunFolderError, match="--resume continues the run in the out folder and --overwrite clears "
                                             "it: pass one"):
        check_start(run_config(workspace, copy_of(finished, tmp_path)), resume=True, overwrite=True)


def test_resume_with_other_settings_is_refused_naming_the_keys(workspace, finished, tmp_path):
    folder = copy_of(finished, tmp_path)
    before = snapshot(folder)
    with pytest.raises(RunFolderError) as error:
        train_and_evaluate(run_config(workspace, folder, *ONE_EPOCH, "--tasks=sst,sts", "--lr=3e-5"),
                           log=lambda _: None, resume=True)
    message = str(error.value)
    assert message.startswith(f"--resume: this command trains another run than {folder / 'config.yaml'} describes (")
    assert "tasks: ['sst', 'para', 'sts'] in the run, ['sst', 'sts'] now" in message
    assert "train.lr: 0.001 in the run, 3e-05 now" in message and "\n" not in message
    assert snapshot(folder) == before


def test_what_a_resume_may_change():
    """Paths, logging and the run's length may differ; anything that shapes the training may not."""
    from jaxbert.config import load_config, parse_overrides

    base = load_config(None, parse_overrides(["--out=a"]))
    allowed = load_config(None, parse_overrides(["--out=b", "--epochs=20", "--max-steps=3", "--checkpoint=x",
                                                 "--data-dir=d", "--train.log_every=1", "--data.cache_dir=c",
                                                 "--train.eval_batch_size=7", "--train.checkpoint_every=2"]))
    assert resume_differences(base, allowed) == []
    refused = load_config(None, parse_overrides(["--batch-size=16", "--heads.task_hidden_layers.sts=1",
                                                 "--dtype=bfloat16", "--seed=3"]))
    assert [key for key, _, _ in resume_differences(base, refused)] == [
        "model.dtype", "heads.task_hidden_layers", "train.batch_size", "train.seed", "heads.task_hidden_layers.sts"]
    assert flatten({"a": {"b": 1, "c": {}}, "s": [{"lr": 1}]}) == {"a.b": 1, "a.c": {}, "s[0].lr": 1}


def test_resuming_a_finished_run_says_it_is_finished(workspace, finished, tmp_path):
    folder = copy_of(finished, tmp_path)
    before = snapshot(folder)
    logs = []
    results = train_and_evaluate(run_config(workspace, folder, *ONE_EPOCH), log=logs.append, resume=True)
    assert logs == [f"{folder} is finished (its results.json is there): nothing to resume. Train longer with a "
                    "larger --epochs or --max-steps and --resume, or train again with --out DIR or --overwrite"]
    assert results == json.loads((folder / "results.json").read_text()) and snapshot(folder) == before


def test_resume_with_more_epochs_trains_on(workspace, finished, tmp_path):
    """A finished run resumed with a longer `train.epochs` continues from its last checkpoint; the saved config
    records the new length and never a `resume` key."""
    folder = copy_of(finished, tmp_path)
    logs = []
    results = train_and_evaluate(run_config(workspace, folder, "--epochs=2"), log=logs.append, resume=True)
    assert any("resumed from step 5" in line for line in logs) and results["steps"] == 10
    saved = yaml.safe_load((folder / "config.yaml").read_text())
    assert "resume" not in saved and saved["train"]["epochs"] == 2
    assert [row["epoch"] for row in dev_rows(folder)] == [1, 2]


def test_a_dry_run_writes_nothing(workspace, tmp_path):
    logs = []
    assert train_and_evaluate(run_config(workspace, tmp_path / "dry"), log=logs.append, dry_run=True) is None
    assert logs[-1] == "--dry-run: nothing trained, nothing written" and not (tmp_path / "dry").exists()
    assert any(line.startswith("steps: 10 in 2 epoch(s)") for line in logs)


def test_a_run_that_cannot_load_its_data_writes_nothing(workspace, tmp_path):
    bert, data, _ = workspace
    partial = tmp_path / "data"
    shutil.copytree(data, partial)
    (partial / "sts-dev.csv").unlink()
    with pytest.raises(FileNotFoundError, match="sts dev file not found"):
        train_and_evaluate(run_config(workspace, tmp_path / "out", f"--data-dir={partial}"), log=lambda _: None)
    assert not (tmp_path / "out").exists()  # so the next attempt is not "a used folder"


def test_max_steps_caps_each_stage(workspace, tmp_path):
    """`train.max_steps` caps each stage: a two-stage run with max_steps 2 trains 4 steps."""
    stages = "stages:\n  - {name: a, tasks: [sst]}\n  - {name: b}\n"
    logs = []
    train_and_evaluate(staged_config(workspace, tmp_path / "staged", stages, "--max-steps=2"), log=logs.append,
                       dry_run=True)
    assert "steps: 4 (a 2, b 2), train.max_steps 2 per stage" in logs


def test_metrics_hold_train_rows_and_tensorboard_shares_the_step_axis(workspace, finished, monkeypatch, tmp_path):
    folder, _, _ = finished
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    train = [row for row in rows if "train" in row]
    assert [row["step"] for row in train] == [1, 2, 3, 4, 5] and "dev" in rows[-1]  # log_every 1, then the epoch
    assert set(train[0]["train"]) >= {"loss", "loss/sst", "loss/para", "loss/sts", "grad_norm", "examples_per_sec"}
    first = train[0]["train"]
    assert first["loss"] == pytest.approx(first["loss/sst"] + first["loss/para"] + first["loss/sts"], rel=1e-6)
    assert all(np.isfinite(row["train"]["grad_norm"]) and row["epoch"] == 1 for row in train)

    scalars = []
    monkeypatch.setattr(training, "_summary_writer", lambda path: type("W", (), {
        "add_scalar": lambda self, tag, value, step: scalars.append((tag, step)), "close": lambda self: None})())
    train_and_evaluate(run_config(workspace, tmp_path / "tb", *ONE_EPOCH), log=lambda _: None)
    assert ("dev/overall", 5) in scalars and ("train/loss", 5) in scalars


def test_the_token_cache_lives_in_the_user_cache_folder(workspace, tmp_path, monkeypatch):
    """With the default `data.cache_dir`, tokenized splits go to $XDG_CACHE_HOME/jaxbert/tokens, keyed by the files'
    contents, and nothing is written beside the data (which may be read-only)."""
    from jaxbert.config import load_config, parse_overrides
    from jaxbert.data import load_task_data, token_cache_dir
    from jaxbert.tokenization import BertTokenizer

    bert, data, _ = workspace
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    config = load_config(None, parse_overrides([f"--data-dir={data}", "--tasks=sst", "--data.max_length=32",
                                                "--data.buckets=32"]))
    assert token_cache_dir(config) == tmp_path / "xdg" / "jaxbert" / "tokens"
    before = sorted(p.name for p in data.iterdir())
    load_task_data(config, BertTokenizer(bert / "vocab.txt"), log=lambda _: None)
    assert sorted(p.name for p in data.iterdir()) == before
    assert len(list((tmp_path / "xdg" / "jaxbert" / "tokens").glob("sst-*.npz"))) == 3  # train, dev, test
    lines = []
    load_task_data(config, BertTokenizer(bert / "vocab.txt"), log=lines.append)
    assert all(line.endswith("(cached)") for line in lines if line.startswith("sst train"))


def test_clear_deletes_only_run_outputs(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "config.yaml").write_text("x")
    (tmp_path / "data.csv").write_text("keep")
    assert clear(tmp_path) == ["config.yaml", "checkpoints"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.csv"]


def write_lock(folder: Path, host: str, pid: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / ".lock").write_text(json.dumps({"host": host, "pid": pid, "since": "2026-01-01 00:00:00"}))


def test_a_folder_a_live_run_holds_is_refused(workspace, tmp_path):
    """A second run on a folder that a live process holds stops at once, naming that process, and writes
    nothing; a holder on another host is never taken to be gone."""
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        for host, pid in ((socket.gethostname(), sleeper.pid), ("elsewhere", 1)):
            folder = tmp_path / host
            write_lock(folder, host, pid)
            with pytest.raises(RunFolderError, match=rf"{folder} is in use by the run of pid {pid} on host {host} "
                                                     r"\(since 2026-01-01 00:00:00\): wait for it to end"):
                train_and_evaluate(run_config(workspace, folder), log=lambda _: None)
            assert sorted(p.name for p in folder.iterdir()) == [".lock"]
    finally:
        sleeper.kill()
        sleeper.wait()


def test_a_lock_whose_process_is_gone_is_taken_over(workspace, tmp_path):
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(ended.stdout)
    folder = tmp_path / "stale"
    write_lock(folder, socket.gethostname(), pid)
    logs = []
    train_and_evaluate(run_config(workspace, folder, *ONE_EPOCH), log=logs.append)
    assert f"{folder}: took over the lock of the run of pid {pid} on host {socket.gethostname()} (since 2026-01-01 " \
           "00:00:00), which is gone" in logs
    assert (folder / "results.json").is_file() and not (folder / ".lock").exists()  # released at the end


def test_the_lock_is_held_while_the_run_writes(workspace, tmp_path, monkeypatch):
    seen = []
    real = training.Recorder.save_latest
    monkeypatch.setattr(training.Recorder, "save_latest", lambda self, *a: seen.append(
        json.loads((tmp_path / "held" / ".lock").read_text())) or real(self, *a))
    train_and_evaluate(run_config(workspace, tmp_path / "held", *ONE_EPOCH), log=lambda _: None)
    assert seen and seen[0]["pid"] == os.getpid() and seen[0]["host"] == socket.gethostname()
    assert not (tmp_path / "held" / ".lock").exists()
