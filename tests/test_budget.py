"""Budgets in steps, and what every record says of them; loaders that cannot resume mid-epoch.

The project is tests/loader_project.py: 96 samples in batches of 8, 12 steps an epoch.
"""

import json
import os
import signal
import time

import pytest
import torch
from click.testing import CliRunner
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import loader_project
import torchexp
from conftest import assert_identical
from loader_project import SCHEMA, cli
from torchexp import checkpoints
from torchexp.sidecar import read_sidecar

STEPS = ("trainer.max_steps=30", "trainer.validate_every_steps=10")


def invoke(root, name: str, *args: str, command=cli):
    base = ["--experiments-path", str(root / "experiments"), "--experiment-name", name]
    return CliRunner().invoke(command, [*base, *args], catch_exceptions=False)


def init(root, name: str, *settings: str) -> None:
    (root / "schema.json").write_text(json.dumps(SCHEMA))
    (root / "config.json").write_text("{}")
    pairs = [item for setting in settings for item in ("--set", setting)]
    result = invoke(root, name, "init", "--config-path", str(root / "config.json"), "--schema-path", str(root / "schema.json"), *pairs)
    assert result.exit_code == 0, result.output


def read_lines(root, name: str, kind: str) -> list[dict]:
    with open(root / "experiments" / name / "metrics.jsonl", encoding="utf-8") as file:
        return [line for line in map(json.loads, file) if line["kind"] == kind]


def standard_checkpoints(root, name: str) -> list[int]:
    return [found.epoch for found in checkpoints.list_checkpoints(str(root / "experiments" / name / "checkpoints"), ("standard",))]


@pytest.fixture(scope="module")
def stepped(tmp_path_factory):
    """Experiment "s" trained by steps to 30 (mid-epoch 3), validated every 10 steps."""
    root = tmp_path_factory.mktemp("steps")
    init(root, "s", "data.loader=tensor", *STEPS)
    result = invoke(root, "s", "train", "--device", "cpu")
    assert result.exit_code == 0, result.output
    return root


def test_a_budget_in_steps_validates_and_saves_every_k_steps_and_ends_mid_epoch(stepped):
    assert standard_checkpoints(stepped, "s") == [10, 20, 30]
    sidecar = read_sidecar(str(stepped / "experiments" / "s" / "checkpoints" / "30.checkpoint.pt"))
    assert sidecar["unit"] == "step" and sidecar["counters"] == {"epoch": 2, "iteration": 6, "step": 30}
    assert [line["step"] for line in read_lines(stepped, "s", "validation")] == [10, 20, 30]
    assert all(line["unit"] == "step" and "epoch" not in line for line in read_lines(stepped, "s", "train"))
    (stop,) = read_lines(stepped, "s", "stop")
    assert stop == {**stop, "reason": "max_steps", "step": 30, "max_steps": 30, "unit": "step"}
    events = EventAccumulator(str(stepped / "experiments" / "s" / "tensorboard"))
    events.Reload()
    assert [event.step for event in events.Scalars("validation/loss")] == [10, 20, 30]


def test_info_compare_and_the_python_api_count_steps(stepped):
    info = invoke(stepped, "s", "info").output
    assert "  step 30 standard; " in info and "; epoch 3, iteration 6; " in info
    view = torchexp.Experiments(str(stepped / "experiments"))["s"]
    assert view.unit == "step" and view.steps == 30 and view.max_steps == 30 and view.epochs == 2
    assert [entry["step"] for entry in view.history] == [10, 20, 30]
    assert view.best("validation", "loss")[0] in (10, 20, 30) and view.state == "finished"
    (row,) = json.loads(invoke(stepped, "s", "compare", "--json").output)
    assert (row["steps"], row["max_steps"], row["epochs"], row["max_epochs"]) == (30, 30, 2, None)
    assert set(row["best"]["validation"]["loss"]) == {"value", "step"}
    header = invoke(stepped, "s", "compare").output.split("\ns ")[0]
    assert " epochs " in header and " steps " in header, header


