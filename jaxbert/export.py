"""A trained run → a folder that Hugging Face `transformers` and `sentence-transformers` load as they are
(`python convert_weights.py --export RUN_DIR --out DIR`), with the task heads beside the encoder.

The run's best checkpoint (`jaxbert.runs.load_run`) becomes:

  config.json, model.safetensors   the fine-tuned encoder, for `transformers.BertModel.from_pretrained(DIR)`
  vocab.txt, tokenizer_config.json, special_tokens_map.json
                                   the run's tokenizer (lowercasing WordPiece, as jaxbert trains with), for
                                   `AutoTokenizer.from_pretrained(DIR)`
  heads.safetensors, heads.json    every other top-level param of the run, float32 in Flax layout (a kernel
                                   is `[in, out]`), named by their params paths joined with "."
                                   (`sst.kernel`, `sts.hidden_0.bias`, `pal_sts.encoder.kernel`), and what
                                   each head is (schema below)
  modules.json, config_sentence_transformers.json, sentence_bert_config.json, 1_Pooling/, 2_Dense/ ...
                                   a sentence-transformers model giving the run's sentence embeddings

The sentence embeddings are those of the run's task "sts", else of its first regression task, else of its first
task, among the tasks that embed one sentence at a time (a cross-encoded pair's embedding is the pair's): that
task's pooling of the encoder output, then its learned projection when the run has one
(`HeadsConfig.projects`), one `Dense` module per layer of the projection's MLP (the run's activation between
them, none after the last). BERT's tanh pooler has no sentence-transformers pooling mode, nor squared ReLU a
torch.nn module, so a run using either gets no sentence-transformers files (the log says so). A run with PALs
exports with a warning: its tasks run through their PALs, which neither library has.

The sentence-transformers files use the classic names and keys (`sentence_transformers.models.Pooling`, the
`pooling_mode_*_tokens` flags, `max_seq_length` in `sentence_bert_config.json`): sentence-transformers 6.2
reads them without a warning (its `DEPRECATED_MODULE_PATHS` and `Pooling.load_config`), and so does every older
release, which the 6.x names (`sentence_transformers.base.modules.dense.Dense`, `pooling_mode: "mean"`) are not.

heads.json:

  {"format": "jaxbert-heads", "version": 1, "checkpoint": "best (epoch 3, stage 0)",
   "heads": {"<params key>": {
       "task":     the task whose head it is (its owner; `Task.head` lets another task borrow it),
       "readers":  the run's tasks that read it,
       "kind":     "classifier" | "regressor" | "projection" (sentence embeddings → the embeddings a cosine
                   compares) | "pal" (the task's projected attention layers),
       "outputs":  width of its output: logits, 1 for a logit or score, the projected embedding, or for a PAL
                   the hidden size it adds to each encoder layer,
       "input":    "embedding": the pooled embedding `[d]` of one sentence, of a cross-encoded pair, or (for
                   a projection) of each sentence of a pair or triplet in turn;
                   "pair_features": `[u, v, |u - v|, u * v]` `[4d]` of a bi-encoded pair's embeddings u, v;
                   "cosine_features": `[u, v, cos(u, v)]` `[2d + 1]`;
                   "hidden_states": each encoder layer's input (a PAL, which runs in parallel with the layer),
       "pooling":  "cls" | "mean" | "max" | "pooler": how its embeddings pool the encoder output (null for a PAL),
       MLP heads (not "pal"):
       "hidden_layers":     dense layers `<key>.hidden_<i>` before the output layer `<key>.kernel`/`.bias`,
       "activation":        after each hidden layer (null without hidden layers),
       "output_activation": on a classifier's logits (`heads.classifier_activation`), else null,
       PALs: "size", "heads", "function" (`heads.pal_size`, `heads.pal_heads`, `heads.pal_function`),
       "tensors":  {"<name in heads.safetensors>": shape, ...}}}}
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import flax
import jax
import numpy as np

from jaxbert.config import Config
from jaxbert.convert import SAFETENSORS, export_hf
from jaxbert.errors import UserError
from jaxbert.runs import TrainedRun, load_run
from jaxbert.tasks import Task

HEADS_FILE = "heads.safetensors"
HEADS_JSON = "heads.json"
SPECIAL_TOKENS = {"unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]", "cls_token": "[CLS]",
                  "mask_token": "[MASK]"}
# The torch.nn modules of `heads.HEAD_ACTIVATIONS`, as sentence-transformers' Dense names them (it imports only
# torch.* classes without trust_remote_code). torch's GELU is the exact erf one, as jaxbert's.
TORCH_ACTIVATIONS = {"relu": "torch.nn.modules.activation.ReLU", "gelu": "torch.nn.modules.activation.GELU",
                     "tanh": "torch.nn.modules.activation.Tanh"}
TORCH_IDENTITY = "torch.nn.modules.linear.Identity"


class OutFolderError(UserError, FileExistsError):
    """The export's folder already holds files."""


