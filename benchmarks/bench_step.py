"""Step-time benchmark: the jitted multitask train step against the same step in PyTorch.

Rows (`--rows`, comma-separated; each runs in a fresh process so its compile time and peak memory are its own):

  jax            the train step as `jaxbert.training` builds it, through `jaxbert.build` from the default `Config`:
                 random-init `MultitaskBert` (sst, para cross-encoded, sts bi-encoded with the scaled cosine), the
                 trainer's optimizer, jitted over the `data` mesh, on a one-seed state.
  jax-<surgery>  the same step with `--train.surgery=<surgery>`, e.g. `jax-pcgrad`.
  jax-smart      the plain step with SMART as `--smart` turns it on (`config.smart` defaults).
  jax-vmap<N>    N seeds in one program, as `--seeds N --vmap-seeds` trains them: the plain step vmapped over a
                 state stacked over N seeds (each its own init and dropout key), all on the same batches. Its
                 examples/s count every seed's examples, so against the `jax` row it is the throughput of N
                 seeds in one program over N runs one after another.
  jax-sweep<N>   N learning rates in one program, as `sweep: {train.lr: [...]}` trains them: the plain step
                 vmapped over N members of one seed, each with its own traced learning rate (the config's lr
                 times 1 … N); against the `jax` row, the throughput of the sweep over its N runs one after another.
  torch          the same work in PyTorch: `torch_reference.Multitask` (transformers' `BertModel`, SDPA attention,
                 the same three heads and losses), `torch.optim.AdamW` (fused on GPU), bf16 autocast when `--dtype bfloat16`.
  torch-compile  the `torch` row with the model and losses under `torch.compile`.
  input          the input pipeline as the trainer runs it (`samplers.epoch_plan`, then `training.step_batches`
                 and `shard_batch` in the `prefetch` thread) on synthetic encoded data of realistic lengths, in
                 batches/s on the device, against the plain step rate.

Each step is one batch of `--batch` examples per task at `--seq` tokens (the sts batch runs 2 × batch
sequences). Timing: `--warmup` untimed calls (the first one, compile included, is the compile time), then
`--steps` timed calls, each synchronized; median and interquartile range. `--accumulation`, `--remat` and
`--attention` set the JAX step's micro-batches, layer rematerialization and attention kernel;
`--attention-dropout` (both frameworks) set to 0 lets the training step use the fused attention kernel.

    python benchmarks/bench_step.py                                   # defaults for the backend found
    python benchmarks/bench_step.py --model bert-base --batch 32 --seq 128 --rows jax,jax-pcgrad,torch
    python benchmarks/bench_step.py --rows jax,jax-vmap2,jax-vmap4              # seeds in one program
    python benchmarks/bench_step.py --rows jax,jax-sweep2,jax-sweep4            # learning rates in one program
    python benchmarks/bench_step.py --rows jax,torch --attention-dropout 0 --attention cudnn
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib.metadata
import json
import os
import platform
import re
import resource
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any, Callable

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # a script in benchmarks/ imports the library from the repository root
sys.path.insert(0, str(ROOT / "benchmarks"))  # and the PyTorch reference beside it, when imported from elsewhere

from jaxbert import data as data_lib  # noqa: E402
from jaxbert.choices import ATTENTION_KERNELS  # noqa: E402
from jaxbert.config import Config, load_config  # noqa: E402
from jaxbert.modeling import BertConfig  # noqa: E402
from jaxbert.tasks import TASKS as REGISTRY  # noqa: E402

TASKS = ("sst", "para", "sts")
# The trainer's default heads ([CLS] features, Quora cross-encoded, STS the cosine of bi-encoded sentences), which
# the PyTorch reference model mirrors.
HEADS = Config().heads
MODELS = {
    "tiny": BertConfig(vocab_size=1000, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                       intermediate_size=64),
    "minilm": BertConfig(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536),
    "bert-base": BertConfig(),
}
# Token lengths as log-normal (median, sigma) per sequence, and train-set sizes, fitted to the course's train
# files encoded at max_length 128 (median / 90th percentile: sst 24 / 41, para cross-encoded 27 / 47, sts 13 / 28
# for the longer sentence of a pair, which two draws of (10, 0.5) reproduce).
LENGTHS = {"sst": (24, 0.42), "para": (27, 0.43), "sts": (10, 0.5)}
TRAIN_SIZES = {"sst": 7444, "para": 14212, "sts": 5180}
# Dense bf16 peaks from the vendors' spec sheets; the first name contained in the device kind wins.
BF16_PEAK_FLOPS = (("H200", 989e12), ("H100 PCIe", 756e12), ("H100 NVL", 835e12), ("H100", 989e12),
                   ("A100", 312e12))
PCGRAD_GOAL = 1.15  # PCGrad step time over the plain step's
INPUT_GOAL = 5.0  # input batches/s over plain steps/s
DEFAULT_ROWS = "jax,jax-pcgrad,jax-smart,torch,torch-compile,input"
ACCELERATOR_DEFAULTS = dict(model="bert-base", batch=32, seq=128, steps=20, warmup=3, dtype="bfloat16")
CPU_DEFAULTS = dict(model="minilm", batch=8, seq=64, steps=5, warmup=1, dtype="float32")


@dataclasses.dataclass(frozen=True)
class Settings:
    model: str
    batch: int
    seq: int
    steps: int
    warmup: int
    dtype: str
    accumulation: int
    remat: bool
    attention: str
    attention_dropout: float | None
    rows: tuple[str, ...]
    seed: int
    cpus: int | None
    in_process: bool
    out: str | None


# ----------------------------------------------------------------------------- data


def synthetic_split(task: str, rows: int, max_length: int, vocab_size: int,
                    rng: np.random.Generator) -> data_lib.Encoded:
    """A train split as `data.encode_split` would produce it, with random tokens of realistic lengths."""
    median, sigma = LENGTHS[task]
    positions = np.arange(max_length)

    def sequences(two_segments: bool) -> tuple[dict[str, np.ndarray], np.ndarray]:
        lengths = np.clip(np.round(median * np.exp(sigma * rng.standard_normal(rows))), 3, max_length).astype(np.int32)
        mask = (positions < lengths[:, None]).astype(np.int32)
        ids = rng.integers(5, vocab_size, (rows, max_length), dtype=np.int32) * mask  # ids below 5 are special
        types = (positions >= lengths[:, None] // 2).astype(np.int32) * mask if two_segments else np.zeros_like(mask)
        return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}, lengths

    spec = REGISTRY[task]
    encoding = HEADS.encoding(spec)
    inputs, lengths = sequences(two_segments=encoding == "cross")
    if encoding == "bi":
        second, second_lengths = sequences(two_segments=False)
        inputs.update({k + "_b": v for k, v in second.items()})
        lengths = np.maximum(lengths, second_lengths)
    lo, hi = spec.label_range
    labels = (rng.uniform(lo, hi, rows).astype(np.float32) if spec.kind == "regression"
              else rng.integers(lo, hi + 1, rows).astype(np.int32))
    return data_lib.Encoded(spec, "train", np.arange(rows).astype(str), inputs, lengths, labels, num_truncated=0)


def model_config(settings: Settings) -> BertConfig:
    """The `--model` architecture with `--attention-dropout` applied."""
    config = MODELS[settings.model]
    if settings.attention_dropout is None:
        return config
    return dataclasses.replace(config, attention_probs_dropout_prob=settings.attention_dropout)


def synthetic_train(settings: Settings) -> dict[str, data_lib.Encoded]:
    rng = np.random.default_rng(settings.seed)
    return {task: synthetic_split(task, TRAIN_SIZES[task], settings.seq, MODELS[settings.model].vocab_size, rng)
            for task in TASKS}


def step_inputs(settings: Settings) -> dict[str, dict[str, np.ndarray]]:
    """One step's host batches: the first `batch` examples of every task at the full `seq` width."""
    train = synthetic_train(settings)
    return {task: data_lib.make_batch(e, np.arange(settings.batch), settings.seq) for task, e in train.items()}


