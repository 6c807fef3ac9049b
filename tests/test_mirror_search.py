"""A search in MLflow: the study is a parent run, each trial a nested run; a paused trial
carries `paused` and its rung, a pruned one ends KILLED with `pruned`, a failed one FAILED
with its error; the parent carries the best trial's number and value."""

import json

import pytest
from click.testing import CliRunner

import search_project
from search_project import FAIL_RAISE, search_args, write_space

from conftest import import_or_skip  # noqa: E402

import_or_skip("mlflow", "TORCHEXP_REQUIRE_MLFLOW")
from mlflow import MlflowClient  # noqa: E402


def test_a_study_is_a_parent_run_and_its_trials_nested_runs_with_their_state(mlflow_server, tmp_path, data_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "searches")  # this test's own, apart from other tests' runs of search_project
    space = write_space(str(tmp_path), {"training.momentum": {"choice": [0.1, 0.3, 0.5, FAIL_RAISE]}})
    options = ("--trials", "4", "--max-epochs", "3", "--sampler", "grid", "--pruner", "asha", "--reduction-factor", "3")
    server = mlflow_server
    base = ["--experiments-path", str(tmp_path / "searches"), "--data-path", data_path, "--experiment-name", "study", "--mlflow-uri", server.url]

    def search(*extra: str) -> None:
        result = CliRunner().invoke(search_project.cli, [*base, *search_args(space, *options, *extra)], catch_exceptions=False)
        assert result.exit_code == 0, result.output

    client = MlflowClient(server.url)

    def read_runs() -> dict:
        (experiment,) = [found for found in client.search_experiments() if found.name == "searches"]
        return {run.info.run_name: run for run in client.search_runs([experiment.experiment_id])}

    # Each run with a timeout trains one more trial to its first rung, then stops.
    for _ in range(3):
        search("--timeout", "1")
        study = search_project.load_study(str(tmp_path / "searches"))
        waiting = [trial for trial in study.trials if trial.user_attrs.get("status") == "paused"]
        if waiting:
            break
    assert waiting, [(trial.params, trial.state.name) for trial in study.trials]
    runs = read_runs()
    parent = runs["study"]
    assert parent.info.status == "KILLED"  # trials are left
    paused = runs[f"trial-{waiting[0].number:04d}"]
    assert paused.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert (paused.data.tags["paused"], paused.data.tags["rung"], paused.info.status) == ("true", "0", "SCHEDULED")
    assert paused.data.params["training.momentum"] == str(waiting[0].params["training.momentum"])

    search()
    runs = read_runs()
    parent = runs["study"]
    study = search_project.load_study(str(tmp_path / "searches"))
    by_momentum = {trial.params["training.momentum"]: trial for trial in study.trials}
    best = by_momentum[0.1]
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["best_trial"] == str(best.number) and float(parent.data.tags["best_value"]) == pytest.approx(best.value)
    assert parent.data.params["pruner"] == "asha" and parent.data.params["metric"] == "validation.loss"
    trials = {number: runs[f"trial-{number:04d}"] for number in range(4)}
    assert all(run.data.tags["mlflow.parentRunId"] == parent.info.run_id for run in trials.values())
    complete = trials[best.number]
    assert complete.info.status == "FINISHED" and "paused" not in complete.data.tags and "rung" not in complete.data.tags
    steps = sorted(metric.step for metric in client.get_metric_history(complete.info.run_id, "validation/loss"))
    assert steps == [1, 2, 3]
    pruned = trials[by_momentum[0.5].number]
    assert pruned.info.status == "KILLED" and pruned.data.tags["pruned"] == "not promoted from rung 0"
    failed = trials[by_momentum[FAIL_RAISE].number]
    assert failed.info.status == "FAILED"
    assert failed.data.tags["error"] == "SearchTestRunner.train_step failed: RuntimeError: the model blew up"
    state = json.loads((tmp_path / "searches" / "study" / "mlflow.json").read_text())
    assert state["runs"][server.url]["run_id"] == parent.info.run_id
