"""Every trial is an ordinary experiment; a study continues across runs; trials that fail,
prune or finish are recorded so; the table and the best trial's command lines."""

import json
import os

import pytest
from click.testing import CliRunner

import search_project
import torchexp
from conftest import assert_identical, snapshot
from mnist_classifier.__main__ import cli as mnist_cli
from search_project import FAIL_NAN, FAIL_RAISE, FLAT, UNREDUCED, search_args, write_space

MOMENTA = {"training.momentum": {"choice": [0.1, 0.3, 0.5]}}


@pytest.fixture
def run(tmp_path, data_path):
    """Run a command line (the search test project's by default) on tmp_path's experiments."""

    def invoke(*args: str, cli=search_project.cli, experiments: str | None = None, name: str = "study"):
        base = ["--experiments-path", experiments or str(tmp_path / "experiments"), "--data-path", data_path, "--experiment-name", name]
        return CliRunner().invoke(cli, [*base, *args], catch_exceptions=False)

    return invoke


def load_study(tmp_path, name: str = "study"):
    return search_project.load_study(str(tmp_path / "experiments"), name)


def read_log(tmp_path, trial: str) -> str:
    return search_project.read_trial_log(str(tmp_path / "experiments"), trial)


def trial_state(tmp_path, number: int) -> str:
    """A trial's state as `compare` and `ExperimentView.state` show it."""
    return torchexp.Experiments(str(tmp_path / "experiments" / "study"))[f"trial-{number:04d}"].state


def test_every_trial_is_an_experiment_that_info_test_and_create_release_work_on(run, tmp_path):
    space = write_space(str(tmp_path), {"training.lr": {"float": [0.0005, 0.005], "log": True}})
    result = run(*search_args(space, "--trials", "2", "--max-epochs", "2", "--pruner", "none", "--sampler", "random"), cli=mnist_cli)
    assert result.exit_code == 0, result.output
    study = load_study(tmp_path)
    assert [trial.state.name for trial in study.trials] == ["COMPLETE", "COMPLETE"]
    best = study.best_trial
    record = json.loads((tmp_path / "experiments" / "study" / f"trial-{best.number:04d}" / "config.json").read_text())
    assert record["search"] == {"study": "study", "trial": best.number, "parameters": best.params}
    assert record["config"]["training"]["lr"] == best.params["training.lr"]
    assert record["config"]["trainer"]["max_epochs"] == 2
    epoch = min(best.intermediate_values, key=best.intermediate_values.get)
    address = f"--experiments-path {tmp_path / 'experiments' / 'study'} --experiment-name trial-{best.number:04d}"
    assert f"{address} create_release --epoch {epoch}" in result.output
    assert f"{address} test --epoch {epoch}" in result.output
    trial = {"experiments": str(tmp_path / "experiments" / "study"), "name": f"trial-{best.number:04d}", "cli": mnist_cli}
    assert "checkpoints: 2" in run("info", **trial).output
    assert run("test", "--epoch", str(epoch), "--device", "cpu", **trial).exit_code == 0
    assert run("create_release", "--epoch", str(epoch), **trial).exit_code == 0
    assert os.path.isfile(tmp_path / "experiments" / "study" / trial["name"] / "checkpoints" / f"{epoch}.checkpoint.release.pt")


def test_trials_counts_the_studys_total_across_runs(run, tmp_path):
    space = write_space(str(tmp_path), MOMENTA)
    assert run(*search_args(space, "--trials", "2", "--max-epochs", "1", "--sampler", "random")).exit_code == 0
    first = {name: read_log(tmp_path, name) for name in ("trial-0000", "trial-0001")}
    result = run(*search_args(space, "--trials", "3", "--max-epochs", "1", "--sampler", "random"))
    assert result.exit_code == 0, result.output
    assert len(load_study(tmp_path).trials) == 3
    assert {name: read_log(tmp_path, name) for name in first} == first
    assert read_log(tmp_path, "trial-0002").count("training from scratch") == 1
    again = run(*search_args(space, "--trials", "3", "--max-epochs", "1", "--sampler", "random"))
    assert again.exit_code == 0, again.output
    assert len(load_study(tmp_path).trials) == 3 and "trial 3" not in again.output