# ----------------------------------------------------------------------------- work and timing


def sequences_per_step(batch: int) -> int:
    return sum(2 * batch if HEADS.encoding(REGISTRY[task]) == "bi" else batch for task in TASKS)


def model_flops(config: BertConfig, batch: int, seq: int) -> float:
    """Training FLOPs of one step: 6·N·tokens for the encoder's matmul weights N, plus attention's
    q·kᵀ and p·v (2 · 2·seq·hidden per token and layer forward, ×3 with the backward pass).

    Embedding lookups, the pooler and the heads are left out: together under 0.1% at bert-base size.
    """
    h, layers = config.hidden_size, config.num_hidden_layers
    matmul_weights = layers * (4 * h * h + 2 * h * config.intermediate_size)
    tokens = sequences_per_step(batch) * seq
    return tokens * (6 * matmul_weights + 12 * layers * seq * h)


def measure(step: Callable[[], Any], sync: Callable[[Any], Any], warmup: int, steps: int) -> tuple[float, list[float]]:
    """Seconds of the first call (compilation and one step) and of each of the `steps` calls after the warm-up."""
    times = []
    for _ in range(warmup + steps):
        start = time.perf_counter()
        sync(step())
        times.append(time.perf_counter() - start)
    return times[0], times[warmup:]


