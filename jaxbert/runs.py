"""A trained run folder, loaded for use: its config, model and best params, and predictions from them.

A run folder (one seed's, for a run of several) holds everything this needs: `config.yaml`, the encoder's
architecture and vocabulary in `encoder/` (`config.json`, `vocab.txt`), and the checkpoints. `predict.py` and
`convert_weights.py --export` read runs through here.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxbert import build
from jaxbert import data as data_lib
from jaxbert.checkpoint import CheckpointStore
from jaxbert.config import Config, load_config
from jaxbert.errors import MissingFileError, UserError
from jaxbert.heads import MultitaskBert
from jaxbert.modeling import BertConfig
from jaxbert.tasks import Task
from jaxbert.tokenization import BertTokenizer
from jaxbert.train_step import data_mesh, replicate, seed_slice, stack_seeds
from jaxbert.training import predict_split, to_predictions

ENCODER_DIR = "encoder"  # in a run folder: the encoder's config.json and vocab.txt


@dataclasses.dataclass(frozen=True)
class TrainedRun:
    """One seed of a run: its config, model, and the params of its best checkpoint (no seed axis)."""

    folder: Path
    config: Config
    bert_config: BertConfig
    vocab: Path
    model: MultitaskBert
    params: Any
    checkpoint: str  # which checkpoint the params are: "best (epoch 3, step 240)"

    def task(self, name: str) -> Task:
        """The run's task `name`; an error listing the run's tasks otherwise."""
        if name not in self.config.tasks:
            raise UserError(f"{self.folder} was not trained on a task {name!r}; its tasks: "
                                   f"{', '.join(self.config.tasks)}")
        return self.config.task(name)


def load_run(folder: str | Path) -> TrainedRun:
    """The run in `folder`, its params from the best checkpoint (the latest when it kept no best, having no
    dev score to select by).

    Raises:
      MissingFileError: `folder` is not one seed's run folder, or lacks its checkpoint.
      ConfigError: its config.yaml does not load.
      CheckpointError: the checkpoint's params do not fit the model its config.yaml describes.
    """
    folder = Path(folder)
    if not (folder / "config.yaml").is_file():
        raise MissingFileError(f"{folder} is not a run folder: it has no config.yaml")
    config = load_config(folder / "config.yaml")
    if len(config.train.seed_list) > 1:
        raise UserError(f"{folder} is a run of {len(config.train.seed_list)} seeds: pass one seed's folder, "
                        f"{folder / f'seed{config.train.seed}'} say")
    encoder = folder / ENCODER_DIR
    if not (encoder / "config.json").is_file() or not (encoder / "vocab.txt").is_file():
        raise MissingFileError(f"{folder} has no {ENCODER_DIR}/config.json and {ENCODER_DIR}/vocab.txt; the run "
                               "was trained by a jaxbert that did not write them: train it again")
    bert_config = BertConfig.from_json_file(encoder / "config.json")
    model = build.model(config, bert_config)
    params, which = _restore_params(folder / "checkpoints", model)
    return TrainedRun(folder, config, bert_config, encoder / "vocab.txt", model, params, which)


def _restore_params(directory: Path, model: MultitaskBert) -> tuple[Any, str]:
    device = NamedSharding(data_mesh(jax.devices()[:1]), P())
    shapes = jax.eval_shape(lambda: build.random_params(model, jax.random.key(0)))
    abstract = lambda seeds=(): jax.tree.map(  # noqa: E731
        lambda x: jax.ShapeDtypeStruct((*seeds, *x.shape), x.dtype, sharding=device), shapes)
    store = CheckpointStore(directory)
    try:
        # The best checkpoint holds one seed's state; the latest a run's whole state, stacked over its one seed.
        for which, target in (("best", abstract()), ("latest", abstract((1,)))):
            if store.progress(which) is None:
                continue
            store.check_fits(target, which)
            restored, progress = store.restore({"params": target}, which=which, partial=True)
            params = restored["params"] if which == "best" else seed_slice(restored["params"], 0)
            return params, f"{which} (epoch {progress.get('epoch')}, stage {progress.get('stage')})"
    finally:
        store.close()
    raise MissingFileError(f"{directory} holds no checkpoint: the run has not finished an epoch")


def predict(run: TrainedRun, examples: data_lib.Examples, batch_size: int | None = None) -> np.ndarray:
    """The run's predictions of `examples` (of one of its tasks), in their order: class ids, 0/1 or scores,
    batched by length bucket and jitted as in training."""
    config, task = run.config, examples.task
    encoded = data_lib.encode_for_run(config, examples, BertTokenizer(run.vocab))
    mesh = data_mesh()
    predictor = build.predict_steps(run.model, mesh)[task.name]
    outputs = predict_split(encoded, predictor, replicate(stack_seeds([run.params]), mesh), mesh,
                            batch_size or config.train.eval_batch_size, config.data.buckets)
    return to_predictions(task, outputs[:, 0])