def test_a_rerun_with_other_settings_is_refused_and_writes_nothing(run, tmp_path):
    space = write_space(str(tmp_path), MOMENTA)
    assert run(*search_args(space, "--trials", "1", "--max-epochs", "1")).exit_code == 0
    before = snapshot(str(tmp_path))
    result = run(*search_args(space, "--trials", "2", "--max-epochs", "1", "--metric", "validation.accuracy"))
    assert result.exit_code == 2
    assert "Error: study 'study' was created with --metric validation.loss, not --metric validation.accuracy" in result.output
    assert snapshot(str(tmp_path)) == before
    other = write_space(str(tmp_path), {"training.momentum": {"choice": [0.1, 0.2]}}, name="other.json")
    before = snapshot(str(tmp_path))
    result = run(*search_args(other, "--trials", "2", "--max-epochs", "1"))
    assert result.exit_code == 2 and "was created with the search space of" in result.output
    assert snapshot(str(tmp_path)) == before


def test_a_trial_that_fails_or_diverges_is_failed_with_its_error_and_the_study_goes_on(run, tmp_path):
    space = write_space(str(tmp_path), {"training.momentum": {"choice": [0.1, FAIL_NAN, FAIL_RAISE]}})
    result = run(*search_args(space, "--trials", "3", "--max-epochs", "2", "--sampler", "grid", "--pruner", "none"))
    assert result.exit_code == 0, result.output
    states = {trial.params["training.momentum"]: (trial.state.name, trial.user_attrs.get("error")) for trial in load_study(tmp_path).trials}
    assert states == {
        0.1: ("COMPLETE", None),
        FAIL_NAN: ("FAIL", "validation.loss is nan at epoch 1"),
        FAIL_RAISE: ("FAIL", "SearchTestRunner.train_step failed: RuntimeError: the model blew up"),
    }
    assert "failed: validation.loss is nan at epoch 1" in result.output
    trials = load_study(tmp_path).trials
    shown = {trial.params["training.momentum"]: trial_state(tmp_path, trial.number) for trial in trials}
    assert shown == {0.1: "finished", FAIL_NAN: "failed", FAIL_RAISE: "failed"}
    assert "failed: SearchTestRunner.train_step failed: RuntimeError: the model blew up" in result.output
    summary = next(line for line in result.output.splitlines() if line.startswith("study study: 3 trials ("))
    assert "1 complete" in summary and "2 failed" in summary


def test_a_search_whose_every_trial_failed_exits_with_the_first_failure(run, tmp_path):
    space = write_space(str(tmp_path), {"training.momentum": {"choice": [UNREDUCED]}})
    result = run(*search_args(space, "--trials", "2", "--max-epochs", "1", "--sampler", "random", "--pruner", "none"))
    assert result.exit_code == 11, result.output
    assert "study study: 2 trials (2 failed), 0 epochs trained" in result.output  # the table comes first
    assert result.output.splitlines()[-1] == (
        "Error: all 2 trials of study 'study' failed; the first, trial 0: SearchTestRunner.train_step returned "
        "a loss of shape [16]: return a scalar (a 0-dim tensor), e.g. loss.mean()"
    )
    assert "Traceback" not in result.output


def test_median_pruning_stops_trials_worse_than_the_median(run, tmp_path):
    space = write_space(str(tmp_path), {"training.momentum": {"choice": [0.1, 0.2, 0.3, 0.4, 0.5]}})
    options = ("--trials", "5", "--max-epochs", "3", "--sampler", "grid", "--pruner", "median", "--startup-trials", "1")
    assert run(*search_args(space, *options)).exit_code == 0
    trials = load_study(tmp_path).trials
    pruned = [trial for trial in trials if trial.state.name == "PRUNED"]
    assert pruned, [(t.params, t.state) for t in trials]
    for trial in pruned:
        # Pruned at its first epoch, by a complete trial that started before it and was better.
        assert list(trial.intermediate_values) == [1]
        assert any(other.state.name == "COMPLETE" and other.number < trial.number and other.params["training.momentum"] < trial.params["training.momentum"] for other in trials)
        assert "worse than the median of earlier trials" in trial.user_attrs["stopped"]
        assert trial_state(tmp_path, trial.number) == "pruned"
    assert all(len(trial.intermediate_values) == 3 for trial in trials if trial.state.name == "COMPLETE")