def timing_fields(settings: Settings, compile_s: float, times: list[float], seeds: int = 1) -> dict[str, Any]:
    """Timing statistics; a step that trains `seeds` models counts each one's examples and FLOPs."""
    q25, median, q75 = np.percentile(times, [25, 50, 75])
    return {"compile_s": compile_s, "step_ms": [1e3 * t for t in times], "step_ms_median": 1e3 * median,
            "step_ms_iqr": 1e3 * (q75 - q25), "examples_per_s": seeds * len(TASKS) * settings.batch / median,
            "tflops": seeds * model_flops(MODELS[settings.model], settings.batch, settings.seq) / median / 1e12}


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


# ----------------------------------------------------------------------------- JAX rows


def bench_config(settings: Settings, surgery: str = "none", smart: bool = False) -> Config:
    """The trainer's default config with the benchmark's settings (and `surgery`, SMART when `smart`)."""
    return load_config(None, {"train.surgery": surgery, "smart.enabled": smart, "model.dtype": settings.dtype,
                              "train.accumulation_steps": settings.accumulation, "train.batch_size": settings.batch,
                              "model.attention": settings.attention, "model.remat": settings.remat})


def jax_row(settings: Settings, surgery: str, smart: bool, seeds: int | None = None,
            learning_rates: int | None = None) -> dict[str, Any]:
    """The step as `jaxbert.training` builds it (through `jaxbert.build`), from the default `Config` with
    `surgery` (and SMART when `smart`), on a random-init model and one fixed set of batches. With `seeds`, the step
    of a vmapped run of that many seeds (`--seeds N --vmap-seeds`), the first of which is the one-seed row's
    model; with `learning_rates`, the step of a sweep of that many learning rates (the config's times 1 … N) on
    the one-seed row's model."""
    import jax

    from jaxbert import build
    from jaxbert.train_step import data_mesh, replicate, shard_batch
    from jaxbert.training import check_devices

    config, mesh = bench_config(settings, surgery, smart), data_mesh()
    check_devices(config, mesh.devices.size)
    model = build.model(config, model_config(settings))
    bert_params = jax.jit(lambda key: build.random_params(model, key)["bert"])(jax.random.key(settings.seed))
    seed_list = list(range(settings.seed, settings.seed + (seeds or 1))) + [settings.seed] * ((learning_rates or 1) - 1)
    params = build.initial_params(model, bert_params, seed_list)
    updates = settings.warmup + settings.steps
    tx = build.optimizer(config, params, updates)
    state = replicate(build.train_state(params, tx, config), mesh)
    num_params = sum(x.size for x in jax.tree.leaves(state.params)) // len(seed_list)
    sweep = {"train.lr": config.train.lr * np.arange(1, learning_rates + 1, dtype=np.float32)} if learning_rates else {}
    train_step = build.train_step(model, tx, config, seed_list, mesh, sweep,
                                  partial(build.optimizer, config, params, updates) if learning_rates else None)
    batches = shard_batch(step_inputs(settings), mesh)  # resident: the step alone is timed, not the transfer

    metrics = None

    def step():
        nonlocal state, metrics
        state, metrics = train_step(state, batches)
        return state, metrics

    compile_s, times = measure(step, jax.block_until_ready, settings.warmup, settings.steps)
    device = jax.devices()[0]
    stats = device.memory_stats() or {}
    peak, source = ((stats["peak_bytes_in_use"], "device") if "peak_bytes_in_use" in stats
                    else (peak_rss_bytes(), "process RSS"))
    loss = np.asarray(metrics["loss"]).tolist()  # one per member
    stacked = seeds or learning_rates
    return {"framework": "jax", "platform": device.platform, "device": device.device_kind,
            "devices": mesh.devices.size, "params": int(num_params), **({"seeds": seeds} if seeds else {}),
            **({"learning_rates": sweep["train.lr"].tolist()} if learning_rates else {}),
            "loss": loss if stacked else loss[0], "peak_memory_bytes": int(peak), "memory_source": source,
            **timing_fields(settings, compile_s, times, stacked or 1)}


