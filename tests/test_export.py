"""`convert_weights.py --export`: a trained run's folder loads in transformers and sentence-transformers with
the run's own outputs, its heads beside it; PAL and pooler runs say what the folder cannot reproduce.

Two tiny trainings: a run whose STS embeddings pass a two-layer projection (mean pooling, GELU), and a PAL run
pooling with BERT's pooler. The references are independent of jaxbert's export: PyTorch `BertModel`, the
`transformers` tokenizer and `SentenceTransformer`, each loading the exported folder itself.
"""

import json

import flax
import huggingface_hub
import jax
import numpy as np
import pytest

import convert_weights
from conftest import run_config
from jaxbert.export import export_run
from jaxbert.modeling import BertModel
from jaxbert.runs import load_run
from jaxbert.tokenization import BertTokenizer
from jaxbert.training import train_and_evaluate

transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")

FIRST = ["The movie was great .", "A dog runs in the park", "How do I learn Python fast ?"]
SECOND = ["A film was good .", "the CAT sleeps", "What is the best way to learn python , really ?"]


@pytest.fixture(scope="module")
def projected_run(workspace):
    """A run whose sts embeddings pass a projection with one hidden layer (task_hidden_layers sts: 2)."""
    _, _, root = workspace
    yaml = root / "projected.yaml"
    yaml.write_text("heads:\n  task_hidden_layers: {sts: 2}\n")
    config = run_config(workspace, root / "projected", "--heads.pair_pooling=mean", "--heads.activation=gelu",
                        "--epochs=1", config_file=yaml)
    train_and_evaluate(config, log=lambda _: None)
    return load_run(config.out)


