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