# ----------------------------------------------------------------------------- PyTorch rows


def torch_row(settings: Settings, compiled: bool) -> dict[str, Any]:
    """The same work in PyTorch: `torch_reference.Multitask` (transformers' `BertModel` with SDPA attention, the
    same three heads and losses), `torch.optim.AdamW` (fused on GPU), bf16 autocast with `--dtype bfloat16`."""
    import torch
    import transformers

    import torch_reference

    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    torch.manual_seed(settings.seed)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    bert_config = transformers.BertConfig(**dataclasses.asdict(model_config(settings)))
    bert_config._attn_implementation = "sdpa"
    module = torch_reference.Multitask(transformers.BertModel(bert_config), dropout=HEADS.dropout).to(device).train()
    t = Config().train
    optimizer = torch.optim.AdamW(module.parameters(), lr=t.lr, eps=t.eps, weight_decay=t.weight_decay, fused=cuda)
    losses_of = lambda b: sum(module.loss(task, b[task]) for task in TASKS)  # noqa: E731
    forward = torch.compile(losses_of) if compiled else losses_of
    batches = {task: {k: torch.as_tensor(v, device=device) for k, v in batch.items()}
               for task, batch in step_inputs(settings).items()}
    autocast = dict(device_type=device.type, dtype=torch.bfloat16, enabled=settings.dtype == "bfloat16")

    def step():
        with torch.autocast(**autocast):
            loss = forward(batches)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    losses = []
    sync = (lambda loss: (torch.cuda.synchronize(), losses.append(loss))) if cuda else losses.append
    compile_s, times = measure(step, sync, settings.warmup, settings.steps)
    peak, source = (torch.cuda.max_memory_allocated(), "device") if cuda else (peak_rss_bytes(), "process RSS")
    return {"framework": "torch", "platform": device.type,
            "device": torch.cuda.get_device_name() if cuda else platform.processor() or "cpu",
            "attention": module.bert.config._attn_implementation, "optimizer": "AdamW fused" if cuda else "AdamW",
            "threads": torch.get_num_threads(), "params": sum(p.numel() for p in module.parameters()),
            "loss": losses[-1].item(), "peak_memory_bytes": int(peak), "memory_source": source,
            **timing_fields(settings, compile_s, times)}


# ----------------------------------------------------------------------------- input row