def test_more_steps_resume_from_the_last_and_the_commands_take_step_not_epoch(stepped, tmp_path):
    import shutil

    shutil.copytree(stepped / "experiments", tmp_path / "experiments")
    result = invoke(tmp_path, "s", "train", "--max-steps", "45", "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert "up to step 45 (--max-steps)" in result.output and "resumed from 30.checkpoint.pt: 30 steps done" in result.output
    assert standard_checkpoints(tmp_path, "s") == [10, 20, 30, 40, 45]
    init(tmp_path, "short", "data.loader=tensor", *STEPS)
    assert invoke(tmp_path, "short", "train", "--max-steps", "10", "--device", "cpu").exit_code == 0
    assert torchexp.Experiments(str(tmp_path / "experiments"))["short"].state == "stopped at --max-steps"
    assert invoke(tmp_path, "s", "test", "--step", "45", "--device", "cpu").exit_code == 0
    released = invoke(tmp_path, "s", "create_release", "--step", "40")
    assert released.exit_code == 0 and "released step 40 (asked for)" in released.output
    wrong = invoke(tmp_path, "s", "test", "--epoch", "2")
    assert wrong.exit_code != 0 and "experiment 's' trains by steps (trainer.max_steps): use --step 2, not --epoch" in wrong.output
    wrong = invoke(tmp_path, "s", "train", "--max-epochs", "3")
    assert wrong.exit_code != 0 and "this experiment trains by steps (trainer.max_steps): use --max-steps, not --max-epochs" in wrong.output
    missing = invoke(tmp_path, "s", "test", "--step", "35")
    assert missing.exit_code != 0 and "step 35 has no standard or release checkpoint" in missing.output


def test_an_experiment_trained_by_epochs_refuses_steps(tmp_path):
    init(tmp_path, "e", "data.loader=tensor")
    wrong = invoke(tmp_path, "e", "train", "--max-steps", "5")
    assert wrong.exit_code != 0 and "this experiment trains by epochs (trainer.max_steps is null): use --max-epochs, not --max-steps" in wrong.output
    wrong = invoke(tmp_path, "e", "test", "--step", "5")
    assert wrong.exit_code != 0 and "experiment 'e' trains by epochs: use --epoch 5, not --step" in wrong.output
    result = invoke(tmp_path, "e2", "init", "--config-path", str(tmp_path / "config.json"), "--schema-path", str(tmp_path / "schema.json"),
                    "--set", "trainer.validate_every_steps=5")  # fmt: skip
    assert result.exit_code != 0 and "trainer.validate_every_steps: 5 needs trainer.max_steps" in result.output


def test_a_stream_without_length_trains_whole_epochs_and_says_it_cannot_resume_mid_epoch(tmp_path, monkeypatch):
    init(tmp_path, "p", "data.loader=plainstream")
    result = invoke(tmp_path, "p", "train", "--max-epochs", "2", "--device", "cpu")
    assert result.exit_code == 0, result.output
    refusal = "the train loader, a DataLoader over Stream, an IterableDataset, cannot resume in the middle of an epoch: use torchdata's StatefulDataLoader"
    assert refusal in result.output and "; checkpoints are saved at epoch ends only" in result.output
    assert [line["epoch"] for line in read_lines(tmp_path, "p", "train")] == [1, 2]

    # A signal mid-epoch stops at once, with no checkpoint it could not resume from.
    original = loader_project.ProjectRunner.train_step

    def signalled(self, batch, device):
        if self.counters["epoch"] == 2 and self.counters["iteration"] == 4:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)
        return original(self, batch, device)

    monkeypatch.setattr(loader_project.ProjectRunner, "train_step", signalled)
    stopped = invoke(tmp_path, "p", "train", "--max-epochs", "4", "--device", "cpu")
    assert stopped.exit_code == 130
    assert "training stopped by SIGTERM at epoch 3, iteration 5 without a checkpoint, as the train loader cannot resume mid-epoch: run train again to resume from epoch 2" in stopped.output
    assert not checkpoints.list_checkpoints(str(tmp_path / "experiments" / "p" / "checkpoints"), ("interrupt",))
    monkeypatch.undo()

    # A mid-epoch checkpoint an older run left is skipped, not a dead end.
    folder = tmp_path / "experiments" / "p" / "checkpoints"
    for suffix in ("", ".json"):
        shutil_copy(folder / f"2.checkpoint.pt{suffix}", folder / f"3.checkpoint.interrupt.pt{suffix}")
    sidecar = json.loads((folder / "3.checkpoint.interrupt.pt.json").read_text())
    sidecar.update(kind="interrupt", iteration=5, counters={"epoch": 2, "iteration": 5, "step": 29})
    (folder / "3.checkpoint.interrupt.pt.json").write_text(json.dumps(sidecar))
    resumed = invoke(tmp_path, "p", "train", "--max-epochs", "3", "--device", "cpu")
    assert resumed.exit_code == 0, resumed.output
    assert "skipping checkpoint 3.checkpoint.interrupt.pt: it is in the middle of an epoch, where the train loader cannot resume" in resumed.output
    assert "resumed from 2.checkpoint.pt: 2 epochs done" in resumed.output


