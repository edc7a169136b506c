"""Hugging Face BERT checkpoints ⇄ jaxbert parameters.

The name mapping is one explicit table (`parameter_table`); every tensor's shape is checked against the
Flax model's, and every transpose is spelled out. A converted folder holds an Orbax checkpoint of the
params (`params/`), `config.json` and `vocab.txt`.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Callable

import flax
import jax
import jax.numpy as jnp
import numpy as np

from jaxbert.errors import CheckpointError, MissingFileError, OfflineError
from jaxbert.modeling import BertConfig, BertModel

SAFETENSORS = "model.safetensors"
TORCH_BIN = "pytorch_model.bin"  # legacy pickle checkpoints, read only when no safetensors exist
PARAMS_DIR = "params"


@dataclasses.dataclass(frozen=True)
class Rule:
    """How one Hugging Face tensor becomes one Flax leaf.

    torch `Linear.weight` is `[out, in]` while a Flax kernel is `[in, out]`, so linear weights are transposed;
    q/k/v kernels and biases are additionally split into `[..., heads, head_dim]` for `DenseGeneral`.
    """

    hf_name: str
    flax_path: tuple[str, ...]
    kind: str  # "copy" | "linear" | "heads_kernel" | "heads_bias"

    def to_flax(self, tensor: np.ndarray, config: BertConfig) -> np.ndarray:
        heads = (config.num_attention_heads, config.head_dim)
        if self.kind == "copy":
            return tensor
        if self.kind == "linear":
            return tensor.T
        if self.kind == "heads_kernel":
            return tensor.T.reshape(tensor.shape[1], *heads)
        if self.kind == "heads_bias":
            return tensor.reshape(heads)
        raise AssertionError(self.kind)

    def to_hf(self, leaf: np.ndarray) -> np.ndarray:
        if self.kind == "copy":
            return leaf
        if self.kind == "linear":
            return leaf.T
        if self.kind == "heads_kernel":
            return leaf.reshape(leaf.shape[0], -1).T
        if self.kind == "heads_bias":
            return leaf.reshape(-1)
        raise AssertionError(self.kind)


def parameter_table(config: BertConfig) -> list[Rule]:
    """Every tensor of a Hugging Face `BertModel` state dict and where it lives in jaxbert's params."""

    def layer_norm(hf: str, path: tuple[str, ...]) -> list[Rule]:
        return [Rule(f"{hf}.weight", (*path, "scale"), "copy"), Rule(f"{hf}.bias", (*path, "bias"), "copy")]

    def dense(hf: str, path: tuple[str, ...], kernel: str = "linear", bias: str = "copy") -> list[Rule]:
        return [Rule(f"{hf}.weight", (*path, "kernel"), kernel), Rule(f"{hf}.bias", (*path, "bias"), bias)]

    rules = [
        Rule("embeddings.word_embeddings.weight", ("embeddings", "word_embeddings", "embedding"), "copy"),
        Rule("embeddings.position_embeddings.weight", ("embeddings", "position_embeddings", "embedding"), "copy"),
        Rule("embeddings.token_type_embeddings.weight", ("embeddings", "token_type_embeddings", "embedding"), "copy"),
        *layer_norm("embeddings.LayerNorm", ("embeddings", "LayerNorm")),
    ]
    for i in range(config.num_hidden_layers):
        hf, fx = f"encoder.layer.{i}", ("encoder", f"layer_{i}")
        for name in ("query", "key", "value"):
            rules += dense(f"{hf}.attention.self.{name}", (*fx, "attention", "self", name), "heads_kernel", "heads_bias")
        rules += dense(f"{hf}.attention.output.dense", (*fx, "attention", "output", "dense"))
        rules += layer_norm(f"{hf}.attention.output.LayerNorm", (*fx, "attention", "output", "LayerNorm"))
        rules += dense(f"{hf}.intermediate.dense", (*fx, "intermediate"))
        rules += dense(f"{hf}.output.dense", (*fx, "output", "dense"))
        rules += layer_norm(f"{hf}.output.LayerNorm", (*fx, "output", "LayerNorm"))
    rules += dense("pooler.dense", ("pooler",))
    return rules


def param_shapes(config: BertConfig) -> dict[tuple[str, ...], tuple[int, ...]]:
    """Flat `{path: shape}` of the Flax model's params, computed without allocating them."""
    ids = jnp.zeros((1, 1), jnp.int32)
    abstract = jax.eval_shape(BertModel(config).init, jax.random.key(0), ids, ids)["params"]
    return {path: leaf.shape for path, leaf in flax.traverse_util.flatten_dict(abstract).items()}