def input_row(settings: Settings, repeats: int = 3) -> dict[str, Any]:
    """Batches/s of a whole epoch fed as the trainer feeds it: the plan, then `step_batches` and `shard_batch` in
    the `prefetch` thread, each batch waited for on the device."""
    import jax

    from jaxbert.prefetch import prefetch
    from jaxbert.samplers import epoch_plan
    from jaxbert.train_step import data_mesh, shard_batch
    from jaxbert.training import step_batches

    train = synthetic_train(settings)
    t = Config().train
    buckets = sorted({b for b in Config().data.buckets if b < settings.seq} | {settings.seq})
    mesh = data_mesh()
    epoch_seconds, steps = [], 0
    for _ in range(repeats):
        start = time.perf_counter()
        plan = epoch_plan(t.sampler, {task: len(e) for task, e in train.items()}, settings.batch, epoch=1,
                          num_epochs=1, seed=settings.seed, epoch_length=t.epoch_length,
                          lengths={task: e.lengths for task, e in train.items()}, group_batches=t.group_by_length)
        for batches in prefetch(shard_batch(step_batches(train, step, buckets), mesh) for step in plan):
            jax.block_until_ready(batches)
        epoch_seconds.append(time.perf_counter() - start)
        steps = len(plan)
    median = float(np.median(epoch_seconds))
    return {"framework": "numpy", "platform": "host", "device": platform.processor() or "cpu",
            "sampler": t.sampler, "buckets": buckets, "steps_per_epoch": steps, "epoch_s": epoch_seconds,
            "batches_per_s": steps / median, "ms_per_batch": 1e3 * median / steps,
            "peak_memory_bytes": peak_rss_bytes(), "memory_source": "process RSS"}


# ----------------------------------------------------------------------------- rows and processes


def row_names() -> tuple[str, ...]:
    """The rows but `jax-vmap<N>`."""
    from jaxbert.choices import SURGERIES

    return ("jax", *(f"jax-{s}" for s in SURGERIES if s != "none"), "jax-smart", "torch", "torch-compile", "input")


def vmap_seeds(name: str) -> int | None:
    """N for a `jax-vmap<N>` row, else None."""
    match = re.fullmatch(r"jax-vmap([1-9][0-9]*)", name)
    return int(match.group(1)) if match else None


def sweep_size(name: str) -> int | None:
    """N for a `jax-sweep<N>` row, else None."""
    match = re.fullmatch(r"jax-sweep([1-9][0-9]*)", name)
    return int(match.group(1)) if match else None


def members_in_one_program(name: str) -> int | None:
    """The N of a `jax-vmap<N>` or `jax-sweep<N>` row."""
    return vmap_seeds(name) or sweep_size(name)


def run_row(name: str, settings: Settings) -> dict[str, Any]:
    """One row's measurements, or the error that stopped it."""
    try:
        if vmap_seeds(name):
            result = jax_row(settings, "none", smart=False, seeds=vmap_seeds(name))
        elif sweep_size(name):
            result = jax_row(settings, "none", smart=False, learning_rates=sweep_size(name))
        elif name.startswith("jax"):
            surgery = name.removeprefix("jax-") if name not in ("jax", "jax-smart") else "none"
            result = jax_row(settings, surgery, smart=name == "jax-smart")
        elif name.startswith("torch"):
            result = torch_row(settings, compiled=name == "torch-compile")
        else:
            result = input_row(settings)
    except Exception as e:  # noqa: BLE001 — one failing row (OOM, a compiler error) must not lose the others
        result = {"error": f"{type(e).__name__}: {e}"}
    return {"row": name, **result}


def run_isolated(name: str, settings: Settings) -> dict[str, Any]:
    """`run_row` in a fresh interpreter, so compile caches, allocators and peak memory start clean."""
    with tempfile.TemporaryDirectory() as folder:
        result = Path(folder) / "row.json"
        command = [sys.executable, __file__, "--model", settings.model, "--batch", str(settings.batch),
                   "--seq", str(settings.seq), "--steps", str(settings.steps), "--warmup", str(settings.warmup),
                   "--dtype", settings.dtype, "--seed", str(settings.seed),
                   "--accumulation", str(settings.accumulation), "--attention", settings.attention, *(["--remat"] if settings.remat else []),
                   *([] if settings.attention_dropout is None else
                     ["--attention-dropout", str(settings.attention_dropout)]),
                   "--worker", name, "--worker-out", str(result)]
        process = subprocess.run(command, capture_output=True, text=True)
        if process.returncode or not result.is_file():
            tail = (process.stderr or process.stdout).strip().splitlines()[-3:]
            return {"row": name, "error": f"worker exited with {process.returncode}: {' | '.join(tail)}"}
        return json.loads(result.read_text())