def test_a_loader_of_whole_epochs_resumed_at_an_epochs_end_is_bit_identical(tmp_path):
    """A shuffled DataLoader subclass with persistent workers draws its order every epoch and
    its workers' seed once per process: never from training's generators."""
    for name in ("straight", "resumed"):
        init(tmp_path, name, "data.loader=subclass")
    assert invoke(tmp_path, "straight", "train", "--max-epochs", "3", "--num-workers", "2", "--device", "cpu").exit_code == 0
    for epochs in ("1", "3"):
        assert invoke(tmp_path, "resumed", "train", "--max-epochs", epochs, "--num-workers", "2", "--device", "cpu").exit_code == 0
    final = [torch.load(tmp_path / "experiments" / name / "checkpoints" / "3.checkpoint.pt", weights_only=True) for name in ("resumed", "straight")]
    assert_identical(*final)


def shutil_copy(source, target) -> None:
    import shutil

    shutil.copy(source, target)


def test_a_budget_in_steps_needs_a_loader_that_resumes_mid_epoch(tmp_path):
    init(tmp_path, "p", "data.loader=plainstream", *STEPS)
    result = invoke(tmp_path, "p", "train", "--device", "cpu")
    assert result.exit_code == 2, result.output
    assert result.output.strip().endswith(
        "Error: training by steps (trainer.max_steps) checkpoints in the middle of epochs, and the train loader, a DataLoader over Stream, "
        "an IterableDataset, cannot resume in the middle of an epoch: use torchdata's StatefulDataLoader, and give Stream state_dict() and load_state_dict()"
    )


def test_a_search_over_an_experiment_trained_by_steps_has_its_rungs_in_steps(tmp_path):
    init(tmp_path, "unused", "data.loader=tensor")  # writes the schema and config files
    space = tmp_path / "space.json"
    fixed = {"data.loader": "tensor", "trainer.max_steps": 30, "trainer.validate_every_steps": 10}
    space.write_text(json.dumps({"config": str(tmp_path / "config.json"), "fixed": fixed, "parameters": {"data.batch_size": {"choice": [4, 8, 16]}}}))
    options = ("--trials", "3", "--sampler", "grid", "--pruner", "asha", "--min-epochs", "10", "--reduction-factor", "3")
    result = invoke(tmp_path, "study", "search", "--space", str(space), "--schema-path", str(tmp_path / "schema.json"), "--device", "cpu", *options)
    assert result.exit_code == 0, result.output
    study = json.loads((tmp_path / "experiments" / "study" / "study.json").read_text())
    assert study["unit"] == "step" and study["max_epochs"] == 30
    import optuna

    trials = optuna.load_study(study_name="study", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(tmp_path / "experiments" / "study" / "journal.log")))).trials  # fmt: skip
    assert all(min(trial.intermediate_values) == 10 for trial in trials)  # reported at steps 10, 20, 30
    complete = [trial for trial in trials if trial.state.name == "COMPLETE"]
    assert len(complete) == 1 and sorted(complete[0].intermediate_values) == [10, 20, 30]  # one of three promoted from the rung at step 10
    assert "steps trained" in result.output and "test --step " in result.output
    trial = json.loads((tmp_path / "experiments" / "study" / f"trial-{complete[0].number:04d}" / "config.json").read_text())
    assert trial["config"]["trainer"]["max_steps"] == 30


def test_mid_epoch_checkpoints_between_validations_replace_each_other(tmp_path, monkeypatch):
    init(tmp_path, "s", "data.loader=tensor", "trainer.max_steps=30", "trainer.validate_every_steps=20", "trainer.checkpoint_every_steps=3")
    original = loader_project.ProjectRunner.train_step

    def signalled(self, batch, device):
        if self.counters["step"] == 25:  # during step 26: after the mid-epoch checkpoints of steps 21 and 24
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)
        return original(self, batch, device)

    monkeypatch.setattr(loader_project.ProjectRunner, "train_step", signalled)
    assert invoke(tmp_path, "s", "train", "--device", "cpu").exit_code == 130
    names = sorted(os.listdir(tmp_path / "experiments" / "s" / "checkpoints"))
    assert [name for name in names if "interrupt" in name] == ["26.checkpoint.interrupt.pt", "26.checkpoint.interrupt.pt.json"]
    monkeypatch.undo()
    resumed = invoke(tmp_path, "s", "train", "--device", "cpu")
    assert "resumed from 26.checkpoint.interrupt.pt: 26 steps done" in resumed.output
    assert not [name for name in os.listdir(tmp_path / "experiments" / "s" / "checkpoints") if "interrupt" in name]
