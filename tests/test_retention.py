"""Retention (trainer.keep_checkpoints), crash-safe removal, and the checkpoint clock's settings."""

import os

import pytest
from click.testing import CliRunner

import torchexp
from conftest import init_args, write_mnist
from mnist_classifier.__main__ import cli
from torchexp import checkpoints
from torchexp.retention import choose_removals

MLP = ("--set", "model.name=mlp", "--set", "trainer.max_epochs=5")
LOSS = "validation.loss"  # trainer.monitor's default


def run(root: str, *args: str, name: str = "x"):
    base = ["--experiments-path", os.path.join(root, "experiments"), "--data-path", os.path.join(root, "data"), "--experiment-name", name]
    return CliRunner().invoke(cli, [*base, *args])


def standard(epoch: int, loss: float | None) -> checkpoints.Checkpoint:
    metrics = {"validation": {"loss": loss}} if loss is not None else {}
    return checkpoints.Checkpoint(epoch, "standard", f"{epoch}.checkpoint.pt", {"metrics": metrics})


def test_the_last_k_and_the_best_by_validation_loss_stay():
    found = [standard(epoch, loss) for epoch, loss in enumerate([0.9, 0.2, 0.5, 0.4, 0.3], start=1)]
    unvalidated = [standard(epoch, None) for epoch in (1, 2, 3)]
    # 2 is the best, 4 and 5 the last
    assert [item.epoch for item in choose_removals(found, 2, LOSS, "minimize")] == [1, 3]
    assert [item.epoch for item in choose_removals(found, 5, LOSS, "minimize")] == []
    assert [item.epoch for item in choose_removals(unvalidated, 1, LOSS, "minimize")] == [1, 2]


def test_training_keeps_the_last_checkpoints_the_best_and_every_release(tmp_path):
    root = str(tmp_path)
    write_mnist(os.path.join(root, "data"))
    assert run(root, *init_args(*MLP, "--set", "trainer.keep_checkpoints=2")).exit_code == 0
    assert run(root, "train", "--max-epochs", "1", "--device", "cpu").exit_code == 0
    assert run(root, "create_release", "--epoch", "1").exit_code == 0
    result = run(root, "train", "--device", "cpu")
    assert result.exit_code == 0, result.output
    view = torchexp.Experiments(os.path.join(root, "experiments"))["x"]
    losses = {entry["epoch"]: entry["validation"]["loss"] for entry in view.history}
    best = min(losses, key=lambda epoch: (losses[epoch], epoch))
    assert {(item.epoch, item.kind) for item in view.checkpoints} == {(4, "standard"), (5, "standard"), (best, "standard"), (1, "release")}
    assert all(item.verified for item in view.checkpoints)
    names = os.listdir(os.path.join(root, "experiments", "x", "checkpoints"))
    assert not [name for name in names if name.startswith(".")], "nothing half removed is left"
    assert view.state == "finished" and view.epochs == 5


def test_a_removal_killed_half_way_leaves_no_half_checkpoint_and_the_next_train_sweeps_it(tmp_path, monkeypatch):
    folder = str(tmp_path)
    for epoch in (1, 2):
        checkpoints.save_checkpoint(folder, epoch, "standard", {"epoch": epoch}, {"metrics": {}})
    first = checkpoints.find_checkpoint(folder, 1, ("standard",))

    def killed(path):
        raise KeyboardInterrupt  # the process dies before the sidecar goes

    monkeypatch.setattr(checkpoints, "remove_quietly", killed)
    with pytest.raises(KeyboardInterrupt):
        first.remove()
    monkeypatch.undo()
    listed = checkpoints.list_checkpoints(folder)
    assert [item.epoch for item in listed] == [2] and all(item.verified for item in listed)
    assert sorted(os.listdir(folder)) == [".1.checkpoint.pt.removing", "1.checkpoint.pt.json", "2.checkpoint.pt", "2.checkpoint.pt.json"]
    assert checkpoints.remove_temporaries(folder) == [".1.checkpoint.pt.removing", "1.checkpoint.pt.json"]
    assert sorted(os.listdir(folder)) == ["2.checkpoint.pt", "2.checkpoint.pt.json"]


@pytest.mark.parametrize(
    "setting, message",
    [
        ("trainer.keep_checkpoints=0", "trainer.keep_checkpoints: 0 is less than the minimum of 1"),
        ("trainer.checkpoint_every_minutes=0", "trainer.checkpoint_every_minutes: 0 is less than or equal to the minimum of 0"),
        ("trainer.checkpoint_every_minutes=-5", "trainer.checkpoint_every_minutes: -5 is less than or equal to the minimum of 0"),
    ],
)
def test_a_cadence_or_retention_below_its_minimum_is_refused_naming_the_key(tmp_path, setting, message):
    root = str(tmp_path)
    write_mnist(os.path.join(root, "data"))
    result = run(root, *init_args("--set", setting))
    assert result.exit_code == 2
    assert result.output == f"Error: config is invalid:\n  {message}\n"
    assert not os.path.exists(os.path.join(root, "experiments", "x"))