def backend() -> str:
    """JAX's default backend, asked in a child process so this one never claims accelerator memory."""
    probe = subprocess.run([sys.executable, "-c", "import jax; print(jax.default_backend())"],
                           capture_output=True, text=True, check=True)
    return probe.stdout.strip().splitlines()[-1]


def environment(rows: list[dict[str, Any]], backend_name: str) -> dict[str, Any]:
    def version(package):
        try:
            return importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            return None

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), None) if Path("/proc/cpuinfo").is_file() else platform.processor()
    git = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=ROOT, capture_output=True, text=True)
    return {"backend": backend_name,
            "devices": {r["framework"]: r["device"] for r in rows if "device" in r and r["framework"] != "numpy"},
            "cpu": cpu, "cpu_count": os.cpu_count(), "cpus_used": len(os.sched_getaffinity(0)),
            "load_average_at_end": os.getloadavg(),
            "python": platform.python_version(),
            "versions": {p: version(p) for p in ("jax", "jaxlib", "flax", "optax", "numpy", "torch", "transformers")},
            "git": git.stdout.strip() or None, "time_utc": datetime.datetime.now(datetime.timezone.utc).isoformat()}


# ----------------------------------------------------------------------------- report


def bf16_peak(device_kind: str) -> float | None:
    return next((peak for name, peak in BF16_PEAK_FLOPS if name in device_kind), None)


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Adds each timed row's speed relative to eager PyTorch and its MFU; returns the ratios the project tracks."""
    by_name = {r["row"]: r for r in rows if "step_ms_median" in r or "batches_per_s" in r}
    torch_rate = by_name.get("torch", {}).get("examples_per_s")
    for r in by_name.values():
        if "examples_per_s" in r:
            r["vs_torch"] = r["examples_per_s"] / torch_rate if torch_rate else None
            peak = bf16_peak(r["device"]) if r["platform"] in ("gpu", "cuda") else None
            r["mfu"] = r["tflops"] * 1e12 / peak if peak else None
    plain = by_name.get("jax", {}).get("step_ms_median")
    ratios: dict[str, Any] = {}
    if plain:
        for name, r in by_name.items():
            if members_in_one_program(name):  # N members in one step against N plain steps one after another
                ratios[f"{name}_over_sequential_throughput"] = (members_in_one_program(name) * plain
                                                                 / r["step_ms_median"])
            elif name.startswith("jax-"):
                ratios[f"{name}_over_jax_step_time"] = r["step_ms_median"] / plain
        if "input" in by_name:
            ratios["input_batches_over_jax_steps"] = by_name["input"]["batches_per_s"] * plain / 1e3
    for name in ("torch", "torch-compile"):
        if plain and name in by_name:
            ratios[f"jax_over_{name}_examples_per_s"] = by_name[name]["step_ms_median"] / plain
    return ratios


def format_bytes(n: int | None) -> str:
    return "n/a" if n is None else f"{n / 2 ** 30:.2f} GiB"


def table(rows: list[dict[str, Any]]) -> str:
    header = (f"{'row':<14} {'examples/s':>10} {'ms/step':>9} {'IQR ms':>8} {'× torch':>8} {'compile s':>9} "
              f"{'peak memory':>16} {'TFLOP/s':>8} {'MFU':>6}")
    lines = [header, "-" * len(header)]
    for r in rows:
        name = r["row"]
        if "error" in r:
            lines.append(f"{name:<14} error: {r['error']}")
        elif "batches_per_s" in r:
            lines.append(f"{name:<14} {r['batches_per_s']:.0f} batches/s ({r['ms_per_batch']:.2f} ms each: the plan, "
                         f"step_batches and shard_batch over a {r['steps_per_epoch']}-step epoch), "
                         f"peak {format_bytes(r['peak_memory_bytes'])} RSS")
        else:
            ratio = "n/a" if r["vs_torch"] is None else f"{r['vs_torch']:.2f}"
            mfu = "n/a" if r["mfu"] is None else f"{100 * r['mfu']:.1f}%"
            memory = format_bytes(r["peak_memory_bytes"]) + (" RSS" if r["memory_source"] == "process RSS" else "")
            lines.append(f"{name:<14} {r['examples_per_s']:>10.1f} {r['step_ms_median']:>9.1f} "
                         f"{r['step_ms_iqr']:>8.1f} {ratio:>8} {r['compile_s']:>9.1f} {memory:>16} "
                         f"{r['tflops']:>8.3f} {mfu:>6}")
    return "\n".join(lines)