def canonical_hf_names(state: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], list[str]]:
    """Strips the pre-training `bert.` prefix, renames old LayerNorm `gamma`/`beta`, drops heads and buffers.

    Returns: the `BertModel` state dict and the names that were ignored (pre-training heads, buffers).
    """
    prefixed = any(name.startswith("bert.") for name in state)
    renamed, ignored = {}, []
    for name, tensor in state.items():
        key = name
        if prefixed:
            if not key.startswith("bert."):  # cls.predictions.*, cls.seq_relationship.*
                ignored.append(name)
                continue
            key = key[len("bert."):]
        if key.endswith("position_ids"):  # a non-persistent buffer some exports still carry
            ignored.append(name)
            continue
        if "LayerNorm" in key:
            key = key.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta", "LayerNorm.bias")
        renamed[key] = tensor
    return renamed, ignored


def hf_state_to_params(state: dict[str, np.ndarray], config: BertConfig, source: str = "checkpoint") -> dict:
    """Maps a Hugging Face state dict (any prefix or naming vintage) to jaxbert's `params` collection.

    Raises:
      CheckpointError: naming every missing or unexpected tensor, or the first tensor whose shape is wrong.
    """
    state, _ = canonical_hf_names(state)
    rules = parameter_table(config)
    expected = {rule.hf_name for rule in rules}
    missing, unexpected = sorted(expected - state.keys()), sorted(state.keys() - expected)
    if missing or unexpected:
        raise CheckpointError(
            f"{source} does not match a BERT with {config.num_hidden_layers} layers: "
            f"missing tensors {missing or 'none'}; unexpected tensors {unexpected or 'none'}"
        )
    shapes = param_shapes(config)
    flat = {}
    for rule in rules:
        leaf = np.asarray(rule.to_flax(state[rule.hf_name], config), np.float32)
        if leaf.shape != shapes[rule.flax_path]:
            raise CheckpointError(
                f"{source}: tensor {rule.hf_name} has shape {state[rule.hf_name].shape}, which maps to "
                f"{leaf.shape} but the model expects {shapes[rule.flax_path]} at {'/'.join(rule.flax_path)}"
            )
        flat[rule.flax_path] = leaf
    return flax.traverse_util.unflatten_dict(flat)


def params_to_hf_state(params: dict, config: BertConfig) -> dict[str, np.ndarray]:
    """The inverse of `hf_state_to_params`: a bare `BertModel` state dict (no `bert.` prefix)."""
    flat = flax.traverse_util.flatten_dict(jax.device_get(params))
    return {rule.hf_name: np.ascontiguousarray(rule.to_hf(np.asarray(flat[rule.flax_path]))) for rule in
            parameter_table(config)}


def read_hf_state(folder: Path) -> dict[str, np.ndarray]:
    """Reads `model.safetensors`, or `pytorch_model.bin` with torch's safe unpickler when that is all there is."""
    if (folder / SAFETENSORS).is_file():
        from safetensors.numpy import load_file

        return load_file(folder / SAFETENSORS)
    if (folder / TORCH_BIN).is_file():
        try:
            import torch
        except ImportError as e:
            raise CheckpointError(
                f"{folder / TORCH_BIN} is a PyTorch pickle and torch is not installed; install torch or provide "
                f"{SAFETENSORS}"
            ) from e
        state = torch.load(folder / TORCH_BIN, map_location="cpu", weights_only=True)
        return {name: tensor.float().numpy() if tensor.is_floating_point() else tensor.numpy()
                for name, tensor in state.items()}
    raise MissingFileError(f"{folder} holds neither {SAFETENSORS} nor {TORCH_BIN}")


def download_from_hub(repo_id: str, log: Callable[[str], None] = print) -> Path:
    """Fetches config.json, vocab.txt and the weights of a Hub repository into the local cache.

    Returns: the cache folder holding the files.
    """
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import LocalEntryNotFoundError, RemoteEntryNotFoundError, RepositoryNotFoundError

    def fetch(filename: str) -> Path:
        log(f"downloading {repo_id}/{filename}")
        return Path(hf_hub_download(repo_id, filename))

    try:
        folder = fetch("config.json").parent
        fetch("vocab.txt")
        try:
            fetch(SAFETENSORS)
        except RemoteEntryNotFoundError:
            log(f"{repo_id} has no {SAFETENSORS}; falling back to {TORCH_BIN}")
            fetch(TORCH_BIN)
    except LocalEntryNotFoundError:
        raise OfflineError(
            f"cannot download {repo_id!r} from the Hugging Face Hub (no network, and it is not in the local cache). "
            f"Download the model folder elsewhere and convert it with `--from DIR`."
        ) from None
    except RepositoryNotFoundError:
        raise MissingFileError(
            f"{repo_id!r} is neither a local folder nor a repository on the Hugging Face Hub"
        ) from None
    return folder


