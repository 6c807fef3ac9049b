"""`compare`: the table of experiments as text, JSON, CSV, Markdown and a plot, on both
command lines, over hand-made experiment folders and real ones."""

import csv
import io
import json
import os
import subprocess
import sys

import pytest
from click.testing import CliRunner

import torchexp
from conftest import REPO, init_args, snapshot, write_mnist
from mnist_classifier.__main__ import cli as project_cli
from torchexp.cli import main
from torchexp.compare import build_table
from torchexp.tables import format_text

LOSSES = {"lr-0.1": [0.9, 0.3, 0.5], "lr-1": [0.8, 0.6, 0.4], "lr-10": [2.0, 2.5]}


def write_json(path: str, value) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as file:
        json.dump(value, file)


def write_experiment(root: str, name: str, lr: float, losses: list[float], max_epochs: int = 3, tested: bool = True, model: str = "cnn") -> None:
    """An experiment folder as init, train and test leave it: config.json, one checkpoint
    (empty here) and record per epoch, metrics.jsonl, and a test report of the last epoch."""
    folder = os.path.join(root, name)
    config = {"model": {"name": model}, "training": {"lr": lr}, "trainer": {"max_epochs": max_epochs}}
    write_json(os.path.join(folder, "config.json"), {"seed": 0, "versions": {}, "classes": {}, "config": config})
    os.makedirs(os.path.join(folder, "results"), exist_ok=True)
    lines = []
    for epoch, loss in enumerate(losses, start=1):
        train = {"loss": loss / 2, "accuracy": 1 - loss / 4}
        validation = {"loss": loss, "accuracy": 1 - loss / 3}
        path = os.path.join(folder, "checkpoints", f"{epoch}.checkpoint.pt")
        write_json(path + ".json", {"epoch": epoch, "kind": "standard", "sha256": "0" * 64, "bytes": 0, "metrics": {"train": train, "validation": validation}})
        open(path, "wb").close()
        lines.append({"kind": "iteration", "step": epoch * 10, "epoch": epoch, "metrics": {"loss": loss}})
        lines.append({"kind": "train", "step": epoch, "epoch": epoch, "seconds": 1.0, "metrics": {**train, "lr": lr}})
        lines.append({"kind": "validation", "step": epoch, "epoch": epoch, "metrics": validation})
    with open(os.path.join(folder, "metrics.jsonl"), "w") as file:
        file.write("".join(json.dumps(line) + "\n" for line in lines))
    if tested and losses:
        results = {"accuracy": 1 - losses[-1] / 3.5, "loss": losses[-1] * 1.1, "samples": 40, "confusion_matrix": [[1]]}
        write_json(os.path.join(folder, "results", f"{len(losses)}.standard.test.json"), {"epoch": len(losses), "checkpoint": "x", "results": results})


@pytest.fixture
def experiments(tmp_path) -> str:
    """lr-0.1 and lr-1: finished after 3 epochs and tested; lr-10: 2 of 3 epochs, not tested."""
    root = str(tmp_path / "experiments")
    for name, losses in LOSSES.items():
        write_experiment(root, name, float(name.split("-")[1]), losses, tested=name != "lr-10")
    return root


def compare(root: str, *args: str, group=main, exit_code: int = 0):
    result = CliRunner().invoke(group, ["compare", "--experiments-path", root, *args], catch_exceptions=False)
    assert result.exit_code == exit_code, result.output
    assert "Traceback" not in result.output
    return result


def compare_json(root: str, *args: str) -> list[dict]:
    return json.loads(compare(root, "--json", *args).stdout)


def table_rows(output: str) -> dict[str, str]:
    """The rows of the text table by experiment name (the first word)."""
    lines = output.splitlines()
    rule = next(index for index, line in enumerate(lines) if line.startswith("─"))
    return {line.split()[0]: line for line in lines[rule + 1 :] if line.strip()}


# The table ----------------------------------------------------------------------------------