def export_run(run_dir: str | Path, out_dir: str | Path, log: Callable[[str], None] = print) -> Path:
    """Writes the best checkpoint of the run in `run_dir` into the new or empty folder `out_dir` (see the module
    docstring) and returns it.

    Raises:
      MissingFileError, ConfigError, CheckpointError: `run_dir` is not one seed's trained run (`load_run`).
      OutFolderError: `out_dir` is a file, or a folder that is not empty.
    """
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        # Files of an earlier export (a Dense module more, a pooling since changed) would mix with this one's.
        raise OutFolderError(f"--out {out} {'is not a folder' if not out.is_dir() else 'is not empty'}: export "
                             "into a new folder")
    run = load_run(run_dir)
    log(f"exporting {run.folder}: {run.checkpoint} checkpoint")
    heads = run.config.heads
    if heads.pal_size:
        log(f"warning: the run has PALs (heads.pal_size={heads.pal_size}), which transformers and "
            "sentence-transformers do not: the exported encoder alone does not reproduce the run's outputs (the "
            f"PAL params are in {HEADS_FILE})")
    export_hf(out, run.bert_config, run.params["bert"], run.vocab)
    write_tokenizer_files(out, run.config.data.max_length)
    heads_written = write_heads(out, run)
    st_written = write_sentence_transformers(out, run, log)
    log(f"wrote {out}: {SAFETENSORS} ({run.bert_config.num_hidden_layers} layers), tokenizer, "
        f"{heads_written}{st_written}")
    return out


def write_tokenizer_files(out: Path, max_length: int) -> None:
    """The files beside vocab.txt that make `AutoTokenizer` build the tokenizer jaxbert trained with.

    jaxbert lowercases (and strips accents) whatever the checkpoint, so the tokenizer does too. transformers
    builds the WordPiece from vocab.txt; `model_max_length` is the length the run truncated to, as
    sentence-transformers writes its `max_seq_length` there.
    """
    tokenizer_config = {"tokenizer_class": "BertTokenizer", "do_lower_case": True, "strip_accents": None,
                        "tokenize_chinese_chars": True, "model_max_length": max_length, **SPECIAL_TOKENS}
    write_json(out / "tokenizer_config.json", tokenizer_config)
    write_json(out / "special_tokens_map.json", SPECIAL_TOKENS)


def flat_heads(params: dict) -> dict[str, np.ndarray]:
    """Every top-level param but the encoder's, as `{"sst.kernel": float32 array, ...}`."""
    heads = jax.device_get({key: value for key, value in params.items() if key != "bert"})
    return {name: np.ascontiguousarray(value, np.float32)
            for name, value in flax.traverse_util.flatten_dict(heads, sep=".").items()}


def write_heads(out: Path, run: TrainedRun) -> str:
    """heads.safetensors and heads.json; returns the summary's words for them."""
    from safetensors.numpy import save_file

    head_params = flat_heads(run.params)
    heads = describe_heads(run, head_params)
    save_file(head_params, out / HEADS_FILE)
    write_json(out / HEADS_JSON, {"format": "jaxbert-heads", "version": 1, "checkpoint": run.checkpoint,
                                  "heads": heads})
    return f"{HEADS_FILE} ({', '.join(heads) or 'no heads'})"


def describe_heads(run: TrainedRun, head_params: dict[str, np.ndarray]) -> dict[str, dict[str, Any]]:
    """The `heads` of heads.json: one entry per top-level params key but `bert`."""
    config, spec = run.config, run.config.heads
    described = {}
    for key in sorted({name.split(".")[0] for name in head_params}):
        tensors = {name: list(value.shape) for name, value in head_params.items() if name.split(".")[0] == key}
        pal = key.startswith("pal_")
        owner = config.task(key[len("pal_"):] if pal else key)
        head = {"task": owner.name, "readers": [t.name for t in config.run_tasks if t.owner == owner.name]}
        if pal:
            head.update(kind="pal", outputs=run.bert_config.hidden_size, input="hidden_states", pooling=None,
                        size=spec.pal_size, heads=spec.pal_heads, function=spec.pal_function)
        else:
            hidden = len({name for name in tensors if name.startswith(f"{key}.hidden_")}) // 2  # kernel, bias
            head.update(kind=head_kind(config, owner), outputs=tensors[f"{key}.kernel"][-1],
                        input=head_input(config, owner), pooling=spec.pooling(owner), hidden_layers=hidden,
                        activation=spec.activation if hidden else None,
                        output_activation=(spec.classifier_activation if owner.outputs > 1
                                           and spec.classifier_activation != "none" else None))
        described[key] = {**head, "tensors": tensors}
    return described