@pytest.fixture(scope="module")
def exported(projected_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "projected"
    lines = []
    export_run(projected_run.folder, out, log=lines.append)
    return out, lines


@pytest.fixture(scope="module")
def pal_run(workspace):
    _, _, root = workspace
    config = run_config(workspace, root / "pal", "--tasks=sts", "--heads.pal_size=8", "--heads.pal_heads=2",
                        "--heads.pair_pooling=pooler", "--epochs=1")
    train_and_evaluate(config, log=lambda _: None)
    return load_run(config.out)


@pytest.fixture
def offline(monkeypatch):
    """Loading a local folder must not reach the Hub; huggingface_hub reads the variable once, at import."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def encode(run, sentences):
    """The run's tokenization of `sentences`, padded to data.max_length so two batches stack."""
    length = run.config.data.max_length
    encoded = BertTokenizer(run.vocab).encode(sentences, max_length=length, pad_to=length)
    return {key: encoded[key] for key in ("input_ids", "attention_mask", "token_type_ids")}


def test_transformers_bert_model_gives_the_runs_encoder_outputs(projected_run, exported, offline):
    out, _ = exported
    model, info = transformers.BertModel.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    batch = encode(projected_run, FIRST + SECOND)
    with torch.no_grad():
        reference = model.eval()(**{key: torch.tensor(value).long() for key, value in batch.items()})
    ours = BertModel(projected_run.bert_config).apply({"params": projected_run.params["bert"]}, batch["input_ids"],
                                                      batch["attention_mask"], batch["token_type_ids"])
    np.testing.assert_allclose(ours["last_hidden_state"], reference.last_hidden_state.numpy(), atol=1e-5)
    np.testing.assert_allclose(ours["pooler_output"], reference.pooler_output.numpy(), atol=1e-5)
    error = np.abs(ours["last_hidden_state"] - reference.last_hidden_state.numpy()).max()
    print(f"exported encoder vs jaxbert: max abs error {error:.1e}")


@pytest.mark.parametrize("loader", ["AutoTokenizer", "BertTokenizerFast"])
def test_tokenizer_gives_the_runs_ids(projected_run, exported, offline, loader):
    out, _ = exported
    tokenizer = getattr(transformers, loader).from_pretrained(out)
    ours = BertTokenizer(projected_run.vocab)
    for texts, pairs in ((FIRST, None), (FIRST, SECOND)):
        expected = ours.encode(texts, pairs)
        actual = tokenizer(texts, pairs, padding=True, return_tensors="np")
        for key in ("input_ids", "attention_mask", "token_type_ids"):
            np.testing.assert_array_equal(actual[key], expected[key], err_msg=key)
    assert tokenizer.model_max_length == projected_run.config.data.max_length


def test_sentence_transformers_gives_the_runs_sts_embeddings(projected_run, exported, offline):
    SentenceTransformer = pytest.importorskip("sentence_transformers").SentenceTransformer

    out, _ = exported
    model = SentenceTransformer(str(out), device="cpu")
    # Pooling, then the projection's hidden layer (GELU) and output layer (no activation).
    dense = [module for module in model if type(module).__name__ == "Dense"]
    assert [type(module.activation_function).__name__ for module in dense] == ["GELU", "Identity"]
    assert model.max_seq_length == projected_run.config.data.max_length
    first, second = encode(projected_run, FIRST), encode(projected_run, SECOND)
    batch = {**first, **{f"{key}_b": value for key, value in second.items()}}
    _, embeddings = projected_run.model.apply({"params": projected_run.params}, "sts", batch, deterministic=True,
                                              return_embeddings=True)
    encoded = model.encode(FIRST + SECOND, convert_to_numpy=True)
    np.testing.assert_allclose(encoded, embeddings, atol=1e-5)
    print(f"sentence-transformers vs the run's embeddings: max abs error {np.abs(encoded - embeddings).max():.1e}")


def test_heads_file_holds_every_head_param(projected_run, exported):
    from safetensors.numpy import load_file

    out, _ = exported
    heads = load_file(out / "heads.safetensors")
    expected = flax.traverse_util.flatten_dict(
        jax.device_get({key: value for key, value in projected_run.params.items() if key != "bert"}), sep=".")
    assert heads.keys() == expected.keys() and "sts.hidden_0.kernel" in heads
    for name, value in expected.items():
        assert heads[name].dtype == np.float32
        np.testing.assert_array_equal(heads[name], value, err_msg=name)
    described = json.loads((out / "heads.json").read_text())["heads"]
    assert described.keys() == {"sst", "para", "sts"}
    assert {name: shape for head in described.values() for name, shape in head["tensors"].items()} == {
        name: list(value.shape) for name, value in heads.items()}
    assert described["sst"] | {"tensors": None} == {
        "task": "sst", "readers": ["sst"], "kind": "classifier", "outputs": 5, "input": "embedding",
        "pooling": "cls", "hidden_layers": 0, "activation": None, "output_activation": None, "tensors": None}
    sts = described["sts"]
    assert (sts["kind"], sts["input"], sts["pooling"], sts["hidden_layers"], sts["activation"]) == (
        "projection", "embedding", "mean", 1, "gelu")


def test_cli_exports_a_run(projected_run, tmp_path, capsys):
    convert_weights.main(["--export", str(projected_run.folder), "--out", str(tmp_path / "out")])
    printed = capsys.readouterr().out
    assert "sentence-transformers (sts's mean pooling, 2 Dense" in printed and "warning" not in printed
    assert (tmp_path / "out" / "modules.json").is_file()


def test_pal_run_warns_and_pooler_skips_sentence_transformers(pal_run, tmp_path, offline):
    from safetensors.numpy import load_file

    lines = []
    out = export_run(pal_run.folder, tmp_path / "pal", log=lines.append)
    warnings = [line for line in lines if line.startswith("warning:")]
    assert len(warnings) == 1 and "PAL" in warnings[0] and "heads.safetensors" in warnings[0], lines
    skipped = [line for line in lines if "sentence-transformers files" in line]
    assert len(skipped) == 1 and "'pooler'" in skipped[0], lines
    assert not (out / "modules.json").exists() and not (out / "1_Pooling").exists()
    transformers.BertModel.from_pretrained(out)  # the encoder is still exported
    heads = load_file(out / "heads.safetensors")
    assert heads.keys() == {f"pal_sts.{name}" for name in flax.traverse_util.flatten_dict(
        pal_run.params["pal_sts"], sep=".")}
    np.testing.assert_array_equal(heads["pal_sts.decoder.kernel"], pal_run.params["pal_sts"]["decoder"]["kernel"])
    pal = json.loads((out / "heads.json").read_text())["heads"]["pal_sts"]
    assert (pal["kind"], pal["task"], pal["size"], pal["heads"]) == ("pal", "sts", 8, 2)


def test_cli_errors_are_one_line(exported, tmp_path):
    with pytest.raises(SystemExit) as error:
        convert_weights.main(["--export", str(tmp_path), "--out", str(tmp_path / "out")])
    assert error.value.code == f"convert_weights.py: error: {tmp_path} is not a run folder: it has no config.yaml"
    out, _ = exported
    with pytest.raises(SystemExit) as error:
        convert_weights.main(["--export", str(tmp_path), "--out", str(out)])
    assert error.value.code == f"convert_weights.py: error: --out {out} is not empty: export into a new folder"
    with pytest.raises(SystemExit) as error:  # argparse's usage error: exit status 2
        convert_weights.main(["--export", str(tmp_path)])
    assert error.value.code == 2
