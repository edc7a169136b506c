"""Recipe A/B: jaxbert against the PyTorch reference loop (`torch_reference.py`) on one recipe, seed for seed.

For every seed both arms start from the same weights (the encoder of `model.checkpoint`, the heads jaxbert
initializes with that seed) and see the same batches in the same order (jaxbert's plan for the seed, padded to
its length buckets); they differ in their dropout masks and in the framework. jaxbert trains through
`train_and_evaluate` (`<out>/jax/seed<k>/`, a normal run folder); the PyTorch arm through
`torch_reference.train_step` with the course's AdamW at jaxbert's learning-rate schedule, in train mode, and then
predicts the dev split in eval mode (`<out>/torch/seed<k>/results.json`). Both are scored by `jaxbert.metrics`.
`<out>/table.md` gives each arm's mean ± sample std over the seeds and the mean ± sample std of the per-seed
difference (jaxbert − PyTorch).

    python benchmarks/parity_ab.py                                   # the recipe below, seeds 0,1,2
    python benchmarks/parity_ab.py --seeds 0 --train.max_steps=20    # a smoke run
    python benchmarks/parity_ab.py --report-only                     # the table from the runs that exist

The recipe is `configs/default.yaml` ([CLS] features, Quora cross-encoded, STS as the cosine of bi-encoded
sentences, lr 2e-5, round-robin) on all-MiniLM-L6-v2 and the course's files, 200 steps of 3 × 16 examples in
length-grouped batches, one dev evaluation at the end; `--key=value` options change it for both arms.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # a script in benchmarks/ imports the library from the repository root

from jaxbert.config import Config, ConfigError, load_config, parse_overrides  # noqa: E402

RECIPE = {"model.checkpoint": "checkpoints/all-minilm-l6-v2", "data.data_dir": "../shared/data/cs224n",
          "train.batch_size": 16, "train.max_steps": 200, "train.group_by_length": 16}
ARMS = ("jax", "torch")
COLUMNS = (("sst", "accuracy", "SST acc"), ("para", "accuracy", "Quora acc"), ("sts", "pearson", "STS r"),
           ("overall", None, "overall"))


def torch_arm(config: Config, out: Path) -> dict[str, Any]:
    """The PyTorch reference trained on jaxbert's plan from jaxbert's initial params; writes and returns its
    results."""
    import torch
    import transformers

    import torch_reference
    from jaxbert import build
    from jaxbert import data as data_lib
    from jaxbert.convert import export_hf
    from jaxbert.metrics import summarize, task_metric
    from jaxbert.optim import learning_rate_schedule
    from jaxbert.tokenization import BertTokenizer
    from jaxbert.train_step import seed_slice, updates_per_step
    from jaxbert.training import run_plans, step_batches, to_predictions

    start, t, h = time.time(), config.train, config.heads
    torch.manual_seed(t.seed)
    encoder = build.load_encoder(config, log=lambda _: None)
    params = seed_slice(build.initial_params(build.model(config, encoder.config), encoder.params, [t.seed]), 0)
    data = data_lib.load_task_data(config, BertTokenizer(encoder.vocab), ("train", "dev"), log=lambda _: None)
    train = {task: splits["train"] for task, splits in data.items()}
    plan = [step for epoch in run_plans(config, train, t.seed) for step in epoch]
    # The torch encoder reads jaxbert's own starting encoder, whatever format the checkpoint is in.
    folder = export_hf(out / "initial_encoder", encoder.config, params["bert"], encoder.vocab)
    model = torch_reference.Multitask(transformers.BertModel.from_pretrained(folder), sst_pooling=h.sst_pooling,
                                      pair_pooling=h.pair_pooling, para_encoding=h.para_encoding,
                                      sts_encoding=h.sts_encoding, sts_head=h.sts_head, dropout=h.dropout)
    with torch.no_grad():
        for task, head in model.heads.items():
            head.weight.copy_(torch.tensor(np.asarray(params[task]["kernel"]).T))
            head.bias.copy_(torch.tensor(np.asarray(params[task]["bias"])))
    optimizer = torch_reference.course_adamw(model, t.lr, t.weight_decay, t.eps)
    updates = sum(updates_per_step(t, len(step)) for step in plan)
    rate = learning_rate_schedule(t.lr, max(updates, 1), t.warmup_ratio, t.schedule)
    model.train()
    for k, indices in enumerate(plan):
        for group in optimizer.param_groups:
            group["lr"] = float(rate(k)) if callable(rate) else rate
        torch_reference.train_step(model, optimizer, step_batches(train, indices, config.data.buckets),
                                   accumulation=t.accumulation_steps)
    model.eval()
    metrics = {}
    with torch.no_grad():
        for task in config.tasks:
            dev, outputs = data[task]["dev"], []
            for begin in range(0, len(dev), t.eval_batch_size):
                rows = np.arange(begin, min(begin + t.eval_batch_size, len(dev)))
                batch = data_lib.make_batch(dev, rows, data_lib.batch_length(dev, rows, config.data.buckets))
                inputs = {k: torch.as_tensor(v).long() for k, v in batch.items() if k != "labels"}
                outputs.append(model.output(task, inputs).float().numpy())
            predictions = to_predictions(dev.task, np.concatenate(outputs))
            metrics[task] = task_metric(dev.task, predictions, dev.labels)
    results = {"arm": "torch", "seed": t.seed, "steps": len(plan), "metrics": {"dev": summarize(metrics)},
               "wall_time_sec": time.time() - start}
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    return results


def seed_config(base: dict[str, Any], seed: int, out: Path) -> Config:
    return load_config(ROOT / "configs" / "default.yaml", {**base, "train.seed": seed, "out": str(out)})


def run(overrides: dict[str, Any], seeds: list[int], out: Path) -> None:
    from jaxbert.training import train_and_evaluate

    for seed in seeds:
        for arm in ARMS:
            folder = out / arm / f"seed{seed}"
            if (folder / "results.json").is_file():
                print(f"{arm} seed {seed}: complete, skipped")
                continue
            folder.mkdir(parents=True, exist_ok=True)
            config = seed_config(overrides, seed, folder)
            print(f"{arm} seed {seed} → {folder}", flush=True)
            if arm == "jax":
                train_and_evaluate(config, log=lambda line, s=seed: print(f"[jax seed {s}] {line}", flush=True))
            else:
                results = torch_arm(config, folder)
                print(f"[torch seed {seed}] dev {json.dumps(results['metrics']['dev'])}", flush=True)


def dev_value(results: dict[str, Any], task: str, metric: str | None) -> float:
    dev = results["metrics"]["dev"]
    return float(dev[task] if metric is None else dev[task][metric])


def mean_std(values: list[float]) -> str:
    mean = float(np.mean(values))
    return f"{mean:.3f} ± {float(np.std(values, ddof=1)):.3f}" if len(values) > 1 else f"{mean:.3f}"


def table(out: Path, commit: str) -> str:
    """Markdown: one line per arm and one for the per-seed difference, over the seeds both arms completed."""
    results = {arm: {int(p.parent.name.removeprefix("seed")): json.loads(p.read_text())
                     for p in sorted((out / arm).glob("seed*/results.json"))} for arm in ARMS}
    seeds = sorted(set(results["jax"]) & set(results["torch"]))
    if not seeds:
        return "no seed has results from both arms yet\n"
    values = {arm: {label: [dev_value(results[arm][s], task, metric) for s in seeds]
                    for task, metric, label in COLUMNS} for arm in ARMS}
    labels = [label for _, _, label in COLUMNS]
    lines = [f"| arm | n | {' | '.join(labels)} | wall time (s) |", f"| --- | --: |{' --: |' * (len(labels) + 1)}"]
    for arm, name in (("jax", "jaxbert"), ("torch", "PyTorch reference")):
        wall = [results[arm][s]["wall_time_sec"] for s in seeds]
        lines.append(f"| {name} | {len(seeds)} | {' | '.join(mean_std(values[arm][l]) for l in labels)} | "
                     f"{np.mean(wall):.0f} |")
    differences = [mean_std([a - b for a, b in zip(values["jax"][l], values["torch"][l])]) for l in labels]
    lines.append(f"| jaxbert − PyTorch, per seed | {len(seeds)} | {' | '.join(differences)} | |")
    return (f"Dev metrics after {results['jax'][seeds[0]]['steps']} steps, mean ± sample std over seeds "
            f"{', '.join(map(str, seeds))}; commit {commit}.\n\n" + "\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default 0,1,2)")
    parser.add_argument("--out", default="results/parity_ab", help="results folder (default results/parity_ab)")
    parser.add_argument("--report-only", action="store_true", help="write the table from the runs that exist")
    args, rest = parser.parse_known_args(argv)
    from jaxbert.run_folder import code_commit

    out = Path(args.out)
    try:
        overrides = {**RECIPE, **parse_overrides(rest)}
        seeds = [int(s) for s in args.seeds.split(",")]
        seed_config(overrides, seeds[0], out)  # a bad key or value stops here, before anything trains
    except (ConfigError, ValueError) as e:
        sys.exit(f"parity_ab.py: error: {e}")
    if not args.report_only:
        run(overrides, seeds, out)
    out.mkdir(parents=True, exist_ok=True)
    text = table(out, code_commit())
    (out / "table.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
