"""Predicts with a trained run: every row of a file, or sentences given on the command line.

    python predict.py RUN_DIR --task sst --input data/ids-sst-dev.csv --output sst-dev-output.csv
    python predict.py RUN_DIR --task sts "A man plays the guitar." "A man is playing a guitar."
    python predict.py RUN_DIR --task sst "A gorgeous, witty film." "Dull."     # one line per sentence

RUN_DIR is a run folder (one seed's folder, `<out>/seed<k>/`, of a run of several): its best checkpoint is
used. A file is read in the task's format (its columns and delimiter; an `id` column keys the rows, else the
row number) and its predictions are written in the course's format to --output, or to stdout; when the file
has labels, `<task> <metric>: <value>` goes to stderr. Sentences on the command line are taken one at a time
for a single-sentence task, two at a time for a pair; each prints its prediction: a score, or a class id
(with its name, for sst).
"""

import argparse
import sys
from pathlib import Path

from jaxbert.errors import UserError


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="predict.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", help="the run folder (one seed's)")
    parser.add_argument("sentences", nargs="*", help="sentences to predict, instead of --input")
    parser.add_argument("--task", help="the task to predict (default: the run's only task)")
    parser.add_argument("--input", help="a data file in the task's format")
    parser.add_argument("--output", help="where the predictions go (default: stdout)")
    parser.add_argument("--batch-size", type=int, help="examples per batch (default: the run's eval batch size)")
    args = parser.parse_intermixed_args(argv)
    if bool(args.input) == bool(args.sentences):
        parser.error("give either --input FILE or sentences, not both" if args.input else
                     "nothing to predict: give --input FILE or sentences")
    if args.output and not args.input:
        parser.error("--output goes with --input (sentences print their predictions)")
    if args.batch_size is not None and args.batch_size < 1:
        parser.error(f"--batch-size must be positive, got {args.batch_size}")
    return args


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        from jaxbert import data as data_lib  # JAX loads once the arguments are known to be good
        from jaxbert.metrics import task_metric
        from jaxbert.runs import load_run, predict
        from jaxbert.training import format_predictions

        run = load_run(args.run)
        if args.task is None and len(run.config.tasks) > 1:
            raise UserError(f"--task: {args.run} was trained on {', '.join(run.config.tasks)}; say which to predict")
        task = run.task(args.task or run.config.tasks[0])
        if task.metric is None:
            raise UserError(f"--task {task.name}: the task has no prediction (its head only trains embeddings)")
        if args.input:
            examples = data_lib.read_split(args.input, task)
            print(f"{task.name}: {examples.summary()}", file=sys.stderr)
            predictions = predict(run, examples, args.batch_size)
            text = format_predictions(task, examples.ids, predictions)
            if args.output:
                Path(args.output).write_text(text)
            else:
                sys.stdout.write(text)
            if examples.labels is not None and len(examples):
                for name, value in task_metric(task, predictions, examples.labels).items():
                    print(f"{task.name} {name}: {value:.4f}", file=sys.stderr)
            return
        width = len(task.text)
        if len(args.sentences) % width:
            raise UserError(f"{task.name} is a {'pair' if width == 2 else 'single-sentence'} task: give sentences "
                            f"{width} at a time, got {len(args.sentences)}")
        groups = [args.sentences[i:i + width] for i in range(0, len(args.sentences), width)]
        examples = data_lib.Examples(task, "command line", [str(i + 1) for i in range(len(groups))],
                                     [g[0] for g in groups], [g[1] for g in groups] if width == 2 else None, None)
        for value in predict(run, examples, args.batch_size):
            names = task.class_names
            print(f"{value}\t{names[value]}" if names else f"{value}")
    except UserError as e:  # a bad run folder, task, file or argument: the message says the fix
        sys.exit(f"predict.py: error: {e}")


if __name__ == "__main__":
    main()
