"""configs/reports/: one config per result row of the five reports, each loadable, each run by its report's suite."""

import re
from pathlib import Path

import pytest
import yaml

from jaxbert.config import load_config

ROOT = Path(__file__).resolve().parents[1]
REPORTS = ROOT / "configs" / "reports"
SUITES = ROOT / "configs" / "suites"
NUMBERS = ("000", "001", "002", "003", "004")

SETTINGS = sorted(p for p in REPORTS.glob("*.yaml") if p.stem.endswith("settings"))
ROWS = sorted(p for p in REPORTS.glob("*.yaml") if not p.stem.endswith("settings"))

# Each report's own statement of its shared bert-base settings, transcribed from its text.
REPORT_SETTINGS = {
    # §4.3: "a learning rate of 1e-5 and a batch size of 8 ... for 10 epochs ... dropout ... 0.2"
    "000": {"train.lr": 1e-5, "train.batch_size": 8, "train.epochs": 10, "heads.dropout": 0.2},
    # §4.3: "batch size of 64 ... constant learning rate of 3e-5, dropout rate of 20% and weight decay of 1e-2"
    "001": {"train.lr": 3e-5, "train.batch_size": 64, "heads.dropout": 0.2, "train.weight_decay": 1e-2,
            "train.schedule": "constant"},
    # §5.3: "a learning rate of 1e-5 over ten epochs"; §5.3.1: 755 iterations = 6,040 STS pairs / batch 8
    "002": {"train.lr": 1e-5, "train.epochs": 10, "train.batch_size": 8},
    # Table 1: 10 epochs, batch 16, dropout 0.3, learning rate 1E-05 (fine-tuned)
    "003": {"train.lr": 1e-5, "train.batch_size": 16, "train.epochs": 10, "heads.dropout": 0.3},
    # §5.3: "dropout probability is 0.2 ... batch size ... 32 ... lambda = 0.01", learning rate 1e-5
    "004": {"train.lr": 1e-5, "train.batch_size": 32, "heads.dropout": 0.2, "train.weight_decay": 0.01},
}


def report_of(path: Path) -> str:
    return path.name[:3]


def base_chain(path: Path) -> list[str]:
    """The file names a config extends through `base:`, itself first."""
    names = []
    while path is not None:
        names.append(path.name)
        base = (yaml.safe_load(path.read_text()) or {}).get("base")
        path = path.parent / base if base else None
    return names


def get(config, dotted: str):
    for part in dotted.split("."):
        config = getattr(config, part)
    return config


@pytest.mark.parametrize("path", SETTINGS + ROWS, ids=lambda p: p.name)
def test_config_loads(path):
    load_config(path)


@pytest.mark.parametrize("path", ROWS, ids=lambda p: p.name)
def test_row_names_its_report_and_extends_its_settings(path):
    """A row file is `<NNN>_<technique>.yaml`, opens with a comment naming report NNN, and extends that report's
    settings (or, for a single-task sentiment row, the course starter's) so it differs only in what it changes."""
    assert re.fullmatch(r"00[0-4]_[a-z0-9_.\-]+\.yaml", path.name)
    assert path.read_text().startswith(f"# Report {report_of(path)}: ")
    chain = base_chain(path)
    assert f"{report_of(path)}_settings.yaml" in chain or (
        chain[1] == "course_settings.yaml" and set(yaml.safe_load(path.read_text())["tasks"]) <= {"sst", "cfimdb"})


@pytest.mark.parametrize("number", NUMBERS)
def test_settings_match_the_report(number):
    config = load_config(REPORTS / f"{number}_settings.yaml")
    for key, value in REPORT_SETTINGS[number].items():
        assert get(config, key) == value, key


