"""Tasks of the user's own (`task_defs`), end to end: train.py, a staged run and a suite row train them, and
predict.py on the run gives the run's own predictions. Also the one-line errors of the entry scripts."""

import json
import shutil

import numpy as np
import pytest
import yaml

import predict
import train
from conftest import ARGS, dev_rows, sentence, workspace  # noqa: F401 (fixture)
from jaxbert import experiments, run_folder

pytestmark = pytest.mark.usefixtures("compilation_cache")

OWN_TASKS = {
    "imdb": {"kind": "classification", "num_classes": 3, "text": ["review"], "label": "stars",
             "files": {"train": "imdb-train.tsv", "dev": "imdb-dev.tsv", "test": "imdb-test.tsv"}},
    "mysim": {"kind": "regression", "label_range": [0, 1], "text": ["a", "b"], "label": "score", "encoding": "bi",
              "files": {"train": "sim-train.tsv", "dev": "sim-dev.tsv"}},
}


@pytest.fixture(scope="module")
def own(workspace):
    """The workspace with the files of two tasks of one's own, and a config file defining them: its path.
    imdb's files have no id column (rows are keyed by number), its test file no label; mysim's have ids."""
    bert, data, root = workspace
    rng = np.random.default_rng(3)
    rows = lambda n, row: "".join(row(i) + "\n" for i in range(n))  # noqa: E731
    review = lambda i: f"{rng.integers(0, 3)}\t{sentence(rng, rng.integers(3, 15))}"  # noqa: E731
    pair = lambda i: f"s{i}\t{sentence(rng, 6)}\t{sentence(rng, 6)}\t{rng.uniform(0, 1):.2f}"  # noqa: E731
    (data / "imdb-train.tsv").write_text("stars\treview\n" + rows(40, review))
    (data / "imdb-dev.tsv").write_text("stars\treview\n" + rows(20, review))
    (data / "imdb-test.tsv").write_text("review\n" + rows(6, lambda i: sentence(rng, 5)))
    (data / "sim-train.tsv").write_text("id\ta\tb\tscore\n" + rows(40, pair))
    (data / "sim-dev.tsv").write_text("id\ta\tb\tscore\n" + rows(20, pair))
    path = root / "own.yaml"
    path.write_text(yaml.safe_dump({"tasks": ["sst", "imdb", "mysim"], "task_defs": OWN_TASKS}))
    return path


def train_args(workspace, out, *extra, checkpoint=None, data_dir=None):
    bert, data, root = workspace
    return [f"--checkpoint={checkpoint or bert}", f"--data-dir={data_dir or data}", f"--out={out}",
            f"--data.cache_dir={root / 'cache'}", *ARGS, *extra]


@pytest.fixture(scope="module")
def own_run(workspace, own):
    out = workspace[2] / "own_run"
    train.main(["--config", str(own), *train_args(workspace, out)])
    return out


def test_own_tasks_train_through_train_py(own_run):
    results = json.loads((own_run / "results.json").read_text())
    dev = results["metrics"]["dev"]
    assert set(dev) == {"sst", "imdb", "mysim", "overall", "mean"}
    assert dev["overall"] == pytest.approx((dev["sst"]["accuracy"] + dev["imdb"]["accuracy"]
                                            + (dev["mysim"]["pearson"] + 1) / 2) / 3)
    predictions = own_run / "predictions"
    imdb = (predictions / "imdb-dev-output.csv").read_text().splitlines()
    assert imdb[0] == "id \t Predicted_stars " and [line.split(" , ")[0] for line in imdb[1:]] == [
        str(i) for i in range(1, 21)]  # no id column: the row number
    assert {line.split(" , ")[1].strip() for line in imdb[1:]} <= {"0", "1", "2"}
    test = (predictions / "imdb-test-output.csv").read_text().splitlines()
    assert len(test) == 7 and "test" not in results["metrics"]  # no label column: predicted, not scored
    sim = [line.split(" , ") for line in (predictions / "mysim-dev-output.csv").read_text().splitlines()[1:]]
    assert sim[0][0] == "s0" and all(0 <= float(v) <= 1 for _, v in sim)  # the cosine head spans label_range
    assert (own_run / "encoder" / "config.json").is_file() and (own_run / "encoder" / "vocab.txt").is_file()
    assert (own_run / "commit.txt").read_text().splitlines() == [run_folder.code_commit()]


