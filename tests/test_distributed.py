"""Several processes on JAX's own runtime: `train.py` as two processes on localhost (CPU, gloo collectives) trains
the run one process with two local devices trains, and only process 0 writes the run folder and the log."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from conftest import ARGS, restore, workspace  # noqa: F401 (fixture)
from jaxbert.config import ConfigError, load_config, parse_overrides

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(workspace, out, *extra, devices=1):
    bert, data, root = workspace
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
    argv = [sys.executable, str(ROOT / "train.py"), f"--checkpoint={bert}", f"--data-dir={data}", f"--out={out}",
            f"--data.cache_dir={root / 'cache'}", *ARGS[1:], "--epochs=1", *extra]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env)


def finish(process):
    try:
        stdout, stderr = process.communicate(timeout=400)
    except subprocess.TimeoutExpired:
        process.kill()
        raise
    assert process.returncode == 0, stderr[-3000:]
    return stdout


def test_two_processes_train_the_run_of_two_local_devices(workspace, tmp_path):
    port = free_port()
    joined = [launch(workspace, tmp_path / "two", "--distributed.coordinator_address=127.0.0.1:" + str(port),
                     "--distributed.num_processes=2", f"--distributed.process_id={k}") for k in range(2)]
    single = launch(workspace, tmp_path / "one", devices=2)
    logs = [finish(p) for p in joined]
    finish(single)
    assert "devices: 2 × cpu" in logs[0]
    assert [line for line in logs[1].splitlines() if not line.startswith("[Gloo]")] == []  # one log: process 0's
    one, two = (json.loads((tmp_path / name / "results.json").read_text()) for name in ("one", "two"))
    assert two["steps"] == one["steps"] == 5
    for task in ("sst", "para"):
        assert two["metrics"]["dev"][task] == one["metrics"]["dev"][task]
    assert two["metrics"]["dev"]["sts"]["pearson"] == pytest.approx(one["metrics"]["dev"]["sts"]["pearson"], abs=1e-6)
    (a, _), (b, _) = restore(tmp_path / "one"), restore(tmp_path / "two")
    worst = max(float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
                for x, y in zip(jax.tree.leaves(a["params"]), jax.tree.leaves(b["params"]), strict=True))
    print(f"two processes vs one with two devices: largest parameter difference {worst:.2e}")
    assert worst < 1e-6
    assert (tmp_path / "two" / "predictions" / "sst-dev-output.csv").read_text() == (
        tmp_path / "one" / "predictions" / "sst-dev-output.csv").read_text()


@pytest.mark.parametrize("argv, message", [
    (["--distributed.auto", "--distributed.num_processes=2"], "distributed.auto finds the processes itself"),
    (["--distributed.coordinator_address=h:1"], "go together: give all three"),
    (["--distributed.coordinator_address=h:1", "--distributed.num_processes=2", "--distributed.process_id=2"],
     "distributed.process_id must be in 0..num_processes-1, got 2 of 2"),
])
def test_distributed_settings_are_checked(argv, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, parse_overrides(argv))