def test_asha_pauses_promotes_from_the_checkpoint_and_prunes_the_rest(run, tmp_path):
    momenta = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]
    space = write_space(str(tmp_path), {"training.momentum": {"choice": momenta}})
    options = ("--trials", "6", "--max-epochs", "3", "--sampler", "grid", "--pruner", "asha", "--reduction-factor", "3")
    result = run(*search_args(space, *options))
    assert result.exit_code == 0, result.output
    trials = {trial.params["training.momentum"]: trial for trial in load_study(tmp_path).trials}
    best = trials[0.1]
    assert best.state.name == "COMPLETE" and sorted(best.intermediate_values) == [1, 2, 3]
    log = read_log(tmp_path, f"trial-{best.number:04d}")
    assert log.count("training from scratch") == 1 and "resumed from 1.checkpoint.pt: 1 epoch done" in log
    for momentum in (0.4, 0.5, 0.6):
        assert trials[momentum].state.name == "PRUNED" and list(trials[momentum].intermediate_values) == [1]
        assert trials[momentum].user_attrs["stopped"] == "not promoted from rung 0"
        # As compare shows it, not "stopped at --max-epochs".
        assert trial_state(tmp_path, trials[momentum].number) == "pruned"
    complete = [trial for trial in trials.values() if trial.state.name == "COMPLETE"]
    assert 2 <= len(complete) <= 3
    assert f"best: trial {best.number}, validation.loss 0.4333 at epoch 3" in result.output
    epochs = sum(len(trial.intermediate_values) for trial in trials.values())
    assert epochs < 6 * 3
    assert f"{epochs} epochs trained" in result.output


def test_asha_with_too_few_trials_to_fill_the_last_rung_trains_its_leader_on_to_it(run, tmp_path):
    # Rungs at epochs 1, 2 and 4: of 2 trials, floor(2 / 2) = 1 is promoted to epoch 2, and floor(1 / 2) = 0 to epoch 4.
    space = write_space(str(tmp_path), {"training.momentum": {"choice": [0.1, 0.2]}})
    options = ("--trials", "2", "--max-epochs", "4", "--min-epochs", "1", "--reduction-factor", "2")
    options += ("--sampler", "grid", "--pruner", "asha")
    result = run(*search_args(space, *options))
    assert result.exit_code == 0, result.output
    trials = {trial.params["training.momentum"]: trial for trial in load_study(tmp_path).trials}
    leader = trials[0.1]
    assert leader.state.name == "COMPLETE" and sorted(leader.intermediate_values) == [1, 2, 3, 4]
    assert trials[0.2].state.name == "PRUNED" and list(trials[0.2].intermediate_values) == [1]
    assert "rungs reached: epoch 1 by 2 trials, epoch 2 by 1 trial, epoch 4 by 1 trial" in result.output
    assert f"best: trial {leader.number}, validation.loss 0.35 at epoch 4" in result.output
    log = (tmp_path / "experiments" / "study" / "search.log").read_text()
    leading = f"trial {leader.number}, the best at the highest rung reached (rung 1), trains on to it"
    assert f"no trial reached the last rung, epoch 4: {leading}" in log


def test_a_trial_its_early_stopping_ended_on_a_rung_completes_instead_of_pausing(run, tmp_path):
    # Rungs at epochs 2 and 4; the loss stays flat, so patience 1 stops the trial after epoch 2.
    space = write_space(str(tmp_path), {"training.momentum": {"choice": [FLAT]}}, {"trainer.early_stopping_patience": 1})
    options = ("--trials", "1", "--max-epochs", "4", "--min-epochs", "2", "--sampler", "grid", "--pruner", "asha", "--reduction-factor", "2")
    result = run(*search_args(space, *options))
    assert result.exit_code == 0, result.output
    (trial,) = load_study(tmp_path).trials
    assert trial.state.name == "COMPLETE" and sorted(trial.intermediate_values) == [1, 2] and trial.value == pytest.approx(FLAT)
    log = (tmp_path / "experiments" / "study" / "search.log").read_text()
    assert "trial 0 complete after 2 epochs (stopped early): validation.loss 0.97" in log


