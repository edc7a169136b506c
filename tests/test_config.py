"""Strict typed configs: YAML files, `base:` inheritance and command-line overrides."""

import dataclasses
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import jaxbert.config
from jaxbert import choices
from jaxbert.config import (ALIASES, CHOICES, SHORTHANDS, Config, ConfigError, StageConfig, describe, help_text,
                            leaf_paths, load_config, parse_overrides, resolve_stage, save_config, stage_names)

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"


def write(path, text):
    path.write_text(text)
    return path


@pytest.mark.parametrize("name", sorted(p.name for p in CONFIGS.glob("*.yaml")))
def test_shipped_configs_load(name):
    assert isinstance(load_config(CONFIGS / name), Config)


def test_overrides_by_short_and_dotted_name():
    overrides = parse_overrides(["--sampler=annealed", "--train.lr", "3e-5", "--tasks", "sst,sts", "--remat",
                                 "--freeze-encoder", "false", "--data-dir=/x", "--max-steps=7"])
    config = load_config(None, overrides)
    assert config.train.sampler == "annealed" and config.train.lr == 3e-5
    assert config.tasks == ["sst", "sts"] and config.model.remat is True and config.model.freeze_encoder is False
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
    ("data:\n  buckets: [32, 64]\n",
     "data.buckets [32, 64] must be positive lengths, data.max_length 128 the largest"),
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
    config = load_config(None, parse_overrides(["--pcgrad", "--smart", "--smart.epsilon=1e-4"]))
    assert config.train.surgery == "pcgrad" and config.smart.enabled and config.smart.epsilon == 1e-4
    assert load_config(None, parse_overrides(["--gradvac"])).train.surgery == "gradvac"
    with pytest.raises(ConfigError, match=re.escape("smart.epsilon must be a finite number >= 0, got -1.0")):
        load_config(None, parse_overrides(["--smart.epsilon=-1"]))
    with pytest.raises(ConfigError, match="losses.sst is 'focal'"):
        load_config(None, parse_overrides(["--losses.sst=focal"]))
    with pytest.raises(ConfigError, match=re.escape("losses.simcse_tasks ['mnli'] are not tasks")):
        load_config(None, parse_overrides(["--losses.simcse_tasks=sst,mnli"]))
    with pytest.raises(ConfigError, match="train.surgery 'pcgrad'.*balanced"):
        load_config(None, parse_overrides(["--pcgrad", "--train.loss_combination=balanced"]))


def test_speed_options_and_their_errors():
    config = load_config(None, parse_overrides(["--accumulation-steps=4", "--remat", "--model.attention=xla",
                                                "--batch-size=32"]))
    assert (config.train.accumulation_steps, config.model.remat, config.model.attention) == (4, True, "xla")
    assert (Config().train.accumulation_steps, Config().model.remat, Config().model.attention) == (1, False, "auto")
    with pytest.raises(ConfigError, match="train.accumulation_steps 3 must be a positive divisor of "
                                          "train.batch_size 32"):
        load_config(None, parse_overrides(["--accumulation-steps=3", "--batch-size=32"]))
    with pytest.raises(ConfigError, match="train.accumulation_steps 0"):
        load_config(None, parse_overrides(["--accumulation-steps=0"]))
    with pytest.raises(ConfigError, match="'balanced'.*train.accumulation_steps 1"):
        load_config(None, parse_overrides(["--accumulation-steps=2", "--train.loss_combination=balanced"]))
    with pytest.raises(ConfigError, match="model.attention is 'flash'; allowed: auto, xla, cudnn"):
        load_config(None, parse_overrides(["--model.attention=flash"]))


STAGED = """\
tasks: [sst, para, sts]
train:
  lr: 2.0e-5
  epochs: 3
  loss_combination: weights
  loss_weights: {sst: 1.0, para: 2.0, sts: 3.0}
  stage_cycles: 2
stages:
  - name: heads
    freeze_encoder: true
    lr: 1.0e-3
    epochs: 1
  - tasks: [sts]
    sampler: sequential
"""


def test_stages_inherit_what_they_leave_unset(tmp_path):
    config = load_config(write(tmp_path / "staged.yaml", STAGED))
    assert config.stages == [StageConfig(name="heads", freeze_encoder=True, lr=1e-3, epochs=1),
                             StageConfig(tasks=["sts"], sampler="sequential")]
    assert stage_names(config) == ["heads", "stage2"]
    heads, sts = (resolve_stage(config, stage) for stage in config.stages)
    assert heads.model.freeze_encoder and heads.train.lr == 1e-3 and heads.train.epochs == 1
    assert heads.tasks == ["sst", "para", "sts"] and heads.train.sampler == "roundrobin"
    assert heads.train.loss_weights == {"sst": 1.0, "para": 2.0, "sts": 3.0}
    assert not sts.model.freeze_encoder and sts.train.lr == 2e-5 and sts.train.epochs == 3
    assert sts.tasks == ["sts"] and sts.train.sampler == "sequential" and sts.train.loss_weights == {"sts": 3.0}
    assert heads.stages == [] and heads.train.stage_cycles == 1  # a resolved stage is a single-stage run
    assert config.train.lr == 2e-5 and config.stages[0].lr == 1e-3  # resolving copies, the run keeps its own


