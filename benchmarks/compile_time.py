"""How much of a short run is compiling: a config's run, as `train.py` trains it, once per `data.step_shapes`
mode, each in a fresh process with the persistent compilation cache off, every XLA compilation counted.

    python benchmarks/compile_time.py --config configs/minilm_cpu.yaml [--modes per_task,step_max]
        [--max-steps 200] [--KEY=VALUE ...]

Prints per mode: the train step's compilations and their seconds, every compilation (evaluation programs
included) and its seconds, the run's wall seconds (loading the encoder and the data, training, the dev
evaluations, the predictions), the examples/s of the last logged steps (the progress line's windowed rate:
what padding costs the step) and the best dev `overall`. `--max-steps` caps the run (200: the CPU proxy's
first epoch); further `--KEY=VALUE` options apply to every mode, as on train.py's command line.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # a script in benchmarks/ imports the library from the root


def run_mode(config_path: str, mode: str, max_steps: int, extra: list[str]) -> dict:
    """One run of the config with `data.step_shapes` `mode`, in this process, into a temporary folder."""
    from jaxbert.compilation import compile_log
    from jaxbert.config import load_config, parse_overrides
    from jaxbert.training import read_metrics, train_and_evaluate

    with tempfile.TemporaryDirectory(prefix="jaxbert-compile-") as out:
        overrides = {**parse_overrides(extra), "data.step_shapes": mode, "train.compilation_cache": None,
                     "train.max_steps": max_steps, "out": out}
        config = load_config(config_path, overrides)
        with compile_log() as compiles:
            start = time.perf_counter()
            results = train_and_evaluate(config, log=lambda line: print(f"[{mode}] {line}", file=sys.stderr))
            wall = time.perf_counter() - start
        train_rows = [row["train"] for row in read_metrics(Path(out) / "metrics.jsonl") if "train" in row]
    step = compiles.of("train_step")
    return {"mode": mode, "step_compiles": len(step), "step_compile_s": sum(step),
            "compiles": len(compiles.programs), "compile_s": sum(seconds for _, seconds in compiles.programs),
            "wall_s": wall, "examples_per_s": train_rows[-1]["examples_per_sec"],
            "dev_overall": results["metrics"]["dev"].get("overall")}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/minilm_cpu.yaml")
    parser.add_argument("--modes", default="per_task,step_max", help="data.step_shapes values, comma-separated")
    parser.add_argument("--max-steps", type=int, default=200)
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # one mode in this process, its figures as JSON
    args, extra = parser.parse_known_args(argv)
    if args.worker:
        print(json.dumps(run_mode(args.config, args.worker, args.max_steps, extra)))
        return

    # JAX's own cache folder would serve the second mode the programs both share.
    env = {key: value for key, value in os.environ.items() if key != "JAX_COMPILATION_CACHE_DIR"}
    rows = []
    for mode in args.modes.split(","):
        worker = subprocess.run([sys.executable, __file__, "--config", args.config, "--max-steps", str(args.max_steps),
                                 "--worker", mode, *extra], stdout=subprocess.PIPE, text=True, env=env, check=True)
        rows.append(json.loads(worker.stdout.splitlines()[-1]))
    print(f"{args.config}, {args.max_steps} steps{' ' + ' '.join(extra) if extra else ''}, compilation cache off")
    print(f"{'data.step_shapes':<17}{'step compiles':>14}{'step compile s':>16}{'all compiles':>14}"
          f"{'all compile s':>15}{'wall s':>9}{'examples/s':>12}{'dev overall':>13}")
    for r in rows:
        overall = "n/a" if r["dev_overall"] is None else f"{r['dev_overall']:.4f}"
        print(f"{r['mode']:<17}{r['step_compiles']:>14}{r['step_compile_s']:>16.1f}{r['compiles']:>14}"
              f"{r['compile_s']:>15.1f}{r['wall_s']:>9.1f}{r['examples_per_s']:>12.1f}{overall:>13}")


if __name__ == "__main__":
    main()
