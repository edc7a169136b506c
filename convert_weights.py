"""Converts a Hugging Face BERT checkpoint into a ready-to-train jaxbert folder.

    python convert_weights.py                                  # bert-base-uncased from the Hub
    python convert_weights.py --from path/to/hf_folder --out checkpoints/minilm
"""

import argparse
import sys

from jaxbert.convert import convert


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--from", dest="source", default="bert-base-uncased",
                        help="a local Hugging Face model folder, or a Hub id (default: bert-base-uncased)")
    parser.add_argument("--out", default=None, help="destination folder (default: checkpoints/<model name>)")
    args = parser.parse_args(argv)
    out = args.out or f"checkpoints/{args.source.rstrip('/').split('/')[-1]}"
    try:
        convert(args.source, out)
    except (OSError, ValueError) as e:  # ConnectionError, FileNotFoundError, CheckpointError: a message, not a trace
        sys.exit(f"convert_weights.py: error: {e}")


if __name__ == "__main__":
    main()
