"""How long `train` trains (trainer.max_epochs) and which epoch a bare `create_release` picks."""

import json
import os

import pytest

from conftest import REPO, init_args
from torchexp.config import build_config

MLP = ("--set", "model.name=mlp")


def checkpoint_epochs(tmp_path, name="x", kind=""):
    folder = tmp_path / "experiments" / name / "checkpoints"
    return sorted(int(n.split(".")[0]) for n in os.listdir(folder) if n.endswith(f".checkpoint{kind}.pt"))


def test_init_records_the_default_length_of_ten_epochs(invoke, tmp_path):
    assert invoke(*init_args(*MLP)).exit_code == 0
    record = json.loads((tmp_path / "experiments" / "x" / "config.json").read_text())
    assert record["config"]["trainer"]["max_epochs"] == 10


def test_train_without_max_epochs_trains_to_the_configured_length(invoke, tmp_path):
    assert invoke(*init_args(*MLP, "--set", "trainer.max_epochs=2")).exit_code == 0
    result = invoke("train", "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert "up to epoch 2 (trainer.max_epochs)" in result.output
    assert checkpoint_epochs(tmp_path) == [1, 2]


def test_max_epochs_overrides_the_configured_length(invoke, tmp_path):
    assert invoke(*init_args(*MLP, "--set", "trainer.max_epochs=2")).exit_code == 0
    result = invoke("train", "--device", "cpu", "--max-epochs", "3")
    assert "up to epoch 3 (--max-epochs)" in result.output
    assert checkpoint_epochs(tmp_path) == [1, 2, 3]


@pytest.mark.parametrize("preset", ["fast.json", "best.json"])
def test_every_preset_is_valid_and_says_how_long_it_trains(preset):
    conf = build_config(os.path.join(REPO, "configs", preset), os.path.join(REPO, "config.schema.json"), [])
    trainer = conf["trainer"]
    assert trainer["precision"] == "auto"
    if conf["training"]["scheduler"] == "onecycle":
        assert trainer["max_epochs"] == conf["training"]["schedule_epochs"]


def set_validation_loss(tmp_path, epoch, loss):
    """Change the validation loss a checkpoint's record holds (the record, not the checkpoint)."""
    path = tmp_path / "experiments" / "x" / "checkpoints" / f"{epoch}.checkpoint.pt.json"
    record = json.loads(path.read_text())
    record["metrics"]["validation"]["loss"] = loss
    path.write_text(json.dumps(record))


def test_create_release_without_epoch_releases_the_lowest_validation_loss(invoke, tmp_path):
    assert invoke(*init_args(*MLP, "--set", "trainer.max_epochs=3")).exit_code == 0
    assert invoke("train", "--device", "cpu").exit_code == 0
    set_validation_loss(tmp_path, 2, 0.0001)
    result = invoke("create_release")
    assert result.exit_code == 0, result.output
    assert "released epoch 2 (the lowest validation loss, 0.0001, among epochs 1-3)" in result.output
    assert checkpoint_epochs(tmp_path, kind=".release") == [2]


def test_create_release_without_validation_releases_the_latest_epoch(invoke, tmp_path):
    assert invoke(*init_args(*MLP, "--set", "trainer.max_epochs=2", "--set", "data.val_split=0")).exit_code == 0
    assert invoke("train", "--device", "cpu").exit_code == 0
    result = invoke("create-release")
    assert result.exit_code == 0, result.output
    assert "released epoch 2 (the latest: no epoch recorded validation loss)" in result.output
    assert checkpoint_epochs(tmp_path, kind=".release") == [2]


def test_create_release_before_training_is_refused(invoke, tmp_path):
    assert invoke(*init_args(*MLP)).exit_code == 0
    result = invoke("create_release")
    assert result.exit_code == 4
    assert "Error: experiment 'x' has no standard checkpoint yet: train it first" in result.output
