"""verify: stored epochs re-run and compared tensor by tensor; what it refuses, in one sentence."""

import json
import os

import pytest
import torch
from click.testing import CliRunner

import torchexp
from conftest import init_args, snapshot, write_mnist
from mnist_classifier.__main__ import cli
from mnist_classifier.runner import MNISTClassifierRunner
from torchexp import loop
from torchexp.commands.context import App

MLP = ("--set", "model.name=mlp", "--set", "trainer.max_epochs=2", "--set", "data.augment=true")


def run(root: str, *args: str):
    base = ["--experiments-path", os.path.join(root, "experiments"), "--data-path", os.path.join(root, "data"), "--experiment-name", "x"]
    return CliRunner().invoke(cli, [*base, *args])


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> str:
    """An MLP trained 2 epochs (augmentation draws from the global generator), and a
    mid-epoch checkpoint of a third epoch."""
    root = str(tmp_path_factory.mktemp("verify"))
    write_mnist(os.path.join(root, "data"))
    assert run(root, *init_args(*MLP)).exit_code == 0
    assert run(root, "train", "--device", "cpu").exit_code == 0
    return root


@pytest.fixture
def root(template, tmp_path) -> str:
    import shutil

    return shutil.copytree(template, str(tmp_path / "root"))


def leave_a_mid_epoch_checkpoint(root: str, epoch: int, iteration: int) -> None:
    """Train on to `iteration` of `epoch` and stop there with a mid-epoch checkpoint."""
    app = App("mnist_classifier.data:MNISTClassifierData", "mnist_classifier.runner:MNISTClassifierRunner", "x",
              os.path.join(root, "experiments"), os.path.join(root, "data"), "quiet")  # fmt: skip
    experiment = app.open_experiment()
    runner = app.project.make_runner(experiment, experiment.read_definition(), 0)
    try:
        loop.train(runner, torch.device("cpu"), epoch, 100, stop_at=(epoch, iteration))
    finally:
        runner.tracker.close()
        torchexp.logs.close_logger(runner.logger)


def test_every_checkpoint_re_runs_bit_identical_and_is_listed_by_info(root):
    before = snapshot(os.path.join(root, "experiments", "x"))
    result = run(root, "verify", "--all", "--device", "cpu")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert [line.split(":")[0] for line in lines] == ["epoch 1", "epoch 2"]
    assert all(line.endswith(" tensors)") and ": bit-identical (" in line for line in lines)
    after = snapshot(os.path.join(root, "experiments", "x"))
    assert {name for name in after if after[name] != before.get(name)} == {"verifications.jsonl"}  # all it writes
    entries = torchexp.Experiments(os.path.join(root, "experiments"))["x"].verifications
    assert [(entry["epoch"], entry["identical"], entry["checkpoint"]) for entry in entries] == [(1, True, "1.checkpoint.pt"), (2, True, "2.checkpoint.pt")]
    info = run(root, "info").output.split("verifications: ")[1].splitlines()
    assert info[0] == "2" and info[1].endswith(" epoch 1 on cpu: bit-identical")


def test_a_mid_epoch_checkpoint_is_re_run_to_its_iteration(root):
    leave_a_mid_epoch_checkpoint(root, 3, 4)
    result = run(root, "verify", "--device", "cpu")  # the latest: the mid-epoch one
    assert result.exit_code == 0, result.output
    assert result.output.startswith("epoch 3, iteration 4: bit-identical (")


def test_a_run_that_does_not_reproduce_is_named_with_the_first_difference(root, monkeypatch):
    original = MNISTClassifierRunner.train_step

    def drifting(self, batch, device):
        metrics = original(self, batch, device)
        return {**metrics, "loss": metrics["loss"] * 1.001}

    monkeypatch.setattr(MNISTClassifierRunner, "train_step", drifting)
    result = run(root, "verify", "--epoch", "2", "--device", "cpu")
    assert result.exit_code == 12
    first, error = result.output.splitlines()[0], result.output.splitlines()[-1]
    assert first.startswith("epoch 2: differs: first at model['layers.1.weight'], max |diff| ")
    assert " values" in first and error == "Error: 1 of 1 checkpoints were not reproduced bit for bit"
    (entry,) = torchexp.Experiments(os.path.join(root, "experiments"))["x"].verifications
    assert entry["identical"] is False and entry["difference"] == first.split("differs: ")[1]


@pytest.mark.parametrize(
    "damage, arguments, message",
    [
        ("remove epoch 1", ("--epoch", "2"), "epoch 2 cannot be verified: training to it starts from the checkpoint of epoch 1, which is not there (standard checkpoints: 2)"),
        ("release only", ("--epoch", "2"), "epoch 2 has only a release checkpoint, which holds weights but no training state (standard checkpoints: 1)"),
        ("corrupt", ("--epoch", "2"), "checkpoint 2.checkpoint.pt does not match its SHA-256 (corrupted)"),
        ("none", ("--epoch", "7"), "epoch 7 has no standard checkpoint in"),
        ("none", ("--epoch", "2", "--all"), "--epoch and --all cannot be combined: choose one"),
    ],
)
def test_what_verify_refuses_is_one_sentence_and_changes_nothing(root, damage, arguments, message):
    checkpoints_path = os.path.join(root, "experiments", "x", "checkpoints")
    if damage == "remove epoch 1":
        for name in ("1.checkpoint.pt", "1.checkpoint.pt.json"):
            os.remove(os.path.join(checkpoints_path, name))
    elif damage == "release only":
        assert run(root, "create_release", "--epoch", "2").exit_code == 0
        for name in ("2.checkpoint.pt", "2.checkpoint.pt.json"):
            os.remove(os.path.join(checkpoints_path, name))
    elif damage == "corrupt":
        with open(os.path.join(checkpoints_path, "2.checkpoint.pt"), "r+b") as file:
            file.seek(100)
            file.write(b"\xff\xfe")
    before = snapshot(os.path.join(root, "experiments", "x"))
    result = run(root, "verify", *arguments, "--device", "cpu")
    assert result.exit_code in (2, 4)
    assert result.output.startswith(f"Error: {message}"), result.output
    assert snapshot(os.path.join(root, "experiments", "x")) == before


def test_a_search_trial_verifies_like_any_experiment(tmp_path, data_path):
    import search_project
    from search_project import search_args, write_space

    space = write_space(str(tmp_path), {"training.momentum": {"choice": [0.1]}})
    base = ["--experiments-path", str(tmp_path / "experiments"), "--data-path", data_path]
    done = CliRunner().invoke(search_project.cli, [*base, "--experiment-name", "study", *search_args(space, "--trials", "1", "--max-epochs", "2", "--pruner", "none")])
    assert done.exit_code == 0, done.output
    trial = ["--experiments-path", str(tmp_path / "experiments" / "study"), "--data-path", data_path, "--experiment-name", "trial-0000"]
    result = CliRunner().invoke(search_project.cli, [*trial, "verify", "--all", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert [line.split(": ")[1].split(" (")[0] for line in result.output.splitlines()] == ["bit-identical", "bit-identical"]
    with open(tmp_path / "experiments" / "study" / "trial-0000" / "verifications.jsonl") as file:
        assert len([json.loads(line) for line in file]) == 2