def load_hf_checkpoint(path_or_hub_id: str | Path, log: Callable[[str], None] = print) -> tuple[BertConfig, dict]:
    """Loads a Hugging Face BERT (local folder or Hub id) as `(BertConfig, params)`.

    `params` is the collection `BertModel(config).apply({"params": params}, ...)` takes, in float32.
    """
    folder = resolve_hf_folder(path_or_hub_id, log)
    config = BertConfig.from_json_file(folder / "config.json")
    state = read_hf_state(folder)
    _, ignored = canonical_hf_names(state)
    if ignored:
        log(f"ignored {len(ignored)} tensor(s) that are not part of the encoder: {', '.join(sorted(ignored))}")
    return config, hf_state_to_params(state, config, source=str(folder))


def resolve_hf_folder(path_or_hub_id: str | Path, log: Callable[[str], None] = print) -> Path:
    path = Path(path_or_hub_id)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise MissingFileError(f"{path} has no config.json: not a Hugging Face model folder")
        return path
    if path.exists() or str(path_or_hub_id).startswith((".", "/")):
        raise MissingFileError(f"{path} is not a folder")
    return download_from_hub(str(path_or_hub_id), log)


def save_converted(out_dir: str | Path, config: BertConfig, params: dict, vocab_file: str | Path) -> Path:
    """Writes a ready-to-train folder: Orbax params, config.json, vocab.txt."""
    import orbax.checkpoint as ocp

    out = Path(out_dir).absolute()
    out.mkdir(parents=True, exist_ok=True)
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(out / PARAMS_DIR, params, force=True)
    (out / "config.json").write_text(json.dumps(config.to_hf_dict(), indent=2) + "\n")
    shutil.copyfile(vocab_file, out / "vocab.txt")
    return out


def load_converted(folder: str | Path) -> tuple[BertConfig, dict]:
    """Reads a folder written by `save_converted` (or `python convert_weights.py`)."""
    import orbax.checkpoint as ocp

    folder = Path(folder).absolute()
    if not (folder / PARAMS_DIR).is_dir():
        raise MissingFileError(f"{folder} has no {PARAMS_DIR}/ Orbax checkpoint; run `python convert_weights.py` first")
    config = BertConfig.from_json_file(folder / "config.json")
    ids = jnp.zeros((1, 1), jnp.int32)
    target = jax.eval_shape(BertModel(config).init, jax.random.key(0), ids, ids)["params"]
    with ocp.StandardCheckpointer() as checkpointer:
        params = checkpointer.restore(folder / PARAMS_DIR, target)
    return config, params


def load_pretrained(path: str | Path, log: Callable[[str], None] = print) -> tuple[BertConfig, dict]:
    """Loads an encoder from a converted folder, a Hugging Face folder, or a Hub id."""
    if (Path(path) / PARAMS_DIR).is_dir():
        return load_converted(path)
    return load_hf_checkpoint(path, log)


def export_hf(out_dir: str | Path, config: BertConfig, params: dict, vocab_file: str | Path | None = None) -> Path:
    """Writes a Hugging Face folder (config.json, model.safetensors, vocab.txt) that `BertModel.from_pretrained` loads."""
    from safetensors.numpy import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_file(params_to_hf_state(params, config), out / SAFETENSORS, metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(config.to_hf_dict(), indent=2) + "\n")
    if vocab_file is not None:
        shutil.copyfile(vocab_file, out / "vocab.txt")
    return out


def convert(source: str | Path, out_dir: str | Path, log: Callable[[str], None] = print) -> Path:
    """The `convert_weights.py` job: Hugging Face folder or Hub id → ready-to-train folder."""
    folder = resolve_hf_folder(source, log)
    log(f"reading {folder}")
    config, params = load_hf_checkpoint(folder, log)
    count = sum(leaf.size for leaf in jax.tree.leaves(params))
    log(f"converted {len(parameter_table(config))} tensors, {count:,} parameters "
        f"({config.num_hidden_layers} layers, hidden {config.hidden_size})")
    vocab = folder / "vocab.txt"
    if not vocab.is_file():
        raise MissingFileError(f"{folder} has no vocab.txt, which the tokenizer needs")
    out = save_converted(out_dir, config, params, vocab)
    log(f"wrote {out}/{{{PARAMS_DIR}/, config.json, vocab.txt}}")
    return out