def head_kind(config: Config, owner: Task) -> str:
    if config.heads.projects(owner, owner):
        return "projection"
    return "classifier" if owner.kind == "classification" else "regressor"


def head_input(config: Config, owner: Task) -> str:
    """What the head of `owner` reads, as `MultitaskBert.__call__` and `pair_head` feed it."""
    if config.heads.encoding(owner) in ("single", "cross") or config.heads.projects(owner, owner):
        return "embedding"
    return "cosine_features" if owner.kind == "regression" else "pair_features"


def embedding_task(config: Config) -> Task | None:
    """The task whose sentence embeddings the sentence-transformers model gives: among the tasks that embed
    sentences one at a time (single sentences, bi-encoded pairs, triplets; a cross-encoded pair's embedding is
    the pair's), sts, else the first regression task, else the first; None when no task embeds single sentences."""
    tasks = [task for task in config.run_tasks if config.heads.encoding(task) != "cross"]
    regression = [task for task in tasks if task.kind == "regression"]
    return next((task for task in tasks if task.name == "sts"), (regression or tasks or [None])[0])


def projection_layers(run: TrainedRun, task: Task) -> list[tuple[np.ndarray, np.ndarray, str | None]]:
    """`(kernel [in, out], bias, activation)` of each layer of `task`'s projection MLP (`heads.MLP`): its hidden
    layers with the run's activation, then the output layer with none. Empty when the task projects nothing."""
    config = run.config
    if not config.heads.projects(task, config.task(task.owner)):
        return []
    mlp = jax.device_get(run.params[task.owner])
    hidden = sorted((name for name in mlp if name.startswith("hidden_")), key=lambda n: int(n.split("_")[1]))
    return ([(mlp[name]["kernel"], mlp[name]["bias"], config.heads.activation) for name in hidden]
            + [(mlp["kernel"], mlp["bias"], None)])


def write_sentence_transformers(out: Path, run: TrainedRun, log: Callable[[str], None]) -> str:
    """The sentence-transformers modules over the exported encoder; returns the summary's words for them ("" when
    they cannot express the run's embeddings, after logging why)."""
    from safetensors.numpy import save_file

    task = embedding_task(run.config)
    if task is None:
        log("skipped the sentence-transformers files: every task of the run cross-encodes its pairs, so none "
            "embeds a sentence on its own")
        return ""
    pooling = run.config.heads.pooling(task)
    if pooling == "pooler":
        log(f"skipped the sentence-transformers files: task {task.name}'s embeddings pool with 'pooler' (BERT's "
            "tanh pooler), which sentence-transformers has no pooling mode for")
        return ""
    layers = projection_layers(run, task)
    activation = run.config.heads.activation
    if len(layers) > 1 and activation not in TORCH_ACTIVATIONS:
        log(f"skipped the sentence-transformers files: task {task.name}'s projection uses heads.activation "
            f"{activation!r}, which torch.nn has no module for")
        return ""
    write_json(out / "config_sentence_transformers.json", {
        "model_type": "SentenceTransformer", "prompts": {}, "default_prompt_name": None,
        "similarity_fn_name": "cosine"})
    write_json(out / "sentence_bert_config.json", {"max_seq_length": run.config.data.max_length,
                                                   "do_lower_case": False})  # the tokenizer lowercases
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
    (out / "1_Pooling").mkdir()
    write_json(out / "1_Pooling" / "config.json", {
        "word_embedding_dimension": run.bert_config.hidden_size, "pooling_mode_cls_token": pooling == "cls",
        "pooling_mode_mean_tokens": pooling == "mean", "pooling_mode_max_tokens": pooling == "max",
        "pooling_mode_mean_sqrt_len_tokens": False})
    for idx, (kernel, bias, layer_activation) in enumerate(layers, start=2):
        folder = out / f"{idx}_Dense"
        folder.mkdir()
        write_json(folder / "config.json", {
            "in_features": kernel.shape[0], "out_features": kernel.shape[1], "bias": True,
            "activation_function": TORCH_ACTIVATIONS[layer_activation] if layer_activation else TORCH_IDENTITY})
        save_file({"linear.weight": np.ascontiguousarray(kernel.T, np.float32),  # torch Linear: [out, in]
                   "linear.bias": np.asarray(bias, np.float32)}, folder / SAFETENSORS, metadata={"format": "pt"})
        modules.append({"idx": idx, "name": str(idx), "path": folder.name,
                        "type": "sentence_transformers.models.Dense"})
    write_json(out / "modules.json", modules)
    return (f", sentence-transformers ({task.name}'s {pooling} pooling"
            f"{f', {len(layers)} Dense' if layers else ''}, max_seq_length {run.config.data.max_length})")


def write_json(path: Path, value: Any) -> None:
    path.write_text(json.dumps(value, indent=2) + "\n")
