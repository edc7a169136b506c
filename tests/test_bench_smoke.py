"""The step benchmark runs end to end on a tiny model; its FLOP count and argument checks."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_step", ROOT / "benchmarks" / "bench_step.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their defining module up by name
    spec.loader.exec_module(module)
    return module


def test_tiny_run_writes_every_row(tmp_path):
    out = tmp_path / "tiny.json"
    # Unoptimized XLA code generation halves the step's compilation, which is most of what this test waits for.
    env = {**os.environ, "XLA_FLAGS": "--xla_backend_optimization_level=0"}
    subprocess.run([sys.executable, "benchmarks/bench_step.py", "--model", "tiny", "--batch", "2", "--seq", "8",
                    "--steps", "1", "--warmup", "1", "--rows", "jax,jax-vmap2,jax-sweep2,torch,input", "--in-process", "--cpus", "1",
                    "--accumulation", "2", "--remat", "--attention", "xla", "--attention-dropout", "0",
                    "--out", str(out)], cwd=ROOT, env=env, check=True, capture_output=True)
    report = json.loads(out.read_text())
    assert {k: report["settings"][k] for k in ("accumulation", "remat", "attention", "attention_dropout")} == \
        {"accumulation": 2, "remat": True, "attention": "xla", "attention_dropout": 0.0}
    assert report["model_config"]["attention_probs_dropout_prob"] == 0.0
    rows = {r["row"]: r for r in report["rows"]}
    assert list(rows) == ["jax", "jax-vmap2", "jax-sweep2", "torch", "input"]
    assert not [r["error"] for r in rows.values() if "error" in r]
    assert rows["jax"]["params"] == rows["torch"]["params"]  # the same network on both sides
    for name in ("jax", "torch"):
        assert np.isfinite(rows[name]["loss"]) and len(rows[name]["step_ms"]) == 1
        assert rows[name]["examples_per_s"] == pytest.approx(3 * 2 / (rows[name]["step_ms_median"] / 1e3))
    vmapped = rows["jax-vmap2"]
    assert vmapped["seeds"] == 2 and vmapped["params"] == rows["jax"]["params"] and len(vmapped["step_ms"]) == 1
    # Its first seed is the `jax` row's model with the `jax` row's keys, after the same two steps.
    assert vmapped["loss"][0] == pytest.approx(rows["jax"]["loss"], rel=1e-5)
    assert vmapped["loss"][1] != pytest.approx(vmapped["loss"][0], rel=1e-3)
    assert vmapped["examples_per_s"] == pytest.approx(2 * 3 * 2 / (vmapped["step_ms_median"] / 1e3))
    # A sweep's first member is the `jax` row's run at its learning rate, the second at twice that.
    swept = rows["jax-sweep2"]
    assert swept["learning_rates"] == pytest.approx([2e-5, 4e-5]) and "seeds" not in swept
    assert swept["loss"][0] == pytest.approx(rows["jax"]["loss"], rel=1e-5)
    assert swept["loss"][1] != swept["loss"][0]
    assert rows["input"]["steps_per_epoch"] == 5180 // 2  # round-robin epoch = the smallest task (sts)
    assert set(report["ratios"]) == {"input_batches_over_jax_steps", "jax_over_torch_examples_per_s",
                                     "jax-vmap2_over_sequential_throughput", "jax-sweep2_over_sequential_throughput"}
    assert report["ratios"]["jax-vmap2_over_sequential_throughput"] == pytest.approx(
        2 * rows["jax"]["step_ms_median"] / vmapped["step_ms_median"])
    assert report["environment"]["versions"]["jax"] == jax.__version__


def test_summary_ratios_and_mfu(bench):
    rows = [{"row": "jax", "platform": "gpu", "device": "NVIDIA H100 80GB HBM3", "step_ms_median": 40.0,
             "examples_per_s": 2400.0, "tflops": 494.7},
            {"row": "jax-pcgrad", "platform": "gpu", "device": "NVIDIA H100 80GB HBM3", "step_ms_median": 44.0,
             "examples_per_s": 2400 / 1.1, "tflops": 449.7},
            {"row": "torch", "platform": "cuda", "device": "NVIDIA H100 80GB HBM3", "step_ms_median": 60.0,
             "examples_per_s": 1600.0, "tflops": 329.8},
            {"row": "input", "batches_per_s": 500.0},
            {"row": "torch-compile", "error": "RuntimeError: no compiler"}]
    ratios = bench.summarize(rows)
    assert ratios == pytest.approx({"jax-pcgrad_over_jax_step_time": 1.1, "input_batches_over_jax_steps": 20.0,
                                    "jax_over_torch_examples_per_s": 1.5})
    assert rows[0]["vs_torch"] == pytest.approx(1.5) and rows[0]["mfu"] == pytest.approx(494.7 / 989)
    assert any("PCGrad step / plain step: 1.100× (meets" in line for line in bench.ratio_lines(ratios))


def test_vmap_row_ratio_is_seeds_times_plain_over_vmapped_step(bench):
    """4 seeds in a 100 ms step against 4 plain 40 ms steps: 1.6× the throughput; not a step-time ratio."""
    rows = [{"row": "jax", "platform": "cpu", "device": "cpu", "step_ms_median": 40.0, "examples_per_s": 150.0,
             "tflops": 1.0},
            {"row": "jax-vmap4", "platform": "cpu", "device": "cpu", "step_ms_median": 100.0,
             "examples_per_s": 240.0, "tflops": 1.6}]
    ratios = bench.summarize(rows)
    assert ratios == pytest.approx({"jax-vmap4_over_sequential_throughput": 1.6})
    assert bench.ratio_lines(ratios) == ["4 seeds vmapped in one step / 4 plain steps one after another: 1.60× the "
                                         "throughput"]
    sweep = bench.summarize([rows[0], {**rows[1], "row": "jax-sweep4"}])
    assert bench.ratio_lines(sweep) == ["4 learning rates vmapped in one step / 4 plain steps one after another: "
                                        "1.60× the throughput"]
    assert bench.vmap_seeds("jax-vmap12") == 12 and bench.sweep_size("jax-sweep3") == 3
    assert bench.vmap_seeds("jax-vmap") is None and bench.vmap_seeds("jax-vmap0") is None


def test_model_flops_is_six_n_tokens_plus_attention(bench):
    """N counted from the encoder's initialized kernels; attention adds 2 · 2·seq·hidden per token and layer,
    three times over for the backward pass."""
    from jaxbert.heads import MultitaskBert
    from jaxbert.tasks import TASKS

    config, batch, seq = bench.MODELS["tiny"], 3, 16
    model = MultitaskBert(config, tuple(TASKS[task] for task in bench.TASKS), bench.HEADS)
    dummy = {k: np.zeros((1, 4), np.int32) for k in ("input_ids", "attention_mask", "token_type_ids")}
    shapes = jax.eval_shape(lambda key: model.init(key, "sst", dummy), jax.random.key(0))
    encoder = shapes["params"]["bert"]["encoder"]
    n = sum(leaf.size for path, leaf in jax.tree_util.tree_leaves_with_path(encoder) if path[-1].key == "kernel")
    tokens = (batch + batch + 2 * batch) * seq  # sst, para cross-encoded, sts bi-encoded
    attention = 3 * 2 * 2 * seq * config.hidden_size * config.num_hidden_layers * tokens
    assert bench.model_flops(config, batch, seq) == 6 * n * tokens + attention


@pytest.mark.parametrize("argv, message", [
    (["--rows", "jax,jax-typo"], "unknown row"),
    (["--rows", "jax-vmap0"], r"unknown row.*jax-vmap<N> \(N >= 1 seeds\)"),
    (["--model", "tiny", "--seq", "600"], "exceeds the 512 positions"),
    (["--steps", "0"], "--steps must be >= 1"),
    (["--cpus", "0"], "--cpus must be in"),
    (["--batch", "8", "--accumulation", "3"], "--accumulation 3 must be a positive divisor of --batch 8"),
    (["--attention-dropout", "1"], "--attention-dropout must be in"),
])
def test_bad_arguments_name_the_flag(bench, argv, message):
    with pytest.raises(ValueError, match=message):
        bench.resolve(bench.parse_args(argv), bench.CPU_DEFAULTS)


def test_bf16_peak_matches_the_device_kind(bench):
    assert bench.bf16_peak("NVIDIA H100 80GB HBM3") == 989e12
    assert bench.bf16_peak("NVIDIA H200") == 989e12
    assert bench.bf16_peak("NVIDIA H100 PCIe") == 756e12
    assert bench.bf16_peak("cpu") is None


def test_variant_names_the_step_options(bench):
    settings = bench.resolve(bench.parse_args(["--batch", "8"]), bench.CPU_DEFAULTS)
    assert bench.variant(settings) == ""
    settings = bench.resolve(bench.parse_args(["--batch", "8", "--accumulation", "4", "--remat", "--attention",
                                               "cudnn", "--attention-dropout", "0"]), bench.CPU_DEFAULTS)
    assert bench.variant(settings) == "-acc4-remat-cudnn-adrop0.0"
