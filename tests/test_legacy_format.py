"""Experiments written by torchexp 0.1 still read, compare, resume and load.

tests/data/legacy-0.1/ was written by torchexp 0.1.0 (commit b803856) with the project of
tests/legacy_project.py: "finished" (2 of 2 epochs, tested, released), "stopped-early" (an
epoch observer stopped it after epoch 1 of 4; 0.1 said so only in verbose.log) and "killed"
(2 of 3 epochs; no word of why it ended). Their checkpoints' sidecars were then called
records, and metrics.jsonl has no "stop" lines.
"""

import os
import shutil

import pytest
import torch
from click.testing import CliRunner

import torchexp
from torchexp.cli import make_cli
from torchexp.compare import build_table

LEGACY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "legacy-0.1")
cli = make_cli("legacy_project:LegacyData", "legacy_project:LegacyRunner")


@pytest.fixture
def experiments_path(tmp_path) -> str:
    """A copy, so that a test may train on."""
    return shutil.copytree(LEGACY, str(tmp_path / "experiments"))


def test_their_definition_history_checkpoints_and_results_read(experiments_path):
    view = torchexp.Experiments(experiments_path)["finished"]
    assert view.config["training"]["lr"] == 0.5 and view.seed == 7 and view.versions["torchexp"] == "0.1.0"
    assert view.classes == {"data": "legacy_project:LegacyData", "runner": "legacy_project:LegacyRunner"}
    assert [entry["epoch"] for entry in view.history] == [1, 2]
    assert view.history[1]["validation"]["loss"] < view.history[0]["validation"]["loss"]
    assert [(c.epoch, c.kind) for c in view.checkpoints] == [(1, "standard"), (2, "standard"), (2, "release")]
    assert all(c.verified for c in view.checkpoints)
    assert view.checkpoints[1].metrics["validation"] == view.history[1]["validation"]
    assert view.checkpoints[1].load()["counters"] == {"epoch": 2, "iteration": 0, "step": 6}
    assert set(view.results) == {(2, "standard")} and view.results[(2, "standard")]["samples"] == 4
    assert view.best("validation", "loss") == (2, view.history[1]["validation"]["loss"])
    assert view.stop is None  # 0.1 wrote no stop lines


def test_their_states_come_from_the_files_0_1_wrote(experiments_path):
    experiments = torchexp.Experiments(experiments_path)
    assert {view.name: view.state for view in experiments} == {
        "finished": "finished",
        "killed": "interrupted",
        "stopped-early": "stopped early",  # read from 0.1's verbose.log
    }
    table = build_table(experiments)
    assert [(summary.name, summary.state, summary.epochs) for summary in table.summaries] == [
        ("finished", "finished", 2), ("killed", "interrupted", 2), ("stopped-early", "stopped early", 1),
    ]  # fmt: skip


def test_one_resumes_exactly_where_0_1_left_it(experiments_path):
    base = ["--experiments-path", experiments_path, "--data-path", experiments_path, "--experiment-name", "killed"]
    result = CliRunner().invoke(cli, [*base, "train", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "resumed from 2.checkpoint.pt: 2 epochs done" in result.output
    view = torchexp.Experiments(experiments_path)["killed"]
    assert view.state == "finished" and view.epochs == 3
    assert view.stop.reason == "max_epochs" and view.stop.done == 3
    state = view.checkpoints[-1].load()
    assert state["counters"]["epoch"] == 3 and state["scheduler"]["last_epoch"] == 3


def test_its_release_loads_as_a_model(experiments_path):
    model = torchexp.Experiments(experiments_path)["finished"].load_model("release")
    release = torch.load(os.path.join(experiments_path, "finished", "checkpoints", "2.checkpoint.release.pt"), weights_only=True)
    assert not model.training
    assert torch.equal(model.weight, release["model"]["weight"]) and torch.equal(model.bias, release["model"]["bias"])