@pytest.mark.parametrize("number", NUMBERS)
def test_suite_runs_every_row_of_its_report(number):
    suite = yaml.safe_load((SUITES / f"report_{number}.yaml").read_text())
    assert suite["name"] == f"report_{number}" and suite["seeds"] == [0, 1, 2]
    names = [row["name"] for row in suite["rows"]]
    assert len(set(names)) == len(names)
    configs = [(SUITES / row["config"]).resolve() for row in suite["rows"]]
    missing = [str(c) for c in configs if not c.is_file()]
    assert not missing, f"report_{number}.yaml rows point at missing configs: {missing}"
    rows = {p.resolve() for p in ROWS if report_of(p) == number}
    assert rows, f"report {number} has no row config"
    assert sorted(configs) == sorted(rows)


def row(name: str):
    return load_config(REPORTS / f"{name}.yaml")


def resolved_stages(config):
    from jaxbert.config import resolve_stage

    return [resolve_stage(config, stage) for stage in config.stages]


def test_004_best_model_runs_smart_as_smart_pytorch_on_sst_and_sts():
    """The report's four SMART values are smart-pytorch's defaults: its normalized step, on SST and STS."""
    config = row("004_best_model")
    smart = config.smart
    assert (smart.ascent, smart.tasks) == ("normalized", ["sst", "sts"])
    assert (smart.steps, smart.step_size, smart.epsilon, smart.noise_std) == (1, 1e-3, 1e-6, 1e-5)


@pytest.mark.parametrize("name", ["004_with_pal", "004_best_model"])
def test_004_baseline_stage_trains_the_heads_alone(name):
    """The transferred baseline (§4.1) trains only the heads: no PALs and no SMART; the full model trains both."""
    baseline, full = resolved_stages(row(name))
    assert baseline.model.freeze_encoder and baseline.model.freeze_pals and not baseline.smart.enabled
    assert baseline.train.lr == 1e-3 and full.train.lr == 1e-5
    assert not full.model.freeze_encoder and not full.model.freeze_pals
    assert full.smart.enabled == (name == "004_best_model")


def test_000_additional_sts_keeps_one_optimizer():
    config = row("000_joint_additional_sts")
    assert config.train.stage_cycles == 10 and [s.optimizer for s in config.stages] == ["carry", "carry"]


@pytest.mark.parametrize("number, select_by, decay_all", [
    ("000", "overall", False), ("001", "mean", True), ("002", "overall", False), ("003", "mean", False),
    ("004", "overall", True)])
def test_selection_score_and_decay_mask_follow_each_report(number, select_by, decay_all):
    """001 and 003 tabulate the plain mean of the three scores; 001 and 004 decay every parameter as the course's
    AdamW (the others have no weight decay)."""
    config = load_config(REPORTS / f"{number}_settings.yaml")
    assert config.train.select_by == select_by
    assert config.train.decay_norms_and_biases == decay_all
    assert decay_all or config.train.weight_decay == 0


def test_features_the_gap_notes_once_missed_are_used():
    assert row("001_simcse_nli").heads.task_hidden_layers == {"sts": 1}  # the layer NLI and STS share
    for name in ("003_r1_baseline_pretrained", "003_r2_baseline_finetuned"):
        assert row(name).heads.task_hidden_layers == {"para": 1}  # two linear layers for paraphrase
    stale = ("jaxbert regularizes every task", "cosine STS head has no such layer", "MLP depth can only")
    for path in SETTINGS + ROWS:
        text = path.read_text()
        assert not any(note in text for note in stale), path.name
    readme = (REPORTS / "README.md").read_text()
    assert "SMART covers every task" not in readme and "do not share a linear layer" not in readme


@pytest.mark.parametrize("weight", [1, 3, 5])
def test_003_appendix_sweeps_smart_on_sts_alone(weight):
    config = row(f"003_appendix_sts_smart_lambda_{weight}")
    assert config.tasks == ["sts"] and config.smart.enabled and config.smart.weight == weight
    assert config.smart.ascent == "normalized" and config.smart.bregman_weight == 0


def test_004_round_robin_to_the_largest_task():
    config = row("004_round_robin_to_largest")
    assert (config.train.sampler, config.train.epoch_length) == ("roundrobin", "max")
