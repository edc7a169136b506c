"""Multitask fine-tuning of BERT on SST-5, Quora and STS, and tasks of your own (`task_defs:` in a config).

    python train.py --sampler=roundrobin
    python train.py --config configs/cosine_heads.yaml --lr=3e-5 --out runs/cosine
    python train.py --tasks sst --epochs 3         # single-task sentiment
    python train.py --pcgrad --smart               # gradient surgery and SMART (also --gradvac, --cagrad, ...)
    python train.py --seeds 4 --vmap-seeds         # seeds 0-3 in one program, into <out>/seed0/ ... <out>/seed3/
    python train.py --dtype=bfloat16 --attention-dropout=0 --accumulation-steps=2 --remat   # GPU speed and memory

Any config field can be set as --section.key=value (--train.lr=3e-5); the short forms are jaxbert.config.ALIASES
(--lr, --sampler, --tasks, ...) and SHORTHANDS (--pcgrad, --smart, ...). See configs/default.yaml.
"""

import sys

from jaxbert.config import load_config, parse_overrides
from jaxbert.errors import UserError


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if "-h" in argv or "--help" in argv:
        print(__doc__)
        return
    config_file = None
    for i, arg in enumerate(argv):
        if arg == "--config" or arg.startswith("--config="):
            config_file = arg.partition("=")[2] or (argv[i + 1] if i + 1 < len(argv) else None)
            del argv[i:i + (1 if "=" in arg else 2)]
            break
    try:
        config = load_config(config_file, parse_overrides(argv))
        from jaxbert.training import train_and_evaluate  # JAX loads once the config is known to be good

        train_and_evaluate(config)
    except UserError as e:  # a bad config, a missing checkpoint or data file, no network: the message says the fix
        sys.exit(f"train.py: error: {e}")


if __name__ == "__main__":
    main()