def test_the_table_shows_the_keys_that_differ_and_each_experiments_metrics(experiments):
    output = compare(experiments).stdout
    header = output.split("─")[0]
    assert header.splitlines() == [  # not a terminal: no width limit, only the long metric headers wrap
        "                                            best        best",
        "                                      validation  validation                 train       test",
        "name    training.lr  epochs  disk MB        loss    accuracy  train loss  accuracy   accuracy  test loss  state",
    ]
    assert "model" not in header and "max_epochs" not in header  # the same everywhere
    rows = table_rows(output)
    assert list(rows) == ["lr-0.1", "lr-1", "lr-10"]
    assert rows["lr-0.1"].split()[:4] == ["lr-0.1", "0.1", "3", "0"]  # under 0.05 MB of JSON
    assert "0.3 @2" in rows["lr-0.1"] and "0.9 @2" in rows["lr-0.1"]  # best loss and accuracy, at epoch 2
    assert "0.4 @3" in rows["lr-1"]
    assert rows["lr-0.1"].endswith("finished") and rows["lr-10"].endswith("interrupted")
    assert "0.8857 @3" in rows["lr-1"] and "0.44 @3" in rows["lr-1"]  # test accuracy 1 - 0.4 / 3.5, loss 0.4 * 1.1


def test_all_shows_every_config_key_and_the_provenance(experiments):
    provenance = {f"provenance.{key}" for key in ("code", "data", "python", "torch", "cuda", "cpu", "gpu")}
    trainer = {f"trainer.{key}" for key in torchexp.config.TRAINER_SCHEMA["properties"]}
    assert set(compare_json(experiments, "--all")[0]["config"]) == {"model.name", "training.lr", *trainer, *provenance}
    assert list(compare_json(experiments)[0]["config"]) == ["training.lr"]


def test_json_rows_hold_name_config_epochs_best_train_test_and_state(experiments):
    rows = compare_json(experiments)
    assert [row["name"] for row in rows] == ["lr-0.1", "lr-1", "lr-10"]
    first = rows[0]
    assert set(first) == {"name", "state", "epochs", "max_epochs", "steps", "max_steps", "disk_bytes", "config", "best", "train", "test", "problem"}
    assert first["steps"] is None and first["max_steps"] is None  # trained by epochs
    folder = os.path.join(experiments, "lr-0.1")
    assert first["disk_bytes"] == sum(os.path.getsize(os.path.join(path, name)) for path, _, names in os.walk(folder) for name in names)
    assert first["config"] == {"training.lr": 0.1} and first["epochs"] == 3 and first["max_epochs"] == 3
    assert first["best"] == {"validation": {"loss": {"value": 0.3, "epoch": 2}, "accuracy": {"value": 0.9, "epoch": 2}}}
    assert first["train"] == {"loss": 0.25, "accuracy": 0.875, "lr": 0.1}  # the last epoch's
    assert first["test"] == {"epoch": 3, "kind": "standard", "results": {"accuracy": 1 - 0.5 / 3.5, "loss": 0.5 * 1.1, "samples": 40}}
    assert first["state"] == "finished" and first["problem"] is None
    assert rows[2]["test"] is None and rows[2]["state"] == "interrupted"


def test_csv_has_full_precision_numbers_and_an_epoch_column_per_metric(experiments):
    rows = list(csv.DictReader(io.StringIO(compare(experiments, "--csv").stdout)))
    assert [row["name"] for row in rows] == ["lr-0.1", "lr-1", "lr-10"]
    assert rows[0]["training.lr"] == "0.1" and rows[0]["epochs"] == "3"
    assert float(rows[1]["test accuracy"]) == 1 - 0.4 / 3.5 and rows[1]["test accuracy epoch"] == "3"
    assert rows[0]["best validation loss"] == "0.3" and rows[0]["best validation loss epoch"] == "2"
    assert rows[2]["test loss"] == "" and rows[2]["state"] == "interrupted"