def test_predict_py_gives_the_runs_own_predictions(workspace, own_run, tmp_path, capsys):
    data, results = workspace[1], json.loads((own_run / "results.json").read_text())
    for task, split, file in (("imdb", "dev", "imdb-dev.tsv"), ("imdb", "test", "imdb-test.tsv"),
                              ("mysim", "dev", "sim-dev.tsv")):
        output = tmp_path / f"{task}-{split}.csv"
        predict.main([str(own_run), "--task", task, "--input", str(data / file), "--output", str(output)])
        assert output.read_text() == (own_run / "predictions" / f"{task}-{split}-output.csv").read_text()
        err = capsys.readouterr().err
        if split == "dev":
            metric, value = next(iter(results["metrics"]["dev"][task].items()))
            assert f"{task} {metric}: {value:.4f}" in err
        else:
            assert "accuracy" not in err  # unlabeled
    # Sentences on the command line, two at a time for a pair: the same scores as the file's rows.
    rows = [line.split("\t") for line in (data / "sim-dev.tsv").read_text().splitlines()[1:3]]
    predict.main([str(own_run), "--task", "mysim", *rows[0][1:3], *rows[1][1:3]])
    printed = [float(v) for v in capsys.readouterr().out.split()]
    expected = [float(line.split(" , ")[1]) for line in
                (own_run / "predictions" / "mysim-dev-output.csv").read_text().splitlines()[1:3]]
    np.testing.assert_allclose(printed, expected, rtol=1e-5, atol=1e-6)
    predict.main([str(own_run), "--task", "sst", "A great film .", "An awful plot ."])
    lines = capsys.readouterr().out.splitlines()
    names = ("very negative", "negative", "neutral", "positive", "very positive")
    assert len(lines) == 2 and all(line.split("\t")[1] == names[int(line.split("\t")[0])] for line in lines)


@pytest.mark.parametrize("argv, message", [
    (["{tmp}", "--task", "sst", "x"], "predict.py: error: {tmp} is not a run folder: it has no config.yaml"),
    (["{run}", "x"], "predict.py: error: --task: {run} was trained on sst, imdb, mysim; say which to predict"),
    (["{run}", "--task", "sts", "x"], "predict.py: error: {run} was not trained on a task 'sts'; its tasks: sst, "
                                      "imdb, mysim"),
    (["{run}", "--task", "mysim", "x"], "predict.py: error: mysim is a pair task: give sentences 2 at a time, got 1"),
    (["{run}", "--task", "imdb", "--input", "{tmp}/none.tsv"], "predict.py: error: imdb data file not found: "
                                                               "{tmp}/none.tsv"),
])
def test_predict_py_errors_are_one_line(own_run, tmp_path, argv, message):
    fill = lambda text: text.format(tmp=tmp_path, run=own_run)  # noqa: E731
    with pytest.raises(SystemExit) as exit_:
        predict.main([fill(a) for a in argv])
    assert str(exit_.value) == fill(message)


def test_own_task_in_a_staged_run(workspace, own):
    out = workspace[2] / "own_staged"
    staged = own.with_name("own_staged.yaml")
    staged.write_text(yaml.safe_dump({"base": own.name, "stages": [{"name": "imdb_only", "tasks": ["imdb"],
                                                                     "epochs": 1}, {"name": "all", "epochs": 1}]}))
    train.main(["--config", str(staged), *train_args(workspace, out)])
    records = dev_rows(out)
    assert [r["stage_name"] for r in records] == ["imdb_only", "all"]
    assert set(records[0]["dev"]) == {"sst", "imdb", "mysim", "overall", "mean"}  # every run task is evaluated
    assert set(json.loads((out / "results.json").read_text())["metrics"]["dev"]) >= {"imdb", "mysim"}


