"""The read-only Python API over an experiments folder: torchexp.Experiments and its views."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from click.testing import CliRunner

import torchexp
from conftest import REPO, init_args, snapshot, write_mnist
from mnist_classifier.__main__ import cli
from mnist_classifier.runner import MNISTClassifierRunner
from torchexp.errors import CheckpointError, ConfigError, ExperimentError
from torchexp.metrics import Stop
from torchexp.training import train_experiment

MLP = ("--set", "model.name=mlp", "--set", "trainer.max_epochs=2")


def run(root: str, *args: str, name: str = "x"):
    base = ["--experiments-path", os.path.join(root, "experiments"), "--data-path", os.path.join(root, "data"), "--experiment-name", name]
    result = CliRunner().invoke(cli, [*base, *args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> str:
    """Experiment x: 2 epochs trained (its planned trainer.max_epochs), tested, epoch 1
    released; experiment `fresh`: created only."""
    root = str(tmp_path_factory.mktemp("experiments-template"))
    write_mnist(os.path.join(root, "data"))
    run(root, *init_args(*MLP))
    run(root, "train", "--device", "cpu")
    run(root, "test", "--device", "cpu")
    run(root, "create_release", "--epoch", "1")
    run(root, *init_args(*MLP), name="fresh")
    return root


@pytest.fixture
def root(template, tmp_path) -> str:
    """A private copy of the template, to change at will."""
    copy = str(tmp_path / "env")
    shutil.copytree(template, copy)
    return copy


def experiments_of(root: str) -> torchexp.Experiments:
    return torchexp.Experiments(os.path.join(root, "experiments"))


def read_json(path: str):
    with open(path) as file:
        return json.load(file)


def write_json(path: str, value) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as file:
        json.dump(value, file)


def checkpoint_model(root: str, file_name: str) -> dict:
    path = os.path.join(root, "experiments", "x", "checkpoints", file_name)
    return torch.load(path, weights_only=True)["model"]


def flip_a_byte(path: str) -> None:
    with open(path, "r+b") as file:
        file.seek(os.path.getsize(path) // 2)
        byte = file.read(1)
        file.seek(-1, os.SEEK_CUR)
        file.write(bytes([byte[0] ^ 0xFF]))


# Listing and lookup --------------------------------------------------------------------------


def test_experiments_are_iterable_sized_and_support_in(root):
    os.makedirs(os.path.join(root, "experiments", "notes"))  # a folder without config.json
    experiments = experiments_of(root)
    assert experiments.names() == ["fresh", "x"]
    assert len(experiments) == 2
    assert [view.name for view in experiments] == ["fresh", "x"]
    assert "x" in experiments and "notes" not in experiments and "../x" not in experiments
    assert experiments.other_folders() == ["notes"]
    assert isinstance(experiments["x"], torchexp.ExperimentView)


def test_a_missing_experiment_is_an_error_naming_it_and_the_closest_names(root):
    experiments = experiments_of(root)
    with pytest.raises(ExperimentError, match=r"experiment 'nope' does not exist in .*experiments$"):
        experiments["nope"]
    with pytest.raises(ExperimentError, match=r"experiment 'xx' does not exist .*\(did you mean 'x'\?\)"):
        experiments["xx"]
    with pytest.raises(ExperimentError, match="experiment '../x' does not exist"):
        experiments["../x"]


def test_a_missing_experiments_folder_is_an_error_naming_it(tmp_path):
    with pytest.raises(ExperimentError, match=f"experiments folder {tmp_path}/nowhere does not exist"):
        torchexp.Experiments(str(tmp_path / "nowhere"))


def test_a_study_lists_its_trials_as_experiments(root):
    study = os.path.join(root, "experiments", "search-1")
    os.makedirs(study)
    write_json(os.path.join(study, "study.json"), {"name": "search-1"})
    for trial in ("trial-0000", "trial-0001"):
        shutil.copytree(os.path.join(root, "experiments", "x"), os.path.join(study, trial))
    experiments = experiments_of(root)
    assert experiments.names() == ["fresh", "search-1/trial-0000", "search-1/trial-0001", "x"]
    trial = experiments["search-1/trial-0001"]
    assert trial.name == "search-1/trial-0001" and trial.epochs == 2
    assert trial.history == experiments["x"].history
    assert "search-1" not in experiments and "fresh/trial-0001" not in experiments
    # The study's own folder, compared on its own: its trials are plain experiments.
    assert torchexp.Experiments(study).names() == ["trial-0000", "trial-0001"]


# What an experiment holds --------------------------------------------------------------------


def test_config_seed_versions_and_classes_come_from_config_json(root):
    record = read_json(os.path.join(root, "experiments", "x", "config.json"))
    view = experiments_of(root)["x"]
    assert view.config == record["config"] and view.config["model"]["name"] == "mlp"
    assert view.seed == record["seed"] == 0
    assert view.versions == record["versions"] and view.versions["torchexp"] == torchexp.__version__
    assert view.classes == {"data": "mnist_classifier.data:MNISTClassifierData", "runner": "mnist_classifier.runner:MNISTClassifierRunner"}
    assert view.max_epochs == 2


def test_history_has_the_metrics_the_checkpoint_records_hold(root):
    view = experiments_of(root)["x"]
    history = view.history
    assert [entry["epoch"] for entry in history] == [1, 2]
    for entry in history:
        record = read_json(os.path.join(root, "experiments", "x", "checkpoints", f"{entry['epoch']}.checkpoint.pt.json"))
        assert entry["validation"] == record["metrics"]["validation"]
        assert {key: value for key, value in entry["train"].items() if key != "lr"} == record["metrics"]["train"]
        assert entry["train"]["lr"] > 0 and entry["seconds"] > 0
    assert view.series("validation", "loss") == [(entry["epoch"], entry["validation"]["loss"]) for entry in history]


def test_history_skips_iteration_and_torn_lines_and_keeps_an_epochs_last_line(root):
    path = os.path.join(root, "experiments", "x", "metrics.jsonl")
    lines = [
        {"kind": "iteration", "step": 1, "epoch": 1, "metrics": {"loss": 9.0}},
        {"kind": "train", "step": 1, "epoch": 1, "seconds": 1.5, "metrics": {"loss": 2.0}},
        {"kind": "validation", "step": 1, "epoch": 1, "metrics": {"loss": 2.5, "accuracy": 0.5}},
        {"kind": "train", "step": 1, "epoch": 1, "seconds": 1.0, "metrics": {"loss": 1.0}},
        {"kind": "test", "step": 1, "epoch": 1, "metrics": {"accuracy": 0.7}},
    ]
    with open(path, "w") as file:
        file.write("".join(json.dumps(line) + "\n" for line in lines) + '{"kind": "train", "epo')
    assert experiments_of(root)["x"].history == [
        {"epoch": 1, "train": {"loss": 1.0}, "validation": {"loss": 2.5, "accuracy": 0.5}, "seconds": 1.0}
    ]


def test_results_are_the_test_reports_by_epoch_and_kind(root):
    run(root, "test", "--epoch", "1", "--release", "--device", "cpu")
    view = experiments_of(root)["x"]
    folder = os.path.join(root, "experiments", "x", "results")
    assert list(view.results) == [(1, "release"), (2, "standard")]
    assert view.results[(2, "standard")] == read_json(os.path.join(folder, "2.standard.test.json"))["results"]
    assert view.results[(1, "release")]["samples"] == 40
    assert view.latest_test["epoch"] == 2 and view.latest_test["kind"] == "standard"


def test_checkpoints_come_with_their_records_and_verify_on_demand(root):
    view = experiments_of(root)["x"]
    found = view.checkpoints
    assert [(c.epoch, c.kind) for c in found] == [(1, "standard"), (1, "release"), (2, "standard")]
    assert all(c.verified for c in found)
    assert found[2].metrics == read_json(found[2].path + ".json")["metrics"]
    flip_a_byte(found[2].path)
    assert not view.checkpoints[2].verified
    assert "does not match its SHA-256" in view.checkpoints[2].check()


def test_best_takes_the_lowest_loss_and_the_highest_accuracy(root):
    path = os.path.join(root, "experiments", "x", "metrics.jsonl")
    losses, accuracies = [0.9, 0.4, 0.6], [0.5, 0.7, 0.8]
    with open(path, "w") as file:
        for epoch, (loss, accuracy) in enumerate(zip(losses, accuracies), start=1):
            file.write(json.dumps({"kind": "validation", "epoch": epoch, "metrics": {"loss": loss, "accuracy": accuracy, "nan": None}}) + "\n")
    view = experiments_of(root)["x"]
    assert view.best("validation", "loss") == (2, 0.4)
    assert view.best("validation", "accuracy") == (3, 0.8)
    assert view.best("validation", "loss", direction="maximize") == (1, 0.9)
    assert view.best("validation", "loss", direction="max") == (1, 0.9)
    with pytest.warns(DeprecationWarning, match=r"best\(mode=...\) is deprecated: use direction="):
        assert view.best("validation", "loss", mode="max") == (1, 0.9)
    with pytest.raises(ConfigError, match="direction 'up' is not valid: use 'minimize' or 'maximize'"):
        view.best("validation", "loss", direction="up")
    with pytest.raises(ExperimentError, match=r"has no validation metric 'lss' \(its validation metrics: accuracy, loss, nan\)"):
        view.best("validation", "lss")
    with pytest.raises(ExperimentError, match="has no train metrics yet: train it first"):
        view.best("train", "loss")
    with pytest.raises(ExperimentError, match="split 'test' is not valid"):
        view.best("test", "loss")


# States ----------------------------------------------------------------------------------


def test_states_finished_not_started_interrupted_running_and_corrupt(root):
    experiments = experiments_of(root)
    assert experiments["x"].state == "finished"
    assert experiments["fresh"].state == "not started"

    checkpoints = os.path.join(root, "experiments", "x", "checkpoints")
    shutil.copy(os.path.join(checkpoints, "2.checkpoint.pt"), os.path.join(checkpoints, "3.checkpoint.interrupt.pt"))
    assert experiments["x"].state == "interrupted"  # Ctrl-C part way through an epoch
    os.remove(os.path.join(checkpoints, "3.checkpoint.interrupt.pt"))

    config = os.path.join(root, "experiments", "x", "config.json")
    record = read_json(config)
    record["config"]["trainer"]["max_epochs"] = 5
    write_json(config, record)
    # Its last train ended at the 2 epochs it was asked for, below the 5 planned now.
    assert experiments["x"].state == "stopped at --max-epochs"
    assert experiments["x"].stop == Stop("max_epochs", 2, 2)

    with torchexp.Experiment(os.path.join(root, "experiments"), "x").lock():
        assert experiments["x"].state == "running"
        assert experiments["x"].running

    metrics_path = os.path.join(root, "experiments", "x", "metrics.jsonl")
    with open(metrics_path) as file:
        lines = file.readlines()
    with open(metrics_path, "w") as file:  # as a SIGKILL leaves it: no word of why training ended
        file.writelines(line for line in lines if '"kind": "stop"' not in line)
    assert experiments["x"].stop is None
    assert experiments["x"].state == "interrupted"

    with open(config, "w") as file:
        file.write("{not json")
    assert experiments["x"].state == "corrupt"
    with pytest.raises(ExperimentError, match="config of experiment 'x' .* is not valid JSON"):
        experiments["x"].config


def test_a_train_below_the_planned_epochs_then_a_failed_one_show_as_such(root):
    run(root, "train", "--max-epochs", "1", "--device", "cpu", name="fresh")
    view = experiments_of(root)["fresh"]
    assert view.state == "stopped at --max-epochs" and view.stop == Stop("max_epochs", 1, 1)

    config = os.path.join(root, "experiments", "fresh", "config.json")
    record = read_json(config)
    record["config"]["trainer"]["precision"] = "fp16"  # refused on the CPU once training starts
    write_json(config, record)
    base = ["--experiments-path", os.path.join(root, "experiments"), "--data-path", os.path.join(root, "data"), "--experiment-name", "fresh"]
    result = CliRunner().invoke(cli, [*base, "train", "--device", "cpu"])
    assert result.exit_code == 2, result.output
    assert view.state == "failed"
    assert view.stop.reason == "failed" and view.stop.done == 1 and view.stop.limit == 2
    assert view.stop.detail.startswith("ConfigError: trainer.precision fp16 needs a CUDA device")


def test_a_run_its_epoch_observer_stopped_is_stopped_early(root):
    app = torchexp.App(
        "mnist_classifier.data:MNISTClassifierData", "mnist_classifier.runner:MNISTClassifierRunner",
        "fresh", os.path.join(root, "experiments"), os.path.join(root, "data"), "quiet",
    )  # fmt: skip
    experiment = app.open_experiment()
    train_experiment(app.project, experiment, "cpu", 0, None, 100, epoch_observers=(lambda epoch, metrics: "pruned",))
    view = experiments_of(root)["fresh"]
    assert view.epochs == 1 and view.max_epochs == 2
    assert view.state == "stopped early"


# load_model ------------------------------------------------------------------------------


def test_load_model_returns_the_latest_weights_in_eval_mode(root):
    model = experiments_of(root)["x"].load_model()
    assert isinstance(model, torch.nn.Module)
    assert not any(module.training for module in model.modules())
    expected = checkpoint_model(root, "2.checkpoint.pt")
    loaded = model.state_dict()
    assert loaded.keys() == expected.keys()
    assert all(torch.equal(loaded[key], expected[key]) for key in expected)
    output = model(torch.zeros(3, 1, 28, 28))
    assert output.shape == (3, 10)


def test_load_model_of_an_epoch_and_of_the_release(root):
    view = experiments_of(root)["x"]
    first, release = view.load_model(epoch=1), view.load_model(epoch="release")
    for model, file_name in ((first, "1.checkpoint.pt"), (release, "1.checkpoint.release.pt")):
        expected = checkpoint_model(root, file_name)
        assert all(torch.equal(model.state_dict()[key], expected[key]) for key in expected)
    latest = checkpoint_model(root, "2.checkpoint.pt")
    assert not all(torch.equal(first.state_dict()[key], latest[key]) for key in latest)
    with pytest.raises(CheckpointError, match=r"epoch 7 has no standard or release checkpoint .*\(available: 1-2\)"):
        view.load_model(epoch=7)


def test_load_model_leaves_the_callers_random_generators_as_they_were(root):
    torch.manual_seed(1234)
    before = torch.get_rng_state()
    experiments_of(root)["x"].load_model()
    assert torch.equal(torch.get_rng_state(), before)


def test_load_model_of_an_experiment_without_recorded_classes_says_what_to_pass(root):
    config = os.path.join(root, "experiments", "x", "config.json")
    record = read_json(config)
    del record["classes"]
    write_json(config, record)
    view = experiments_of(root)["x"]
    with pytest.raises(ExperimentError, match=r"created before torchexp recorded .*pass load_model\(runner_class="):
        view.load_model()
    model = view.load_model(runner_class=MNISTClassifierRunner)
    expected = checkpoint_model(root, "2.checkpoint.pt")
    assert all(torch.equal(model.state_dict()[key], expected[key]) for key in expected)


def test_load_model_of_a_project_not_importable_here_names_its_root_and_the_fix(root, tmp_path, monkeypatch):
    config = os.path.join(root, "experiments", "x", "config.json")
    definition = read_json(config)
    assert definition["project_root"] == REPO  # recorded at init: where mnist_classifier came from
    definition["classes"]["runner"] = "digits.runner:DigitsRunner"
    definition["project_root"] = str(tmp_path / "digits")
    write_json(config, definition)
    (tmp_path / "digits" / "digits").mkdir(parents=True)  # the project's root, seen from above it
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ExperimentError) as caught:
        experiments_of(root)["x"].load_model()
    assert str(caught.value) == (
        f"the project classes of experiment 'x' cannot be imported: digits.runner:DigitsRunner cannot be imported "
        f"(No module named 'digits.runner'): Python took the folder {tmp_path / 'digits'} for the package 'digits'; "
        f"the project is in {tmp_path / 'digits'}: install it with pip install -e {tmp_path / 'digits'}, or run from that folder"
    )


def test_load_model_refuses_a_corrupt_checkpoint(root):
    flip_a_byte(os.path.join(root, "experiments", "x", "checkpoints", "2.checkpoint.pt"))
    with pytest.raises(CheckpointError, match="checkpoint 2.checkpoint.pt does not match its SHA-256"):
        experiments_of(root)["x"].load_model()


# Read only, and no torch --------------------------------------------------------------------


def test_reading_an_experiment_writes_nothing_not_even_a_lock(root):
    os.remove(os.path.join(root, "experiments", "x", ".lock"))
    before = snapshot(root)
    experiments = experiments_of(root)
    for view in experiments:
        view.config, view.history, view.results, view.latest_test, view.state, view.epochs
        [checkpoint.verified for checkpoint in view.checkpoints]
    experiments["x"].best("validation", "accuracy")
    experiments["x"].load_model()
    experiments["x"].load_model(epoch="release")
    assert snapshot(root) == before


NO_TORCH_SCRIPT = """
import sys
import torchexp

experiments = torchexp.Experiments(sys.argv[1])
for view in experiments:
    view.config, view.seed, view.versions, view.history, view.results, view.state, view.epochs
    [checkpoint.verified for checkpoint in view.checkpoints]
print(experiments["x"].best("validation", "loss"))
print("heavy modules:", sorted({name.split(".")[0] for name in sys.modules} & {"torch", "torchvision", "numpy", "matplotlib"}))
"""


def test_the_api_does_not_import_torch_until_a_model_is_asked_for(root):
    # A separate interpreter: this one imported torch long ago.
    done = subprocess.run(
        [sys.executable, "-c", NO_TORCH_SCRIPT, os.path.join(root, "experiments")], capture_output=True, text=True, cwd=REPO, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "heavy modules: []"