def test_markdown_is_a_github_table_with_numbers_aligned_right(experiments):
    write_experiment(experiments, "odd", 1.0, [0.5], model="a|b")
    lines = compare(experiments, "--md").stdout.splitlines()
    assert lines[0].startswith("| name | model.name | training.lr | epochs | disk MB | best validation loss |")
    assert lines[1].startswith("|---|---|---:|---:|---:|---:|")
    assert lines[2].startswith("| lr-0.1 | cnn | 0.1 | 3 | 0 | 0.3 @2 |")
    assert any(line.startswith("| odd | a\\|b |") for line in lines)
    assert all(line.count(" | ") == lines[0].count(" | ") for line in lines[2:] if "a\\|b" not in line)


def test_the_text_table_wraps_headers_and_cuts_text_to_fit_a_terminal(experiments):
    write_experiment(experiments, "a-rather-long-experiment-name-indeed", 1.0, [0.5], model="a-very-long-model-name")
    table = build_table(torchexp.Experiments(experiments))
    wide = format_text(table)
    limit = max(map(len, wide.splitlines())) - 30
    narrow = format_text(table, width=limit)
    assert max(map(len, narrow.splitlines())) <= limit
    assert "a-rather-long-experiment-name-indeed" in wide and "a-rather-long-experiment-name-indeed" not in narrow
    assert "a-very-long-model-name" not in narrow and narrow.count("…") == 2
    assert "0.8333 @1" in narrow and "interrupted" in narrow  # numbers and states stay whole
    header = narrow.split("─")[0].splitlines()
    assert any(line.split()[:1] == ["best"] for line in header)  # "best validation loss" over several lines
    assert [line.split() for line in header] == [
        ["best", "best"],
        ["validation", "validation", "train", "test"],
        ["name", "model.name", "training.lr", "epochs", "disk", "MB", "loss", "accuracy", "train", "loss", "accuracy", "accuracy", "test", "loss", "state"],
    ]


# Sorting and choosing -------------------------------------------------------------------------


def test_sort_by_a_metric_column_either_way_with_missing_values_last(experiments):
    def names(*args: str) -> list[str]:
        return [row["name"] for row in compare_json(experiments, *args)]

    assert names("--sort-by", "best validation loss") == ["lr-0.1", "lr-1", "lr-10"]
    assert names("--sort-by", "best validation loss", "--sort-order", "desc") == ["lr-10", "lr-1", "lr-0.1"]
    assert names("--sort-by", "test accuracy", "--sort-order", "desc") == ["lr-1", "lr-0.1", "lr-10"]
    assert names("--sort-by", "test accuracy") == ["lr-0.1", "lr-1", "lr-10"]
    assert names("--sort-by", "training.lr", "--sort-order", "desc") == ["lr-10", "lr-1", "lr-0.1"]
    assert names("--sort-by", "model.name") == ["lr-0.1", "lr-1", "lr-10"]  # a config key, shown or not


def test_sort_by_an_unknown_column_is_an_error_listing_the_columns(experiments):
    result = compare(experiments, "--sort-by", "accuracy", exit_code=2)
    assert result.output.startswith("Error: --sort-by 'accuracy' is not a column; the columns are 'name', 'training.lr', 'epochs',")
    assert "'test accuracy'" in result.output and len(result.output.splitlines()) == 1


def test_names_and_patterns_choose_the_experiments(experiments):
    assert [row["name"] for row in compare_json(experiments, "lr-1*")] == ["lr-1", "lr-10"]
    assert [row["name"] for row in compare_json(experiments, "lr-10", "lr-0.1")] == ["lr-10", "lr-0.1"]
    assert compare(experiments, "nope", exit_code=3).output == f"Error: there is no experiment 'nope' in {experiments}\n"
    assert compare(experiments, "lr-1", "zz-*", exit_code=3).output == f"Error: no experiment matches 'zz-*' in {experiments}\n"