def test_own_task_in_a_suite(workspace, own, capsys):
    bert, data, root = workspace
    suite = root / "own_suite.yaml"
    suite.write_text(yaml.safe_dump({"name": "own", "seeds": [0], "overrides": {
        "model.checkpoint": str(bert), "data.data_dir": str(data), "data.cache_dir": str(root / "cache"),
        "data.max_length": 32, "data.buckets": [32], "train.epochs": 1, "train.batch_size": 8, "train.lr": 1e-3},
        "rows": [{"name": "mine", "config": own.name}]}))
    experiments.main([str(suite), "--results", str(root / "results")])
    table = (root / "results" / "own" / "table.md").read_text()
    assert "| row | n | SST acc | imdb acc | mysim r | overall |" in table and "| mine | 1 |" in table
    assert (root / "results" / "own" / "bars_mysim_r.png").is_file()


def test_entry_scripts_say_the_fix_in_one_line(workspace, own, tmp_path):
    bert, data, root = workspace
    with pytest.raises(SystemExit) as exit_:
        train.main(["--config", str(own), *train_args(workspace, tmp_path / "out", checkpoint=f"{tmp_path}/bert")])
    assert str(exit_.value).startswith(f"train.py: error: model.checkpoint '{tmp_path}/bert': {tmp_path}/bert is "
                                       "not a folder. Run `python convert_weights.py`")
    assert str(exit_.value).endswith("or pass --checkpoint DIR")
    broken = tmp_path / "data"
    broken.mkdir()
    for f in data.iterdir():
        if f.is_file():
            (broken / f.name).write_bytes(f.read_bytes())
    (broken / "imdb-train.tsv").write_text("stars\ttext\n1\tfine\n")
    with pytest.raises(SystemExit) as exit_:
        train.main(["--config", str(own), *train_args(workspace, tmp_path / "out", data_dir=broken)])
    assert str(exit_.value).startswith(f"train.py: error: {broken / 'imdb-train.tsv'}: missing column(s) ['review']")
    (broken / "sim-train.tsv").unlink()
    with pytest.raises(SystemExit) as exit_:
        train.main(["--config", str(own), *train_args(workspace, tmp_path / "out", "--tasks=mysim", data_dir=broken)])
    assert str(exit_.value) == (f"train.py: error: no data for mysim: put its files sim-train.tsv, sim-dev.tsv (test "
                                f"optional) in {broken}/ or pass --data-dir DIR")


def test_offline_first_run_and_another_models_checkpoint(workspace, own_run, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SystemExit) as exit_:  # no local files, and the Hub unreachable (tests run offline)
        train.main([*train_args(workspace, tmp_path / "out", "--tasks=sst", data_dir=empty)])
    message = str(exit_.value)
    assert message.startswith("train.py: error: sst: cannot download SetFit/sst5 from the Hugging Face Hub")
    assert f"put its files ids-sst-train.csv, ids-sst-dev.csv, ids-sst-test-student.csv (test optional) in {empty}/" \
        in message and "\n" not in message
    # A run folder whose config.yaml no longer describes its checkpoint's model.
    edited = tmp_path / "edited"
    shutil.copytree(own_run, edited)
    saved = yaml.safe_load((edited / "config.yaml").read_text())
    saved["heads"]["hidden_layers"] = 1
    (edited / "config.yaml").write_text(yaml.safe_dump(saved))
    with pytest.raises(SystemExit) as exit_:
        predict.main([str(edited), "--task", "imdb", "A fine film ."])
    assert str(exit_.value).startswith(f"predict.py: error: {edited / 'checkpoints' / 'best'} holds another model "
                                       "than the config describes (not in the checkpoint: imdb/hidden_0/bias")
