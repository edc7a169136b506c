"""The README is tested: every documented `python train.py ...`, `python -m jaxbert.experiments ...`,
`python convert_weights.py ...` and `python predict.py ...` command in README.md and configs/**/README.md runs,
in document order, in a project folder of its own with a tiny BERT for every checkpoint (the Hub download
included) and fixture data, so a documented command that stops working fails here.

Tiny mode: train.py commands train one step of one epoch on short sequences (`TINY_TRAIN`, for the keys the
command does not set itself), suites run with `--dry-run`, and the placeholders of the docs (`runs/x`, `DIR`, ...)
are filled from `PLACEHOLDERS`.
"""

import contextlib
import io
import re
import shlex
import shutil
from pathlib import Path

import pytest

from conftest import tiny_checkpoint, write_fixture_data
from jaxbert.config import ConfigError, resolve_key

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "configs").glob("**/README.md"))]
SCRIPTS = ("python train.py", "python -m jaxbert.experiments", "python convert_weights.py", "python predict.py")
# Each placeholder of the docs, and what stands for it here: a run the README's quick start trains, a seed folder
# of the run `setup_runs` trains, a Hugging Face folder, a new checkpoint folder.
PLACEHOLDERS = {"runs/x": "runs/default", "<out>/seed<k>": "runs/seeds/seed1", "DIR": "hub/bert-base-uncased",
                "checkpoints/NAME": "checkpoints/converted"}
# Commands that need more than this machine, and the test that runs what they do instead.
ELSEWHERE = {"--distributed.coordinator_address=": "tests/test_distributed.py launches train.py as two processes"}
TINY_TRAIN = {"train.max_steps": "1", "train.epochs": "1", "train.batch_size": "8", "train.eval_batch_size": "16",
              "data.max_length": "32", "data.buckets": "32", "data.data_dir": "data"}


def documented_commands() -> list[tuple[str, str]]:
    """`(doc, command)` for every command of `SCRIPTS` in the docs, in order, each once: the lines of fenced
    code blocks and the inline code spans, split at `&&`."""
    found = {}
    for doc in DOCS:
        in_block = False
        for line in doc.read_text().splitlines():
            if line.lstrip().startswith("```"):
                in_block = not in_block
                continue
            for piece in [line] if in_block else re.findall(r"`([^`]+)`", line):
                for command in piece.split("&&"):
                    if not command.strip().startswith(SCRIPTS):
                        continue
                    command = shlex.join(shlex.split(command, comments=True))
                    if command not in found:
                        found[command] = str(doc.relative_to(ROOT))
    return [(doc, command) for command, doc in found.items()]


def tiny_argv(command: str) -> tuple[str, list[str]]:
    """The script of `command` and its arguments, placeholders filled and tiny settings added."""
    words = shlex.split(command)
    script, argv = (words[2], words[3:]) if words[1] == "-m" else (words[1], words[2:])
    for placeholder, value in PLACEHOLDERS.items():
        argv = [value + word[len(placeholder):] if word == placeholder or word.startswith(placeholder + "/") else word
                for word in argv]
    if script == "train.py":
        argv += [f"--{key}={value}" for key, value in TINY_TRAIN.items() if key not in _keys_set(argv)]
    elif script == "jaxbert.experiments":
        argv.append("--dry-run")
    return script, argv


def _keys_set(argv: list[str]) -> set[str]:
    keys = set()
    for word in argv:
        if word.startswith("--"):
            with contextlib.suppress(ConfigError):
                keys.add(resolve_key(word[2:].partition("=")[0]))
    return keys


def run_script(script: str, argv: list[str]) -> str:
    """Runs `script`'s main in this process; its stdout, or a failure naming the command and its error."""
    import convert_weights
    import predict
    import train
    from jaxbert import experiments

    main = {"train.py": train.main, "predict.py": predict.main, "convert_weights.py": convert_weights.main,
            "jaxbert.experiments": experiments.main}[script]
    stdout = io.StringIO()
    try:
        with contextlib.redirect_stdout(stdout):
            main(argv)
    except SystemExit as e:
        if e.code not in (0, None):
            raise AssertionError(f"{script} {shlex.join(argv)}: exit {e.code}") from None
    return stdout.getvalue()


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A working directory like a user's checkout: configs/, data/ with fixture files, and a "Hub" whose
    bert-base-uncased is a tiny BERT (the other checkpoints the configs name are the same tiny BERT, converted)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "configs").symlink_to(ROOT / "configs")
    write_fixture_data(tmp_path / "data")
    hub = tiny_checkpoint(tmp_path / "hub" / "bert-base-uncased")
    import huggingface_hub

    def hf_hub_download(repo_id, filename, **kwargs):
        if repo_id != "bert-base-uncased" or not (hub / filename).is_file():
            raise huggingface_hub.errors.RemoteEntryNotFoundError(f"{repo_id}/{filename}", response=None)
        return str(hub / filename)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", hf_hub_download)
    return tmp_path


def setup_runs(project: Path) -> None:
    """What the docs' commands assume exists beyond the quick start: the MiniLM checkpoint of the CPU configs
    and a run of two seeds."""
    run_script("convert_weights.py", ["--from", str(project / "hub" / "bert-base-uncased"),
                                      "--out", "checkpoints/all-minilm-l6-v2"])
    run_script("train.py", ["--seeds=2", "--vmap-seeds", "--out=runs/seeds", "--checkpoint=checkpoints/all-minilm-l6-v2",
                            *(f"--{key}={value}" for key, value in TINY_TRAIN.items())])


def test_the_docs_name_the_commands_this_test_runs():
    commands = [command for _, command in documented_commands()]
    assert "python train.py --sampler=roundrobin" in commands and "python convert_weights.py" in commands
    assert any(c.startswith("python predict.py runs/default") for c in commands)
    assert any(c.startswith("python -m jaxbert.experiments configs/suites/") for c in commands)
    assert any(doc.startswith("configs/") for doc, _ in documented_commands())
    assert tiny_argv("python train.py --config runs/x/config.yaml --out runs/x-again --epochs 3")[1] == [
        "--config", "runs/default/config.yaml", "--out", "runs/x-again", "--epochs", "3", "--train.max_steps=1",
        "--train.batch_size=8", "--train.eval_batch_size=16", "--data.max_length=32", "--data.buckets=32",
        "--data.data_dir=data"]


@pytest.mark.usefixtures("compilation_cache")
def test_every_documented_command_runs(project):
    commands = documented_commands()
    setup_runs(project)
    failures = []
    for doc, command in commands:
        if any(flag in command for flag in ELSEWHERE):
            continue
        script, argv = tiny_argv(command)
        try:
            run_script(script, argv)
        except Exception as e:  # every failing command is listed, not only the first
            failures.append(f"{doc}: {command}\n    {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
    elsewhere = sum(any(flag in command for flag in ELSEWHERE) for _, command in commands)
    print(f"{len(commands) - elsewhere} documented commands run ({elsewhere} run by other tests), "
          f"{len(failures)} failed")
    assert not failures, "\n".join(failures)
    assert (project / "runs" / "default" / "results.json").is_file()
    shutil.rmtree(project / "runs")
