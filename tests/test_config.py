"""Strict typed configs: YAML files, `base:` inheritance and command-line overrides."""

from pathlib import Path

import pytest
import yaml

from jaxbert.config import Config, ConfigError, load_config, parse_overrides, save_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def write(path, text):
    path.write_text(text)
    return path


@pytest.mark.parametrize("name", sorted(p.name for p in CONFIGS.glob("*.yaml")))
def test_shipped_configs_load(name):
    assert isinstance(load_config(CONFIGS / name), Config)


def test_overrides_by_short_and_dotted_name():
    overrides = parse_overrides(["--sampler=annealed", "--train.lr", "3e-5", "--tasks", "sst,sts", "--resume",
                                 "--freeze-encoder", "false", "--data-dir=/x", "--max-steps=7"])
    config = load_config(None, overrides)
    assert config.train.sampler == "annealed" and config.train.lr == 3e-5
    assert config.tasks == ["sst", "sts"] and config.resume is True and config.model.freeze_encoder is False
    assert config.data.data_dir == "/x" and config.train.max_steps == 7


def test_base_file_is_extended(tmp_path):
    write(tmp_path / "base.yaml", "train:\n  lr: 1.0e-5\n  epochs: 3\n")
    config = load_config(write(tmp_path / "child.yaml", "base: base.yaml\ntrain:\n  epochs: 5\n"))
    assert config.train.lr == 1e-5 and config.train.epochs == 5


def test_saved_config_reloads_identically(tmp_path):
    config = load_config(CONFIGS / "cosine_heads.yaml", {"train.seed": "3"})
    save_config(config, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == config


@pytest.mark.parametrize("text, message", [
    ("train:\n  lrr: 1.0\n", "unknown config key 'train.lrr'"),
    ("train:\n  epochs: three\n", "train.epochs: expected an integer, got 'three'"),
    ("train:\n  lr: [1]\n", "train.lr: expected a number"),
    ("model: 3\n", "model: expected a mapping"),
    ("train:\n  sampler: random\n", "train.sampler is 'random'; allowed: roundrobin"),
    ("tasks: [sst, mnli]\n", "tasks ['sst', 'mnli'] must be a non-empty subset"),
    ("heads:\n  sts_encoding: cross\n", "heads.sts_head must be 'linear'"),
    ("data:\n  buckets: [32, 64]\n", "must include data.max_length 128"),
])
def test_bad_yaml_names_file_and_key(tmp_path, text, message):
    path = write(tmp_path / "bad.yaml", text)
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")) as info:
        load_config(path)
    if "allowed" not in message and "subset" not in message and "must" not in message:
        assert str(path) in str(info.value)


@pytest.mark.parametrize("argv, message", [
    (["--lrr=1"], "unknown option --lrr"),
    (["--epochs"], "--epochs needs a value"),
    (["positional"], "unexpected argument 'positional'"),
])
def test_bad_command_line(argv, message):
    with pytest.raises(ConfigError, match=message):
        parse_overrides(argv)


def test_wrong_type_on_command_line():
    with pytest.raises(ConfigError, match="train.batch_size: expected an integer, got 'big'"):
        load_config(None, parse_overrides(["--batch-size=big"]))


def test_missing_file():
    with pytest.raises(ConfigError, match="nowhere.yaml does not exist"):
        load_config("nowhere.yaml")


def test_resolved_config_is_plain_yaml(tmp_path):
    save_config(Config(), tmp_path / "c.yaml")
    assert yaml.safe_load((tmp_path / "c.yaml").read_text())["train"]["sampler"] == "roundrobin"


def test_method_flags_and_their_errors():
    config = load_config(None, parse_overrides(["--pcgrad", "--smart", "--epsilon=1e-4"]))
    assert config.train.surgery == "pcgrad" and config.smart.enabled and config.smart.epsilon == 1e-4
    assert load_config(None, parse_overrides(["--gradvac"])).train.surgery == "gradvac"
    with pytest.raises(ConfigError, match="smart.*epsilon"):
        load_config(None, parse_overrides(["--smart.epsilon=-1"]))
    with pytest.raises(ConfigError, match="losses.sst is 'focal'"):
        load_config(None, parse_overrides(["--losses.sst=focal"]))
    with pytest.raises(ConfigError, match="losses.simcse_tasks"):
        load_config(None, parse_overrides(["--simcse-tasks=sst,mnli"]))
    with pytest.raises(ConfigError, match="train.surgery 'pcgrad'.*balanced"):
        load_config(None, parse_overrides(["--pcgrad", "--loss-combination=balanced"]))


def test_speed_options_and_their_errors():
    config = load_config(None, parse_overrides(["--accumulation-steps=4", "--remat", "--attention=xla",
                                                "--batch-size=32"]))
    assert (config.train.accumulation_steps, config.model.remat, config.model.attention) == (4, True, "xla")
    assert (Config().train.accumulation_steps, Config().model.remat, Config().model.attention) == (1, False, "auto")
    with pytest.raises(ConfigError, match="train.accumulation_steps 3 must be a positive divisor of "
                                          "train.batch_size 32"):
        load_config(None, parse_overrides(["--accumulation-steps=3", "--batch-size=32"]))
    with pytest.raises(ConfigError, match="train.accumulation_steps 0"):
        load_config(None, parse_overrides(["--accumulation-steps=0"]))
    with pytest.raises(ConfigError, match="'balanced'.*train.accumulation_steps 1"):
        load_config(None, parse_overrides(["--accumulation-steps=2", "--loss-combination=balanced"]))
    with pytest.raises(ConfigError, match="model.attention is 'flash'; allowed: auto, xla, cudnn"):
        load_config(None, parse_overrides(["--attention=flash"]))