def ratio_lines(ratios: dict[str, Any]) -> list[str]:
    lines = []
    for key, value in ratios.items():
        if key == "jax-pcgrad_over_jax_step_time":
            verdict = "meets" if value <= PCGRAD_GOAL else "misses"
            lines.append(f"PCGrad step / plain step: {value:.3f}× ({verdict} the goal ≤ {PCGRAD_GOAL}×)")
        elif key == "input_batches_over_jax_steps":
            verdict = "meets" if value >= INPUT_GOAL else "misses"
            lines.append(f"input pipeline / plain step rate: {value:.1f}× ({verdict} the goal ≥ {INPUT_GOAL:g}×)")
        elif key.endswith("_over_sequential_throughput"):
            row = key.removesuffix("_over_sequential_throughput")
            n, what = (vmap_seeds(row), "seeds") if vmap_seeds(row) else (sweep_size(row), "learning rates")
            lines.append(f"{n} {what} vmapped in one step / {n} plain steps one after another: {value:.2f}× the "
                         f"throughput")
        elif key.endswith("_over_jax_step_time"):
            lines.append(f"{key.removesuffix('_over_jax_step_time')} step / plain step: {value:.3f}×")
        else:
            lines.append(f"JAX / {key.removeprefix('jax_over_').removesuffix('_examples_per_s')} examples/s: "
                         f"{value:.2f}×")
    return lines


# ----------------------------------------------------------------------------- command line


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=sorted(MODELS))
    parser.add_argument("--batch", type=int, help="examples per task per step")
    parser.add_argument("--seq", type=int, help="tokens per sequence")
    parser.add_argument("--steps", type=int, help="timed steps")
    parser.add_argument("--warmup", type=int, help="untimed steps before them, the compiling one included (>= 1)")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), help="compute dtype (params stay float32)")
    parser.add_argument("--accumulation", type=int, default=1,
                        help="JAX rows: micro-batches per step (train.accumulation_steps); must divide --batch")
    parser.add_argument("--remat", action="store_true", help="JAX rows: rematerialize each encoder layer")
    parser.add_argument("--attention", choices=ATTENTION_KERNELS, default="auto",
                        help="JAX rows: kernel of dropout-free attention (model.attention)")
    parser.add_argument("--attention-dropout", type=float,
                        help="attention-probability dropout of both frameworks (default the model's 0.1); 0 lets "
                             "the training step use the fused kernel")
    parser.add_argument("--rows", default=DEFAULT_ROWS, help=f"comma-separated, default {DEFAULT_ROWS}")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cpus", type=int,
                        help="pin to this many CPUs (default all); on a shared CPU, 1 keeps thread pools from stalling")
    parser.add_argument("--in-process", action="store_true",
                        help="run every row in this process (faster; compile caches and peak memory are shared)")
    parser.add_argument("--out",
                        help="JSON file; default benchmarks/results/<backend>-<model>-b<batch>-s<seq>-<dtype>"
                             "[-acc<n>][-remat][-<attention>][-adrop<p>].json")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--worker-out", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def resolve(args: argparse.Namespace, defaults: dict[str, Any]) -> Settings:
    """Fills the flags left out from `defaults` and checks them."""
    values = {k: getattr(args, k) if getattr(args, k) is not None else v for k, v in defaults.items()}
    rows = tuple(r.strip() for r in args.rows.split(",") if r.strip())
    unknown = [r for r in rows if r not in row_names() and not members_in_one_program(r)]
    if unknown:
        raise ValueError(f"--rows: unknown row(s) {unknown}; choose from {', '.join(row_names())}, jax-vmap<N> "
                         f"(N >= 1 seeds), jax-sweep<N> (N >= 1 learning rates)")
    for name in ("batch", "seq", "steps", "warmup"):
        if values[name] < 1:
            raise ValueError(f"--{name} must be >= 1, got {values[name]}")
    max_positions = MODELS[values["model"]].max_position_embeddings
    if values["seq"] > max_positions:
        raise ValueError(f"--seq {values['seq']} exceeds the {max_positions} positions of --model {values['model']}")
    if args.accumulation < 1 or values["batch"] % args.accumulation:
        raise ValueError(f"--accumulation {args.accumulation} must be a positive divisor of --batch {values['batch']}")
    if args.attention_dropout is not None and not 0 <= args.attention_dropout < 1:
        raise ValueError(f"--attention-dropout must be in [0, 1), got {args.attention_dropout}")
    usable = len(os.sched_getaffinity(0))
    if args.cpus is not None and not 1 <= args.cpus <= usable:
        raise ValueError(f"--cpus must be in [1, {usable}] (the CPUs this process may use), got {args.cpus}")
    return Settings(rows=rows, seed=args.seed, cpus=args.cpus, in_process=args.in_process, out=args.out,
                    accumulation=args.accumulation, remat=args.remat, attention=args.attention,
                    attention_dropout=args.attention_dropout, **values)


