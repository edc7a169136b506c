"""Checkpoint conversion both ways, and every way a checkpoint can be refused."""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from conftest import TINY, random_batch, save_tiny_hf_bert
from jaxbert.convert import (CheckpointError, canonical_hf_names, export_hf, load_converted, load_hf_checkpoint,
                             load_pretrained)
from jaxbert.modeling import BertModel

ROOT = Path(__file__).resolve().parents[1]
quiet = dict(log=lambda _: None)


def assert_trees_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def run_cli(*args, env=None):
    return subprocess.run([sys.executable, str(ROOT / "convert_weights.py"), *args], capture_output=True, text=True,
                          cwd=ROOT, env={**os.environ, **(env or {})})


@pytest.mark.parametrize("which", ["tiny", "minilm"])
def test_round_trip_is_bit_identical(which, tiny_hf_dir, minilm_dir, tmp_path):
    folder = tiny_hf_dir if which == "tiny" else minilm_dir
    original, _ = canonical_hf_names(load_file(folder / "model.safetensors"))
    config, params = load_hf_checkpoint(folder, **quiet)
    export_hf(tmp_path, config, params, folder / "vocab.txt")
    exported = load_file(tmp_path / "model.safetensors")
    assert exported.keys() == original.keys()
    for name, tensor in original.items():
        assert exported[name].dtype == tensor.dtype and np.array_equal(exported[name], tensor), name


def test_export_loads_in_transformers_and_gives_same_outputs(tiny_hf_dir, tmp_path):
    transformers = pytest.importorskip("transformers")
    import torch

    config, params = load_hf_checkpoint(tiny_hf_dir, **quiet)
    export_hf(tmp_path, config, params, tiny_hf_dir / "vocab.txt")
    model, info = transformers.BertModel.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    ids, mask, types = random_batch(np.random.default_rng(0), TINY["vocab_size"])
    with torch.no_grad():
        ref = model.eval()(input_ids=torch.tensor(ids).long(), attention_mask=torch.tensor(mask).long(),
                           token_type_ids=torch.tensor(types).long()).pooler_output.numpy()
    ours = BertModel(config).apply({"params": params}, ids, mask, types)["pooler_output"]
    np.testing.assert_allclose(ours, ref, atol=1e-5)


def test_pretraining_checkpoint_with_bert_prefix(tiny_hf_dir, tmp_path):
    """bert-base-uncased is a `BertForPreTraining` dump: `bert.` names plus `cls.*` heads that are reported."""
    folder = save_tiny_hf_bert(tmp_path / "pretraining", architecture="BertForPreTraining")
    logged = []
    config, params = load_hf_checkpoint(folder, log=logged.append)
    assert any("cls.seq_relationship.weight" in line for line in logged), logged
    state, ignored = canonical_hf_names(load_file(folder / "model.safetensors"))
    assert all(name.startswith("cls.") for name in ignored) and ignored
    # The encoder tensors land where a bare BertModel's would.
    assert np.array_equal(params["embeddings"]["word_embeddings"]["embedding"],
                          state["embeddings.word_embeddings.weight"])


def test_old_layer_norm_names_and_position_ids_buffer(tiny_hf_dir, tmp_path):
    state = load_file(tiny_hf_dir / "model.safetensors")
    old = {name.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"): t
           for name, t in state.items()}
    old["embeddings.position_ids"] = np.arange(TINY["max_position_embeddings"])[None]
    (tmp_path / "config.json").write_text((tiny_hf_dir / "config.json").read_text())
    save_file(old, tmp_path / "model.safetensors")
    assert_trees_equal(load_hf_checkpoint(tmp_path, **quiet)[1], load_hf_checkpoint(tiny_hf_dir, **quiet)[1])


def test_pytorch_bin_fallback(tmp_path):
    pytest.importorskip("torch")
    import transformers

    folder = tmp_path / "bin"
    config = transformers.BertConfig(**TINY)
    model = transformers.BertModel(config)
    model.save_pretrained(folder, safe_serialization=False)
    if (folder / "model.safetensors").exists():  # newer transformers may ignore the flag
        (folder / "model.safetensors").unlink()
        import torch

        torch.save(model.state_dict(), folder / "pytorch_model.bin")
    _, params = load_hf_checkpoint(folder, **quiet)
    np.testing.assert_array_equal(params["pooler"]["kernel"], model.pooler.dense.weight.detach().numpy().T)


def write_state(folder, state, config_dict):
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(config_dict))
    save_file(state, folder / "model.safetensors")
    return folder


def test_missing_and_unexpected_tensors_are_named(tiny_hf_dir, tmp_path):
    state = load_file(tiny_hf_dir / "model.safetensors")
    config = json.loads((tiny_hf_dir / "config.json").read_text())
    del state["encoder.layer.1.output.dense.bias"]
    state["encoder.layer.1.adapter.weight"] = np.zeros((2, 2), np.float32)
    with pytest.raises(CheckpointError, match=r"encoder\.layer\.1\.output\.dense\.bias.*encoder\.layer\.1\.adapter"):
        load_hf_checkpoint(write_state(tmp_path / "bad", state, config), **quiet)


def test_wrong_shape_is_named(tiny_hf_dir, tmp_path):
    state = load_file(tiny_hf_dir / "model.safetensors")
    config = json.loads((tiny_hf_dir / "config.json").read_text())
    state["encoder.layer.0.intermediate.dense.weight"] = np.zeros((5, TINY["hidden_size"]), np.float32)
    with pytest.raises(CheckpointError, match=r"encoder\.layer\.0\.intermediate\.dense\.weight has shape \(5, 32\)"):
        load_hf_checkpoint(write_state(tmp_path / "bad", state, config), **quiet)


def test_non_bert_checkpoint_is_refused(tiny_hf_dir, tmp_path):
    config = {**json.loads((tiny_hf_dir / "config.json").read_text()), "model_type": "roberta"}
    folder = write_state(tmp_path / "roberta", load_file(tiny_hf_dir / "model.safetensors"), config)
    with pytest.raises(ValueError, match="model_type is 'roberta'"):
        load_hf_checkpoint(folder, **quiet)


def test_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_hf_checkpoint(tmp_path, **quiet)
    (tmp_path / "config.json").write_text(json.dumps(TINY))
    with pytest.raises(FileNotFoundError, match="neither model.safetensors nor pytorch_model.bin"):
        load_hf_checkpoint(tmp_path, **quiet)
    with pytest.raises(FileNotFoundError, match="no params/ Orbax checkpoint"):
        load_converted(tmp_path)


def test_cli_without_network_says_so(tmp_path):
    result = run_cli("--out", str(tmp_path / "out"), env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")})
    assert result.returncode != 0
    assert "cannot download 'bert-base-uncased'" in result.stderr and "--from" in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_converts_minilm_folder(minilm_dir, tmp_path):
    result = run_cli("--from", str(minilm_dir), "--out", str(tmp_path / "minilm"))
    assert result.returncode == 0, result.stderr
    assert "ignored 1 tensor" in result.stdout and "22,713,216 parameters" in result.stdout
    assert (tmp_path / "minilm" / "vocab.txt").read_text() == (minilm_dir / "vocab.txt").read_text()
    config, params = load_pretrained(tmp_path / "minilm")
    reference_config, reference = load_hf_checkpoint(minilm_dir, **quiet)
    assert config == reference_config
    # Bit-identical params, so the converted folder reproduces the PyTorch parity of test_modeling exactly.
    assert_trees_equal(params, reference)
