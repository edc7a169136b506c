"""Multitask fine-tuning of BERT on SST-5, Quora and STS, and tasks of your own (`task_defs:` in a config).

    python train.py --sampler=roundrobin
    python train.py --config configs/cosine_heads.yaml --lr=3e-5 --out runs/cosine
    python train.py --tasks sst --epochs 3         # single-task sentiment
    python train.py --pcgrad --smart               # gradient surgery and SMART (also --gradvac, --cagrad, ...)
    python train.py --seeds 4 --vmap-seeds         # seeds 0-3 in one program, into <out>/seed0/ ... <out>/seed3/
    python train.py --seeds 0,1,5                  # exactly these seeds, one after another
    python train.py --dtype=bfloat16 --attention-dropout=0 --accumulation-steps=2 --remat   # GPU speed and memory

train.py's own flags, which are no config keys and are never saved:

    --config FILE      the YAML config to start from (the defaults without one)
    --resume           continue the run in `out` from its latest checkpoint
    --overwrite        clear `out`'s previous run first
    --dry-run          check the config, the data and the checkpoint, print the plan; train and write nothing
    --help [SECTION]   this text, or only one section of the config keys below (--help train)
"""

import sys
from typing import Any, Sequence

from jaxbert.config import Config, ConfigError, help_text, load_config, parse_command_line
from jaxbert.errors import UserError

FLAGS = {"config": str, "resume": bool, "overwrite": bool, "dry_run": bool}


def requested_help(argv: Sequence[str]) -> str | None:
    """The help `argv` asks for (`--help`, `-h`: this module's text and every config key; `--help SECTION`,
    `--help=SECTION`: that section's keys), or None."""
    for i, arg in enumerate(argv):
        name, eq, section = arg.partition("=")
        if name in ("-h", "--help"):
            if not eq and i + 1 < len(argv) and not argv[i + 1].startswith("-"):
                section = argv[i + 1]
            return help_text(section) if section else f"{__doc__.rstrip()}\n\n{help_text()}"
    return None


def parse_args(argv: Sequence[str]) -> tuple[Config, dict[str, Any]]:
    """The config `argv` asks for, and the keyword arguments of `train_and_evaluate` its flags give."""
    overrides, flags = parse_command_line(argv, FLAGS)
    if flags.get("resume") and flags.get("overwrite"):
        raise ConfigError("--resume continues the run in `out` and --overwrite clears it: give one of them")
    config = load_config(flags.pop("config", None), overrides)
    return config, {name: flags.get(name, False) for name in ("resume", "overwrite", "dry_run")}


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        text = requested_help(argv)
        if text is not None:
            print(text, end="")
            return
        config, flags = parse_args(argv)
        from jaxbert.training import train_and_evaluate  # JAX loads once the config is known to be good

        train_and_evaluate(config, **flags)
    except UserError as e:  # a bad config, a missing checkpoint or data file, no network: the message says the fix
        sys.exit(f"train.py: error: {e}")


if __name__ == "__main__":
    main()