def variant(settings: Settings) -> str:
    """The default JSON name's suffix for the options that change the step: `-acc4-remat-cudnn-adrop0.0`."""
    parts = [f"acc{settings.accumulation}" if settings.accumulation > 1 else "", "remat" if settings.remat else "",
             settings.attention if settings.attention != "auto" else "",
             f"adrop{settings.attention_dropout}" if settings.attention_dropout is not None else ""]
    return "".join(f"-{p}" for p in parts if p)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Runs the rows, prints the table and the tracked ratios, writes the JSON report and returns it.

    With `--worker ROW` (how `run_isolated` calls it) runs that one row and writes it to `--worker-out`."""
    args = parse_args(argv)
    if args.worker:  # every setting arrives as a flag, so the defaults passed here are never used
        settings = resolve(argparse.Namespace(**{**vars(args), "rows": args.worker}), CPU_DEFAULTS)
        Path(args.worker_out).write_text(json.dumps(run_row(args.worker, settings)))
        return {}
    backend_name = backend()
    settings = resolve(args, CPU_DEFAULTS if backend_name == "cpu" else ACCELERATOR_DEFAULTS)
    if settings.cpus is not None:  # before any row's thread pool exists; row processes inherit it
        os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:settings.cpus])
    if settings.out is None:
        name = (f"{backend_name}-{settings.model}-b{settings.batch}-s{settings.seq}-{settings.dtype}"
                f"{variant(settings)}.json")
        settings = dataclasses.replace(settings, out=str(ROOT / "benchmarks" / "results" / name))
    print(f"{backend_name}: model {settings.model}, batch {settings.batch} per task, seq {settings.seq}, "
          f"{settings.dtype}{variant(settings)}, {settings.warmup} warm-up + {settings.steps} timed steps", flush=True)
    rows = []
    for name in settings.rows:
        rows.append(run_row(name, settings) if settings.in_process else run_isolated(name, settings))
        r = rows[-1]
        status = r.get("error") or (
            f"{r['step_ms_median']:.1f} ms/step" if "step_ms_median" in r else f"{r['batches_per_s']:.0f} batches/s")
        print(f"  {name}: {status}", flush=True)
    ratios = summarize(rows)
    config = model_config(settings)
    report = {"settings": dataclasses.asdict(settings), "model_config": dataclasses.asdict(config),
              "heads": dataclasses.asdict(HEADS), "sequences_per_step": sequences_per_step(settings.batch),
              "model_flops_per_step": model_flops(config, settings.batch, settings.seq),
              "environment": environment(rows, backend_name), "rows": rows, "ratios": ratios}
    print()
    print(table(rows))
    for line in ratio_lines(ratios):
        print(line)
    if len({r["platform"] == "cpu" for r in rows if r.get("framework") in ("jax", "torch")}) > 1:
        print("note: the JAX and PyTorch rows ran on different devices (is torch a CPU build?): their ratio "
              "compares hardware, not frameworks")
    out = Path(settings.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")
    return report


if __name__ == "__main__":
    main()