def test_a_promoted_trial_is_bit_identical_to_one_trained_straight_through(run, tmp_path):
    import torch

    space = write_space(str(tmp_path), {"training.lr": {"choice": [0.001, 0.003]}}, {"data.augment": True})
    options = ("--trials", "2", "--max-epochs", "2", "--sampler", "grid", "--pruner", "asha", "--reduction-factor", "2")
    assert run(*search_args(space, *options), cli=mnist_cli).exit_code == 0
    promoted = next(trial for trial in load_study(tmp_path).trials if trial.state.name == "COMPLETE")
    folder = tmp_path / "experiments" / "study" / f"trial-{promoted.number:04d}"
    assert "resumed from 1.checkpoint.pt" in (folder / "verbose.log").read_text()
    record = json.loads((folder / "config.json").read_text())
    (tmp_path / "straight.json").write_text(json.dumps(record["config"]))
    init = ("init", "--config-path", str(tmp_path / "straight.json"), "--schema-path", search_project.SCHEMA, "--seed", str(record["seed"]))
    assert run(*init, cli=mnist_cli, name="straight").exit_code == 0
    assert run("train", "--device", "cpu", cli=mnist_cli, name="straight").exit_code == 0
    searched = torch.load(folder / "checkpoints" / "2.checkpoint.pt", weights_only=True)
    straight = torch.load(tmp_path / "experiments" / "straight" / "checkpoints" / "2.checkpoint.pt", weights_only=True)
    assert_identical(searched, straight)


def test_grid_over_the_architectures_runs_each_once(run, tmp_path):
    space = os.path.join(search_project.REPO, "configs", "architectures.json")
    fast = ("--set", "data.batch_size=16", "--set", "data.test_batch_size=20", "--set", "trainer.precision=fp32")
    result = run(*search_args(space, "--sampler", "grid", "--trials", "10", "--max-epochs", "1", *fast), cli=mnist_cli)
    assert result.exit_code == 0, result.output
    trials = load_study(tmp_path).trials
    assert sorted(trial.params["model.name"] for trial in trials) == ["cnn", "cnn_bn", "mlp"]
    assert all(trial.state.name == "COMPLETE" for trial in trials)
    assert "the grid has 3 points: --trials 10 is capped at 3" in result.output


def test_status_prints_the_table_without_training(run, tmp_path):
    space = write_space(str(tmp_path), MOMENTA)
    assert run(*search_args(space, "--trials", "3", "--max-epochs", "1", "--sampler", "grid")).exit_code == 0
    before = snapshot(str(tmp_path / "experiments"))
    result = run("search", "--status")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith("study study: 3 trials (3 complete), 3 epochs trained; minimize validation.loss")
    assert lines[1].split() == ["trial", "parameters", "value", "state", "epochs"]
    rows = {line.split()[1]: line.split() for line in lines[2:5]}
    assert rows["training.momentum=0.1"][2:] == ["1.1", "complete", "1"]
    assert lines[5].startswith("best: trial ") and "training.momentum=0.1" in lines[5]
    assert snapshot(str(tmp_path / "experiments")) == before


def test_a_misspelled_metric_is_refused_before_any_trial_trains_and_writes_nothing(run, tmp_path):
    space = write_space(str(tmp_path), MOMENTA)
    before = snapshot(str(tmp_path))
    result = run(*search_args(space, "--trials", "2", "--max-epochs", "1", "--metric", "validation.acurracy"))
    assert result.exit_code == 2, result.output
    assert result.output.splitlines()[-1] == (
        "Error: metric validation.acurracy is not among the metrics SearchTestRunner.validation_step returns "
        "(validation.accuracy, validation.loss): choose one of them with --metric; nothing was written"
    )
    assert "training" not in result.output
    assert snapshot(str(tmp_path)) == before and not os.path.exists(tmp_path / "experiments")


def test_timeout_starts_nothing_once_passed(run, tmp_path):
    space = write_space(str(tmp_path), MOMENTA)
    result = run(*search_args(space, "--trials", "2", "--max-epochs", "1", "--timeout", "0"))
    assert result.exit_code == 0, result.output
    assert "--timeout 0 s reached: starting nothing more" in result.output
    assert load_study(tmp_path).trials == []