def test_staged_config_reloads_identically(tmp_path):
    config = load_config(write(tmp_path / "staged.yaml", STAGED), {"train.seed": "3"})
    save_config(config, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == config


@pytest.mark.parametrize("text, message", [
    ("stages:\n  - name: a\n  - lrr: 1.0\n", "unknown config key 'stages[1].lrr'"),
    ("stages:\n  - name: a\n  - lr: fast\n", "stages[1].lr: expected a number, got 'fast'"),
    ("stages:\n  - freeze_encoder: maybe\n", "stages[0].freeze_encoder: expected true or false"),
    ("stages: [3]\n", "stages[0]: expected a mapping of StageConfig fields, got 3"),
    ("stages: {name: a}\n", "stages: expected a list"),
])
def test_bad_stage_key_or_type_names_file_index_and_key(tmp_path, text, message):
    path = write(tmp_path / "bad.yaml", text)
    with pytest.raises(ConfigError, match=re.escape(message)) as info:
        load_config(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("text, message", [
    ("stages:\n  - name: a\n  - sampler: random\n", "stages[1].sampler is 'random'; allowed: roundrobin"),
    ("stages:\n  - surgery: pcgard\n", "stages[0].surgery is 'pcgard'; allowed: none, pcgrad"),
    ("tasks: [sst, sts]\nstages:\n  - tasks: [para]\n",
     "stages[0].tasks ['para'] must be a non-empty subset of the run's tasks ['sst', 'sts']"),
    ("stages:\n  - tasks: []\n", "stages[0].tasks [] must be a non-empty subset"),
    ("stages:\n  - name: a\n  - {name: b, epoch_length: steps}\n",
     "stages[1] (b): train.epoch_length 'steps' needs train.steps_per_epoch"),
    ("stages:\n  - {surgery: pcgrad, loss_combination: balanced}\n",
     "stages[0] (stage1): train.surgery 'pcgrad' combines raw task gradients"),
    ("stages:\n  - name: a\n  - name: a\n", "stage names must differ from each other, got ['a', 'a']"),
    ("stages:\n  - name: a\ntrain:\n  stage_cycles: 0\n", "train.stage_cycles must be at least 1, got 0"),
    ("train:\n  stage_cycles: 2\n", "without stages it must be 1, got 2"),
    ("stages:\n  - optimizer: keep\n", "stages[0].optimizer is 'keep'; allowed: fresh, carry"),
    ("stages:\n  - optimizer: carry\n",
     "stages[0].optimizer carry: the run's first stage has no stage before it whose optimizer it could carry"),
    ("stages:\n  - name: a\n  - {name: b, optimizer: carry, lr: 1.0e-3, freeze_encoder: true}\n",
     "stages[1].optimizer carry: the optimizer it carries is another one, train.lr, model.freeze_encoder differ "
     "from the stage before's"),
    ("stages:\n  - {name: a, optimizer: carry}\n  - {name: b, lr: 1.0e-3}\ntrain: {stage_cycles: 2}\n",
     "stages[0].optimizer carry: the optimizer it carries is another one, train.lr differ"),
    ("heads: {pal_size: 12}\nsmart: {enabled: true}\nstages:\n  - {freeze_encoder: true, freeze_pals: true}\n",
     "stages[0] (stage1): smart.steps 1: with the encoder frozen and no PALs trained, no gradient reaches the "
     "perturbed embeddings"),
    ("stages:\n  - {freeze_pals: true}\n",
     "stages[0] (stage1): model.freeze_pals: the run has no projected attention layers to freeze"),
])
def test_bad_stage_value_names_index_and_key(tmp_path, text, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(write(tmp_path / "bad.yaml", text))


def test_stages_on_the_command_line():
    assert load_config(None, parse_overrides(["--stages="])).stages == []
    with pytest.raises(ConfigError, match=re.escape("stages[0]: expected a mapping of StageConfig fields")):
        load_config(None, parse_overrides(["--stages=heads"]))
    with pytest.raises(ConfigError, match="train.stage_cycles: expected an integer"):
        load_config(None, parse_overrides(["--train.stage_cycles=twice"]))


def test_report_recipes_and_their_errors():
    """Per-task updates (report 002's baseline) and SMART on chosen tasks with several random starts (001)."""
    config = load_config(None, parse_overrides(["--train.updates=per_task", "--smart", "--smart.tasks=sst",
                                                "--smart.samples=7", "--smart.steps=0"]))
    assert (config.train.updates, config.smart.tasks, config.smart.samples, config.smart.steps) == (
        "per_task", ["sst"], 7, 0)
    with pytest.raises(ConfigError, match="train.updates 'per_task'.*surgery none.*'pcgrad'"):
        load_config(None, parse_overrides(["--train.updates=per_task", "--pcgrad"]))
    with pytest.raises(ConfigError, match="train.updates 'per_task'.*sum or weights.*'mean'"):
        load_config(None, parse_overrides(["--train.updates=per_task", "--train.loss_combination=mean"]))
    with pytest.raises(ConfigError, match="train.updates is 'each'"):
        load_config(None, parse_overrides(["--train.updates=each"]))
    with pytest.raises(ConfigError, match=re.escape("smart.tasks ['cfimdb'] must be a non-empty subset of the "
                                                    "run's tasks with a prediction to smooth: sst, para, sts")):
        load_config(None, parse_overrides(["--smart.tasks=cfimdb"]))
    with pytest.raises(ConfigError, match=re.escape("smart.samples must be an integer >= 1, got 0")):
        load_config(None, parse_overrides(["--smart.samples=0"]))


# ----------------------------------------------------------------------------- acceptance criteria of the redesign


def run_python(*args):
    """`python *args` in the repository root, with it on the import path."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def test_config_imports_no_jax():
    """The bottom layer loads without JAX, Flax or Optax: a config is checked before anything heavy is imported."""
    result = run_python("-c", "import jaxbert.config, sys; print('\\n'.join(sorted(sys.modules)))")
    assert result.returncode == 0, result.stderr
    modules = result.stdout.split()
    assert "jaxbert.config" in modules
    heavy = [m for m in modules if m.startswith(("jax", "flax", "optax")) and not m.startswith("jaxbert")]
    assert heavy == []
    assert sorted(m for m in modules if m.split(".")[0] == "jaxbert") == [
        "jaxbert", "jaxbert.choices", "jaxbert.config", "jaxbert.errors", "jaxbert.tasks"]


def test_train_script_reports_an_unknown_option_in_one_line():
    result = run_python("train.py", "--steps=5")
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("train.py: error:"), lines[0]
    assert "--smart.steps" in lines[0] and "--train.steps_per_epoch" in lines[0]


def test_aliases_and_shorthands_name_real_settings():
    paths = leaf_paths()
    assert set(ALIASES) == {
        "tasks", "out", "checkpoint", "dtype", "freeze_encoder", "hidden_dropout", "attention_dropout",
        "remat", "sts_head", "hidden_layers", "activation", "data_dir", "sampler", "surgery", "lr", "epochs",
        "max_steps", "batch_size", "accumulation_steps", "seed", "seeds", "vmap_seeds"}
    for alias, key in ALIASES.items():
        assert key in paths, (alias, key)
        value = "true" if paths[key] is bool else "x"
        assert parse_overrides([f"--{alias.replace('_', '-')}={value}"]) == {key: value}
    assert set(SHORTHANDS) == {*(s for s in choices.SURGERIES if s != "none"), "smart"}
    for name, (key, value) in SHORTHANDS.items():
        assert key in paths, (name, key)
        if key in CHOICES:
            assert value == name and value in CHOICES[key], (name, key, value)
        else:
            assert paths[key] is bool and value == "true", (name, key, value)
        assert parse_overrides([f"--{name}"]) == {key: value}
        assert jaxbert.config.get(load_config(None, parse_overrides([f"--{name}"])), key) == (
            True if value == "true" else value)
    # A bare field name that is no alias is an error that names the dotted key.
    with pytest.raises(ConfigError, match=r"unknown option --eval-batch-size; did you mean --train\.eval_batch_size\b"):
        parse_overrides(["--eval-batch-size=3"])
    assert parse_overrides(["--train.eval_batch_size=3"]) == {"train.eval_batch_size": "3"}


def test_configs_are_frozen_and_replaced_by_copy():
    config = load_config(None, {})
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.train.lr = 1
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.tasks = ["sst"]
    replaced = jaxbert.config.replace(config, {"train.lr": "3e-5"})
    assert replaced is not config and replaced.train.lr == 3e-5 and type(replaced.train.lr) is float
    assert config.train.lr == 2e-5 == Config().train.lr  # the original is unchanged
    assert replaced == dataclasses.replace(config, train=dataclasses.replace(config.train, lr=3e-5))


# ----------------------------------------------------------------------------- task_defs

IMDB = {"kind": "classification", "num_classes": 2, "text": ["review"], "label": "stars",
        "files": {"train": "imdb-train.tsv", "dev": "imdb-dev.tsv"}}
MYSIM = {"kind": "regression", "label_range": [0, 5], "text": ["a", "b"], "label": "score", "encoding": "bi",
         "files": {"train": "sim-train.tsv"}}


def test_task_defs_define_tasks_like_the_builtins(tmp_path):
    path = write(tmp_path / "own.yaml", yaml.safe_dump({
        "tasks": ["sst", "imdb", "mysim"], "task_defs": {"imdb": IMDB, "mysim": MYSIM},
        "heads": {"task_hidden_layers": {"mysim": 1}}, "smart": {"enabled": True, "tasks": ["imdb"]},
        "train": {"loss_combination": "weights", "loss_weights": {"sst": 1.0, "imdb": 2.0, "mysim": 0.5}}}))
    config = load_config(path)
    imdb, mysim = config.task("imdb"), config.task("mysim")
    assert (imdb.kind, imdb.num_classes, imdb.outputs, imdb.encoding, imdb.metric) == ("classification", 2, 2,
                                                                                        "single", "accuracy")
    assert imdb.prediction_header == "Predicted_stars" and imdb.file("train") == "imdb-train.tsv"
    assert not imdb.has_split("test") and imdb.defined_in == "task_defs.imdb"
    assert (mysim.score_range, mysim.encoding, mysim.metric, mysim.label_range) == ((0, 5), "bi", "pearson", (0, 5))
    assert config.heads.regression_head(mysim) == "cosine" and config.heads.projects(mysim, mysim)
    assert config.smart.smooths(imdb) and not config.smart.smooths(mysim)
    assert config.known_tasks[-2:] == ("imdb", "mysim")
    # A cross-encoded regression pair gets a linear regressor; a saved config reloads the same tasks.
    cross = load_config(path, {"task_defs": {"imdb": IMDB, "mysim": {**MYSIM, "encoding": "cross"}}})
    assert config.heads.regression_head(cross.task("mysim")) == "linear" and not cross.heads.cosine(cross.task("mysim"))
    save_config(config, tmp_path / "saved.yaml")
    assert load_config(tmp_path / "saved.yaml") == config
    hub = load_config(None, {"tasks": "h", "task_defs": {"h": {**IMDB, "files": {}, "hf": {
        "dataset": "stanfordnlp/imdb", "splits": {"train": "train", "test": "test"}, "columns": {"review": "text"}}}}})
    assert hub.task("h").hub.columns == {"review": "text", "stars": "stars"} and hub.task("h").has_split("test")


@pytest.mark.parametrize("definition, message", [
    ({**IMDB, "kind": ""}, "task_defs.mine.kind is missing; allowed: classification, regression"),
    ({**IMDB, "kind": "ranking"}, "task_defs.mine.kind is 'ranking'; allowed: classification, regression"),
    ({**IMDB, "num_classes": 1}, "task_defs.mine.num_classes is 1: a classification task needs at least 2 classes"),
    ({k: v for k, v in IMDB.items() if k != "num_classes"}, "task_defs.mine.num_classes is missing"),
    ({**IMDB, "label": ""}, "task_defs.mine.label is missing"),
    ({**IMDB, "text": ["a", "b", "c"]}, "task_defs.mine.text must name one column (a single sentence) or two"),
    ({**IMDB, "text": ["stars"]}, "task_defs.mine.label 'stars' and text ['stars'] must be different columns"),
    ({**IMDB, "files": {"dev": "d.tsv"}}, "task_defs.mine.files needs a train file"),
    ({**IMDB, "files": {"train": "t.tsv", "valid": "v.tsv"}}, "task_defs.mine.files {'train': 't.tsv', 'valid'"),
    ({**IMDB, "label_range": [0, 1]}, "task_defs.mine.label_range is for regression tasks"),
    ({**IMDB, "encoding": "bi"}, "task_defs.mine.encoding 'bi': only a pair task (two text columns) has one"),
    ({**IMDB, "num_classes": 3, "binary": True}, "task_defs.mine.binary needs num_classes 2, got 3"),
    ({**MYSIM, "label_range": [5, 0]}, "task_defs.mine.label_range must be [lo, hi] with lo < hi"),
    ({**MYSIM, "label_range": None}, "task_defs.mine.label_range must be [lo, hi]"),
    ({**MYSIM, "num_classes": 3}, "task_defs.mine.num_classes and binary are for classification tasks"),
    ({**IMDB, "delimiter": ";;"}, "task_defs.mine.delimiter must be one character"),
    ({**IMDB, "delimiter": '"'}, "task_defs.mine.delimiter must be one character other than a quote or a line break"),
    ({**IMDB, "hf": {"dataset": "x", "columns": {"body": "text"}}}, "task_defs.mine.hf.columns maps ['body']"),
    ({**IMDB, "colour": "red"}, "unknown config key 'task_defs.mine.colour'"),
    ({**IMDB, "num_classes": "two"}, "task_defs.mine.num_classes: expected an integer, got 'two'"),
])
def test_bad_task_def_names_the_task_and_the_field(definition, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(None, {"tasks": "mine", "task_defs": {"mine": definition}})


def test_task_def_names_and_references():
    with pytest.raises(ConfigError, match=re.escape("task_defs.sst: 'sst' is a built-in task; give yours another")):
        load_config(None, {"task_defs": {"sst": IMDB}})
    with pytest.raises(ConfigError, match=re.escape("task_defs.my task: a task name must start with a letter")):
        load_config(None, {"task_defs": {"my task": IMDB}})
    for taken in ("bert", "overall", "pal_sst"):  # a params key or a dev metric of its own
        with pytest.raises(ConfigError, match=re.escape(f"task_defs.{taken}: {taken!r} is taken by the model's")):
            load_config(None, {"task_defs": {taken: IMDB}})
    with pytest.raises(ConfigError, match=re.escape("data.source 'hf' reads every task from its Hugging Face source, "
                                                    "and cfimdb, imdb has none")):
        load_config(None, {"tasks": "sst,cfimdb,imdb", "task_defs": {"imdb": IMDB}, "data.source": "hf"})
    with pytest.raises(ConfigError, match=re.escape("tasks ['imbd'] must be a non-empty subset of the known tasks: "
                                                    "sst, cfimdb, para, sts, nli, tweet, imdb")):
        load_config(None, {"tasks": "imbd", "task_defs": {"imdb": IMDB}})
    with pytest.raises(ConfigError, match=re.escape("smart.tasks ['mysim'] must be a non-empty subset")):
        load_config(None, {"tasks": "imdb", "task_defs": {"imdb": IMDB, "mysim": MYSIM}, "smart.enabled": "true",
                           "smart.tasks": "mysim"})


# ----------------------------------------------------------------------------- --help


SECTIONS = (jaxbert.config.ModelConfig, jaxbert.config.HeadsConfig, jaxbert.config.DataConfig,
            jaxbert.config.TrainConfig, jaxbert.config.LossConfig, jaxbert.config.SmartConfig)
DESCRIBED = (Config, *SECTIONS, StageConfig, jaxbert.config.TaskDef, jaxbert.config.HubConfig)


def test_every_field_is_described_by_the_comment_on_it():
    for cls in DESCRIBED:
        source = jaxbert.config._class_source(cls)
        for field in dataclasses.fields(cls):
            text = describe(cls, field.name)
            assert text.strip(), f"{cls.__name__}.{field.name} has no comment"
            if cls is not StageConfig or field.name in ("name", "tasks"):
                assert re.search(rf"\n    {field.name}: [^#]*# {re.escape(text)}\n", source), (cls, field.name)
    # A stage's field without a comment of its own is described by the field it inherits.
    assert describe(StageConfig, "lr") == describe(jaxbert.config.TrainConfig, "lr") == "AdamW's peak learning rate"
    assert describe(StageConfig, "freeze_encoder") == describe(jaxbert.config.ModelConfig, "freeze_encoder")


def help_line(text, key):
    lines = [line for line in text.splitlines() if line.startswith(f"  {key} ")]
    assert len(lines) == 1, (key, lines)
    return re.sub(r"\s+", " ", lines[0].strip())


def test_help_lists_every_key_with_type_default_choices_and_description():
    text = help_text()
    for key in leaf_paths():
        if key not in ("stages", "task_defs"):
            assert help_line(text, key)
    assert help_line(text, "train.sampler") == (
        "train.sampler str = roundrobin the tasks of each step: every one, one after another, or drawn by size "
        "[roundrobin | sequential | proportional | annealed]")
    assert help_line(text, "train.seeds").startswith("train.seeds int | list[int] = 1 N: seed")
    assert help_line(text, "model.hidden_dropout").startswith("model.hidden_dropout float | null = null the encoder's")
    assert help_line(text, "data.buckets").startswith("data.buckets list[int] = [32, 64, 128] ")
    assert help_line(text, "heads.task_hidden_layers").startswith("heads.task_hidden_layers dict[str, int] = {} ")
    assert help_line(text, "tasks").startswith("tasks list[str] = [sst, para, sts] ")
    # stages and task_defs: their fields, YAML-only stages inheriting the run's keys
    assert "stages: YAML only" in text and "task_defs: the user's own tasks, by name" in text
    assert help_line(text, "stages[k].lr") == "stages[k].lr float | null = train.lr AdamW's peak learning rate"
    assert help_line(text, "stages[k].surgery").endswith("[none | pcgrad | pcgrad_two_updates | gradvac | cagrad | "
                                                        "mgda | imtl_g]")
    assert help_line(text, "stages[k].freeze_encoder").startswith("stages[k].freeze_encoder bool | null = "
                                                                  "model.freeze_encoder train the heads only")
    for field in dataclasses.fields(jaxbert.config.TaskDef):
        assert help_line(text, f"task_defs.NAME.{field.name}")
    assert help_line(text, "task_defs.NAME.hf.splits").startswith(
        "task_defs.NAME.hf.splits dict[str, str] = {train: train, dev: validation, test: test} ")
    assert help_line(text, "task_defs.NAME.delimiter").startswith('task_defs.NAME.delimiter str = "\\t" ')
    # then the aliases and the shorthands
    assert help_line(text, "--lr") == "--lr --train.lr"
    assert help_line(text, "--vmap-seeds") == "--vmap-seeds --train.vmap_seeds"
    assert help_line(text, "--pcgrad") == "--pcgrad --train.surgery=pcgrad"
    assert help_line(text, "--smart") == "--smart --smart.enabled=true (--smart=false: off)"
    headings = [text.index(f"\n{name}:") for name in ("run", "model", "smart", "stages", "task_defs", "aliases")]
    assert headings == sorted(headings)


def test_help_of_one_section():
    train = help_text("train")
    assert train.startswith("train: sampling, optimizer, surgery, seeds (--train.KEY=VALUE)\n  train.sampler ")
    assert "model." not in train and "--lr" not in train and train in help_text()
    assert help_text("aliases").startswith("aliases: short forms") and "--pcgrad" in help_text("aliases")
    assert "task_defs.NAME.hf.dataset" in help_text("task_defs")
    with pytest.raises(ConfigError, match=re.escape("--help trian: no such section; sections: run, model, heads, "
                                                    "data, train, losses, smart, distributed, stages, task_defs, aliases")):
        help_text("trian")


def test_train_script_help():
    import train

    assert train.requested_help(["--lr=1", "--tasks", "sst"]) is None
    full = train.requested_help(["--lr=1", "--help"])
    assert full == train.requested_help(["-h"]) == f"{train.__doc__.rstrip()}\n\n{help_text()}"
    assert "python train.py --pcgrad --smart" in full and "--overwrite" in full and "--dry-run" in full
    assert train.requested_help(["--help", "smart"]) == train.requested_help(["--help=smart"]) == help_text("smart")
    result = run_python("train.py", "--help", "train")
    assert result.returncode == 0 and result.stdout == help_text("train"), result.stderr
    result = run_python("train.py", "--help=nope")
    assert result.returncode != 0 and result.stderr.strip().splitlines() == [
        "train.py: error: --help nope: no such section; sections: run, model, heads, data, train, losses, smart, "
        "distributed, stages, task_defs, aliases"]


# ----------------------------------------------------------------------------- command-line values


@pytest.mark.parametrize("argv, key, value", [
    (["--smart=false"], "smart.enabled", False), (["--smart=true"], "smart.enabled", True),
    (["--smart", "false"], "smart.enabled", False), (["--smart", "yes"], "smart.enabled", True),
    (["--vmap-seeds=false"], "train.vmap_seeds", False), (["--remat=true"], "model.remat", True),
    (["--remat", "0"], "model.remat", False), (["--pcgrad=true"], "train.surgery", "pcgrad"),
    (["--gradvac", "true"], "train.surgery", "gradvac"), (["--smart"], "smart.enabled", True),
])
def test_boolean_flags_take_values(argv, key, value):
    assert jaxbert.config.get(load_config(None, parse_overrides(argv)), key) == value


@pytest.mark.parametrize("argv, message", [
    (["--pcgrad=false"], "--pcgrad=false: --pcgrad can only turn its method on; to train without one, use "
                         "--surgery=none"),
    (["--cagrad", "no"], "--cagrad no: --cagrad can only turn its method on"),
    (["--smart=maybe"], "--smart: expected true or false, got 'maybe'"),
    (["--remat=2"], "--remat: expected true or false, got '2'"),
    (["--train.vmap_seeds=on"], "--train.vmap_seeds: expected true or false, got 'on'"),
])
def test_a_boolean_flag_refuses_other_values(argv, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_overrides(argv)


def test_a_bare_boolean_leaves_the_next_argument_alone():
    assert parse_overrides(["--remat", "--tasks", "sst"]) == {"model.remat": "true", "tasks": "sst"}
    with pytest.raises(ConfigError, match="unexpected argument 'sst'"):
        parse_overrides(["--smart", "sst"])


@pytest.mark.parametrize("argv, message", [
    (["--pcgrad", "--gradvac"], "--pcgrad and --gradvac give train.surgery two values: give one"),
    (["--lr=1e-3", "--train.lr=2e-5"], "--lr=1e-3 and --train.lr=2e-5 give train.lr two values: give one"),
    (["--smart", "--smart=false"], "--smart and --smart=false give smart.enabled two values: give one"),
    (["--pcgrad", "--surgery", "none"], "--pcgrad and --surgery none give train.surgery two values"),
    (["--train.loss_weights.sst=1", "--train.loss_weights.sst", "2"],
     "--train.loss_weights.sst=1 and --train.loss_weights.sst 2 give train.loss_weights.sst two values"),
])
def test_two_values_for_one_key_are_an_error(argv, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_overrides(argv)


def test_the_same_value_twice_is_one():
    assert parse_overrides(["--pcgrad", "--surgery=pcgrad", "--train.surgery", "pcgrad"]) == {"train.surgery": "pcgrad"}
    assert load_config(None, parse_overrides(["--lr=1e-3", "--train.lr=0.001"])).train.lr == 1e-3
    assert parse_overrides(["--smart", "--smart=yes", "--smart.enabled", "1"]) == {"smart.enabled": "true"}


# ----------------------------------------------------------------------------- settings that cannot act


@pytest.mark.parametrize("argv, message", [
    (["--tasks", "sst", "--pcgrad"], "train.surgery 'pcgrad' combines the gradients of two or more tasks, and sst "
                                     "trains alone: train more tasks, or surgery none (--surgery=none)"),
    (["--tasks", "nli", "--smart"], "smart.enabled: SMART smooths a task's prediction, and none of the run's tasks "
                                    "['nli'] has one: add such a task or drop --smart"),
    (["--vmap-seeds"], "train.vmap_seeds vmaps a run's seeds in one program, and this run trains one seed: train "
                       "more (--seeds 2) or drop --vmap-seeds"),
    (["--seeds=[3]", "--vmap-seeds"], "this run trains one seed"),
    (["--tasks", "para,sts", "--losses.supcon_weight=0.5"],
     "losses.supcon_weight 0.5: the supervised contrastive term acts on softmax classification tasks, and the run's "
     "tasks ['para', 'sts'] hold none: add one or set it to 0"),
    (["--tasks", "para,sts", "--losses.simcse_weight=1"],
     "losses.simcse_weight 1.0: none of losses.simcse_tasks ['sst'] is a task of the run ['para', 'sts']: name one "
     "in losses.simcse_tasks or set the weight to 0"),
    (["--smart", "--freeze-encoder"], "smart.steps 1: with the encoder frozen and no PALs trained, no gradient "
                                      "reaches the perturbed embeddings and the ascent cannot move the perturbation"),
    (["--tasks", "sst,nli", "--train.select_by=nli"],
     "train.select_by is 'nli'; allowed: overall, mean, or a scored task of the run: sst"),
    (["--train.select_by=best"], "train.select_by is 'best'; allowed: overall, mean, or a scored task of the run: "
                                 "sst, para, sts"),
])
def test_a_setting_that_cannot_act_is_an_error(argv, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(None, parse_overrides(argv))


def test_settings_that_act_load():
    config = load_config(None, parse_overrides(["--tasks", "sst,sts", "--pcgrad", "--smart", "--seeds=2",
                                                "--vmap-seeds", "--losses.supcon_weight=1",
                                                "--losses.simcse_weight=1", "--losses.simcse_tasks=sts"]))
    assert (config.train.surgery, config.smart.enabled, config.train.seed_list) == ("pcgrad", True, [0, 1])
    assert load_config(None, parse_overrides(["--tasks", "nli,sts", "--smart"])).smart.enabled
    # A frozen encoder still passes SMART's gradient through trainable PALs, and K = 0 needs none.
    assert load_config(None, parse_overrides(["--smart", "--freeze-encoder", "--heads.pal_size=12"])).smart.enabled
    assert load_config(None, parse_overrides(["--smart", "--freeze-encoder", "--smart.steps=0"])).smart.enabled
    assert load_config(None, parse_overrides(["--train.select_by=sts"])).train.select_by == "sts"


STAGE_SWITCHES = """\
heads: {pal_size: 12}
smart: {enabled: true}
losses: {supcon_weight: 0.1}
stages:
  - {name: frozen, freeze_encoder: true, freeze_pals: true, smart: false, supcon_weight: 0.0}
  - {name: full, optimizer: fresh}
  - {name: more, optimizer: carry}
"""


def test_a_stage_switches_regularizers_and_freezing(tmp_path):
    config = load_config(write(tmp_path / "staged.yaml", STAGE_SWITCHES))
    frozen, full, more = (resolve_stage(config, stage) for stage in config.stages)
    assert frozen.model.freeze_encoder and frozen.model.freeze_pals
    assert not frozen.smart.enabled and frozen.losses.supcon_weight == 0.0
    assert full.smart.enabled and full.losses.supcon_weight == 0.1 and not full.model.freeze_pals
    assert [s.optimizer for s in config.stages] == ["fresh", "fresh", "carry"]
    save_config(config, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == config


STAGED_SURGERY = """\
tasks: [sst, para, sts]
train: {surgery: pcgrad}
stages:
  - name: all
  - {name: sts, tasks: [sts]}
  - {name: pair, tasks: [para, sts], surgery: gradvac}
"""


def test_a_one_task_stage_trains_without_the_runs_surgery(tmp_path):
    config = load_config(write(tmp_path / "staged.yaml", STAGED_SURGERY))
    assert [resolve_stage(config, stage).train.surgery for stage in config.stages] == ["pcgrad", "none", "gradvac"]
    assert config.train.surgery == "pcgrad"
    with pytest.raises(ConfigError, match=re.escape(
            "stages[1] (sts): train.surgery 'mgda' combines the gradients of two or more tasks, and sts trains alone")):
        load_config(write(tmp_path / "own.yaml", STAGED_SURGERY.replace("[sts]}", "[sts], surgery: mgda}")))
    # A stage without the tasks a method acts on trains without it: the run's tasks decide.
    smart = load_config(write(tmp_path / "smart.yaml", "tasks: [sts, nli]\nsmart: {enabled: true}\n"
                                                       "losses: {simcse_weight: 1, simcse_tasks: [sts]}\n"
                                                       "stages:\n  - tasks: [nli]\n  - tasks: [sts]\n"))
    assert resolve_stage(smart, smart.stages[0]).tasks == ["nli"]


# ----------------------------------------------------------------------------- items of mappings


def test_an_item_on_the_command_line_merges_into_the_files_mapping(tmp_path):
    path = write(tmp_path / "w.yaml", "train:\n  loss_combination: weights\n  loss_weights: {sst: 1, para: 2, sts: 3}\n"
                                      "data:\n  files: {sst: {dev: d.csv}}\n")
    config = load_config(path, parse_overrides(["--train.loss_weights.sst=5", "--heads.task_hidden_layers.sts=1",
                                                "--data.files.sst.train=my.csv", "--data.files.para.dev=p.csv"]))
    assert config.train.loss_weights == {"sst": 5.0, "para": 2.0, "sts": 3.0}
    assert config.heads.task_hidden_layers == {"sts": 1}
    assert config.data.files == {"sst": {"dev": "d.csv", "train": "my.csv"}, "para": {"dev": "p.csv"}}
    # A mapping given whole replaces the file's, as a YAML layer does.
    whole = load_config(path, parse_overrides(["--train.loss_weights={sst: 1, para: 2, sts: 0.5}"]))
    assert whole.train.loss_weights == {"sst": 1.0, "para": 2.0, "sts": 0.5}
    with pytest.raises(ConfigError, match=re.escape("train.loss_weights must give a weight for each task")):
        load_config(path, parse_overrides(["--train.loss_weights={sst: 1}"]))
    with pytest.raises(ConfigError, match=re.escape("train.loss_weights: expected a mapping ({name: value, ...}), "
                                                    "got 'sst'")):
        load_config(path, parse_overrides(["--train.loss_weights=sst"]))
    with pytest.raises(ConfigError, match="train.loss_weights.para: expected a number, got 'x'"):
        load_config(path, parse_overrides(["--train.loss_weights.para=x"]))


def test_task_def_fields_on_the_command_line(tmp_path):
    path = write(tmp_path / "own.yaml", yaml.safe_dump({"tasks": ["sst", "imdb"], "task_defs": {"imdb": IMDB}}))
    config = load_config(path, parse_overrides(["--task_defs.imdb.num_classes=3", "--task_defs.imdb.hf.dataset=x/y",
                                                "--task_defs.imdb.hf.splits.dev=valid",
                                                "--task_defs.imdb.files.test=t.tsv"]))
    imdb = config.task_defs["imdb"]
    assert imdb.num_classes == 3 and imdb.text == ["review"] and imdb.label == "stars"
    assert imdb.files == {**IMDB["files"], "test": "t.tsv"}
    assert imdb.hf.dataset == "x/y" and imdb.hf.splits == {"train": "train", "dev": "valid", "test": "test"}
    new = load_config(None, parse_overrides(["--tasks=mine", "--task_defs.mine={kind: regression, text: [a, b], "
                                             "label: s, label_range: [0, 1], files: {train: t.tsv}}",
                                             "--task_defs.mine.encoding=bi"]))
    assert new.task("mine").encoding == "bi" and new.task("mine").score_range == (0, 1)


@pytest.mark.parametrize("argv, message", [
    (["--train.lr.x=1"], "unknown option --train.lr.x: train.lr is a float setting, without items"),
    (["--tasks.sst=1"], "unknown option --tasks.sst: tasks is a list[str] setting, without items"),
    (["--task_defs.imdb.colour=red"], "unknown option --task_defs.imdb.colour: task_defs.imdb has the fields kind, "
                                      "text, label"),
    (["--task_defs.imdb.hf.url=x"], "unknown option --task_defs.imdb.hf.url: task_defs.imdb.hf has the fields "
                                    "dataset, config, splits, columns"),
    (["--train.loss_weight.sst=2"], "unknown option --train.loss_weight.sst; did you mean --train.loss_weights.sst?"),
    (["--task_def.x.kind=regression"], "unknown option --task_def.x.kind; did you mean --task_defs.x.kind?"),
    (["--heads.task_hidden_layers.sts"], "--heads.task_hidden_layers.sts needs a value"),
])
def test_bad_item_paths_name_the_option(argv, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_overrides(argv)


# ----------------------------------------------------------------------------- seeds


@pytest.mark.parametrize("argv, seed, seeds, seed_list", [
    (["--seeds", "3"], 0, 3, [0, 1, 2]),
    (["--seeds=3", "--seed=4"], 4, 3, [4, 5, 6]),
    (["--seeds", "0,1,5"], 0, [0, 1, 5], [0, 1, 5]),
    (["--seeds=[5, 1]"], 5, [5, 1], [5, 1]),
    (["--seeds", "2,3,4"], 2, 3, [2, 3, 4]),  # consecutive: the count it stands for
    (["--seeds=7,", "--seed=9"], 7, 1, [7]),  # a list overrides train.seed
])
def test_seeds_are_a_number_or_a_list(argv, seed, seeds, seed_list, tmp_path):
    config = load_config(None, parse_overrides(argv))
    assert (config.train.seed, config.train.seeds, config.train.seed_list) == (seed, seeds, seed_list)
    save_config(config, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == config


@pytest.mark.parametrize("value, message", [
    ("0", "train.seeds must be at least 1, got 0"),
    ("0,0", "train.seeds: [0, 0] repeats a seed"),
    ("1,-2", "train.seeds: -2 is not a non-negative integer"),
    ("[]", "train.seeds must name at least one seed, got []"),
])
def test_bad_seeds(value, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(None, {"train.seeds": value})


def test_one_seed_rule_for_train_and_suites():
    assert jaxbert.config.parse_seeds(3, "seeds") == [0, 1, 2] == jaxbert.config.parse_seeds("3", "seeds")
    assert jaxbert.config.parse_seeds("0,1,5", "seeds") == [0, 1, 5] == jaxbert.config.parse_seeds([0, 1, 5], "seeds")
    assert jaxbert.config.parse_seeds(2, "seeds", first=4) == [4, 5]
    with pytest.raises(ConfigError, match=re.escape("--seeds must be a number of seeds (3) or a list of seeds "
                                                    "(0,1,5), got 'a,b'")):
        jaxbert.config.parse_seeds("a,b", "--seeds")


# ----------------------------------------------------------------------------- resume and train.py's flags


def test_resume_is_no_config_key(tmp_path):
    assert "resume" not in leaf_paths() and "resume" not in ALIASES
    assert "resume" not in yaml.safe_load(yaml.safe_dump(jaxbert.config.to_dict(Config())))
    path = write(tmp_path / "config.yaml", "out: runs/x\nresume: false\n")
    with pytest.raises(ConfigError, match=re.escape(f"{path}: `resume:` is no config key: --resume is a flag of "
                                                    "train.py's command line (an older run folder's config.yaml holds "
                                                    "`resume: false`: delete that line)")):
        load_config(path)
    with pytest.raises(ConfigError, match="unknown option --resume"):
        parse_overrides(["--resume"])


def test_train_script_flags(tmp_path):
    import train

    path = write(tmp_path / "c.yaml", "train: {lr: 1.0e-3}\n")
    config, flags = train.parse_args(["--config", str(path), "--resume", "--epochs=2"])
    assert config.train.lr == 1e-3 and config.train.epochs == 2
    assert flags == {"resume": True, "overwrite": False, "dry_run": False}
    config, flags = train.parse_args([f"--config={path}", "--dry-run", "--overwrite=true", "--resume=false"])
    assert config.train.lr == 1e-3 and flags == {"resume": False, "overwrite": True, "dry_run": True}
    assert train.parse_args(["--dry_run", "yes"])[1]["dry_run"] is True
    assert train.parse_args([])[0] == load_config(None)
    for argv, message in ((["--resume", "--overwrite"], "--resume continues the run in `out` and --overwrite clears "
                                                        "it: give one of them"),
                          (["--resume", "--resume=false"], "--resume and --resume=false give --resume two values"),
                          (["--dry-run=perhaps"], "--dry-run: expected true or false, got 'perhaps'"),
                          (["--config"], "--config needs a value")):
        with pytest.raises(ConfigError, match=re.escape(message)):
            train.parse_args(argv)


def test_flags_of_the_calling_script_are_returned_apart():
    overrides, flags = jaxbert.config.parse_command_line(
        ["--lr=1", "--resume", "--config", "c.yaml", "--pcgrad"], {"resume": bool, "config": str})
    assert overrides == {"train.lr": "1", "train.surgery": "pcgrad"} and flags == {"resume": True, "config": "c.yaml"}