def test_a_study_is_compared_as_its_trials(experiments):
    study = os.path.join(experiments, "study-a")
    write_json(os.path.join(study, "study.json"), {"name": "study-a"})
    write_experiment(study, "trial-0000", 0.5, [0.7, 0.2])
    write_experiment(study, "trial-0001", 0.05, [0.9])
    assert [row["name"] for row in compare_json(experiments, "study-a")] == ["study-a/trial-0000", "study-a/trial-0001"]
    assert [row["name"] for row in compare_json(experiments, "study-a/*1")] == ["study-a/trial-0001"]
    rows = compare_json(study, "--sort-by", "best validation loss")
    assert [(row["name"], row["best"]["validation"]["loss"]["epoch"]) for row in rows] == [("trial-0000", 2), ("trial-0001", 1)]


def test_broken_folders_are_rows_that_say_what_is_wrong(experiments):
    os.makedirs(os.path.join(experiments, "notes"))
    write_experiment(experiments, "broken", 1.0, [0.5])
    with open(os.path.join(experiments, "broken", "config.json"), "w") as file:
        file.write("{")
    output = compare(experiments).stdout
    rows = table_rows(output)
    assert rows["broken"].endswith("corrupt") and rows["notes"].endswith("not an experiment")
    assert "broken: config of experiment 'broken'" in output and "is not valid JSON" in output
    assert "notes: the folder has no config.json" in output
    by_name = {row["name"]: row for row in compare_json(experiments)}
    assert by_name["broken"]["state"] == "corrupt" and by_name["broken"]["epochs"] is None
    assert by_name["notes"]["state"] == "not an experiment" and by_name["lr-1"]["state"] == "finished"


def test_states_running_interrupted_and_not_started(experiments):
    checkpoints = os.path.join(experiments, "lr-1", "checkpoints")
    open(os.path.join(checkpoints, "4.checkpoint.interrupt.pt"), "wb").close()
    write_experiment(experiments, "new", 1.0, [], tested=False)
    with torchexp.Experiment(experiments, "lr-0.1").lock():
        states = {row["name"]: row["state"] for row in compare_json(experiments)}
    assert states == {"lr-0.1": "running", "lr-1": "interrupted", "lr-10": "interrupted", "new": "not started"}


def test_output_formats_cannot_be_combined(experiments):
    result = compare(experiments, "--json", "--md", exit_code=2)
    assert result.output == "Error: --json and --md cannot be combined: choose one output format\n"


def test_an_empty_or_missing_experiments_folder_is_an_error(tmp_path):
    assert compare(str(tmp_path), exit_code=3).output == f"Error: no experiments to compare in {tmp_path}\n"
    assert compare(str(tmp_path / "no"), exit_code=3).output == f"Error: experiments folder {tmp_path / 'no'} does not exist\n"


def test_the_project_command_line_compares_its_experiments_path(experiments):
    result = CliRunner().invoke(project_cli, ["--experiments-path", experiments, "compare", "--json", "lr-1"])
    assert result.exit_code == 0, result.output
    assert [row["name"] for row in json.loads(result.stdout)] == ["lr-1"]
    # The command's own option wins over the group's.
    result = CliRunner().invoke(project_cli, ["--experiments-path", "elsewhere", "compare", "--experiments-path", experiments, "--json"])
    assert len(json.loads(result.stdout)) == 3


# The plot ---------------------------------------------------------------------------------


def test_plot_writes_a_png_or_an_svg_labelled_by_name_and_differing_keys(experiments, tmp_path):
    result = compare(experiments, "--json", "--plot", str(tmp_path / "curves.png"))
    assert len(json.loads(result.stdout)) == 3  # the JSON stays parseable: the note goes to stderr
    assert f"plot written to {tmp_path / 'curves.png'}" in result.stderr
    with open(tmp_path / "curves.png", "rb") as file:
        assert file.read(8) == b"\x89PNG\r\n\x1a\n"
    compare(experiments, "--plot", str(tmp_path / "curves.svg"), "--plot-metrics", "train")
    with open(tmp_path / "curves.svg") as file:
        svg = file.read()
    # matplotlib keeps each text as a comment beside the glyphs it draws.
    for text in ("lr-0.1 (training.lr=0.1)", "lr-10 (training.lr=10)", "train loss", "train accuracy"):
        assert f"<!-- {text} -->" in svg
    assert "train lr" not in svg


