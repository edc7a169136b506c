"""Converts a Hugging Face BERT checkpoint into a ready-to-train jaxbert folder, or exports a trained run as a
Hugging Face / sentence-transformers folder (with its task heads beside it).

    python convert_weights.py                                  # bert-base-uncased from the Hub
    python convert_weights.py --from path/to/hf_folder --out checkpoints/minilm
    python convert_weights.py --export runs/default --out exported/default
"""

import argparse
import sys

from jaxbert.convert import convert
from jaxbert.errors import UserError

DEFAULT_SOURCE = "bert-base-uncased"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--from", dest="source", default=None,
                        help=f"a local Hugging Face model folder, or a Hub id (default: {DEFAULT_SOURCE})")
    source.add_argument("--export", metavar="RUN_DIR", default=None,
                        help="a trained run's folder (one seed's): write its best checkpoint as a Hugging Face and "
                             "sentence-transformers folder into --out")
    parser.add_argument("--out", default=None,
                        help="destination folder (default when converting: checkpoints/<model name>; required with "
                             "--export, a new or empty folder)")
    args = parser.parse_args(argv)
    if args.export is not None and args.out is None:
        parser.error("--export needs --out DIR, the folder to write")
    # Converting, the Hub client's OSErrors and BertConfig's ValueErrors (a RoBERTa config, ...) are the user's
    # input too; an export reads only jaxbert's own files, where anything but a UserError is a bug.
    expected = (UserError,) if args.export is not None else (UserError, OSError, ValueError)
    try:
        if args.export is not None:
            from jaxbert.export import export_run  # imports the training stack, which converting does not need

            export_run(args.export, args.out)
        else:
            name = args.source or DEFAULT_SOURCE
            convert(name, args.out or f"checkpoints/{name.rstrip('/').split('/')[-1]}")
    except expected as e:
        sys.exit(f"convert_weights.py: error: {e}")


if __name__ == "__main__":
    main()