def test_plot_refuses_another_extension_and_an_unwritable_path(experiments, tmp_path):
    result = compare(experiments, "--plot", str(tmp_path / "curves.jpg"), exit_code=2)
    assert result.output == f"Error: plot file {tmp_path / 'curves.jpg'} has extension '.jpg': use .png or .svg\n"
    result = compare(experiments, "--plot", str(tmp_path / "missing" / "curves.png"), exit_code=8)
    assert result.output == f"Error: could not write {tmp_path / 'missing' / 'curves.png'}: No such file or directory\n"
    assert os.listdir(tmp_path) == ["experiments"]


def test_plot_without_any_history_is_an_error(tmp_path):
    write_experiment(str(tmp_path), "new", 1.0, [], tested=False)
    result = compare(str(tmp_path), "--plot", str(tmp_path / "curves.png"), exit_code=3)
    assert result.output == "Error: nothing to plot: none of the compared experiments has validation metrics yet\n"


# Real experiments, read only, without torch ------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> str:
    """Real experiments on the tiny MNIST: `a` trained 2 epochs and tested, `b` only created."""
    root = str(tmp_path_factory.mktemp("compare-real"))
    data, experiments = write_mnist(os.path.join(root, "data")), os.path.join(root, "experiments")
    for name, args in (("a", ("init", "train", "test")), ("b", ("init",))):
        for command in args:
            extra = init_args("--set", "model.name=mlp", "--set", "trainer.max_epochs=2", "--set", f"training.lr={0.5 if name == 'b' else 1.0}")[1:] if command == "init" else ["--device", "cpu"]
            result = CliRunner().invoke(project_cli, ["--experiments-path", experiments, "--data-path", data, "--experiment-name", name, command, *extra])
            assert result.exit_code == 0, result.output
    return experiments


def test_compare_reads_real_experiments_as_the_api_does(trained):
    rows = {row["name"]: row for row in compare_json(trained)}
    view = torchexp.Experiments(trained)["a"]
    assert rows["a"]["config"] == {"training.lr": 1.0} and rows["b"]["config"] == {"training.lr": 0.5}
    assert rows["a"]["epochs"] == 2 and rows["a"]["state"] == "finished" and rows["b"]["state"] == "not started"
    for metric in ("loss", "accuracy"):
        epoch, value = view.best("validation", metric)
        assert rows["a"]["best"]["validation"][metric] == {"value": value, "epoch": epoch}
    assert rows["a"]["train"] == view.history[-1]["train"]
    assert rows["a"]["test"]["epoch"] == 2
    assert rows["a"]["test"]["results"]["accuracy"] == view.results[(2, "standard")]["accuracy"]


def test_compare_writes_nothing_into_the_experiments(trained, tmp_path):
    before = snapshot(trained)
    for args in ((), ("--json",), ("--csv",), ("--md", "--all"), ("--plot", str(tmp_path / "p.svg"))):
        compare(trained, *args)
    assert snapshot(trained) == before


NO_TORCH_SCRIPT = """
import sys
from click.testing import CliRunner
from torchexp.cli import main

for args in ([], ["--json"], ["--csv"], ["--md", "--all", "--sort-by", "best validation loss"], ["--plot", sys.argv[2]]):
    result = CliRunner().invoke(main, ["compare", "--experiments-path", sys.argv[1], *args])
    assert result.exit_code == 0, (args, result.output)
    if not args:
        print("heavy modules:", sorted({name.split(".")[0] for name in sys.modules} & {"torch", "numpy", "matplotlib", "tensorboard"}))
print("with a plot:", sorted({name.split(".")[0] for name in sys.modules} & {"torch", "tensorboard"}))
"""


def test_compare_does_not_import_torch(trained, tmp_path):
    # A separate interpreter: this one imported torch long ago.
    command = [sys.executable, "-c", NO_TORCH_SCRIPT, trained, str(tmp_path / "plot.png")]
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["heavy modules: []", "with a plot: []"]
