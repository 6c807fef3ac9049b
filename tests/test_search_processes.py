"""A search as processes: killed or stopped mid-trial, the same command continues the study
and resumes the trial from its checkpoint; --dashboard serves the study until Ctrl-C."""

import json
import os
import signal
import subprocess
import time
import urllib.request

import pytest
from click.testing import CliRunner

import search_project
from conftest import free_port, snapshot
from search_project import search_args, start_search, write_space

MOMENTA = {"training.momentum": {"choice": [0.1, 0.3]}}
OPTIONS = ("--trials", "2", "--max-epochs", "3", "--sampler", "grid", "--pruner", "none")


def base_args(tmp_path, data_path) -> list[str]:
    return ["--experiments-path", str(tmp_path / "experiments"), "--data-path", data_path, "--experiment-name", "study"]


def start(tmp_path, data_path, *args: str, epoch_seconds: float = 0) -> subprocess.Popen:
    return start_search(str(tmp_path / "experiments"), data_path, *args, epoch_seconds=epoch_seconds)


def wait_for(path, process: subprocess.Popen, timeout: float = 120) -> None:
    """Wait until `path` exists; fail if the process ends first or it takes too long."""
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if process.poll() is not None:
            pytest.fail(f"the search ended before {path} appeared:\n{process.stdout.read()}")
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"{path} did not appear in {timeout} s")
        time.sleep(0.02)


def load_trials(tmp_path):
    return search_project.load_study(str(tmp_path / "experiments")).trials


def trial_log(tmp_path, number: int) -> str:
    return search_project.read_trial_log(str(tmp_path / "experiments"), f"trial-{number:04d}")


def rerun(tmp_path, data_path, space: str):
    """The same search command again, in this process."""
    return CliRunner().invoke(search_project.cli, [*base_args(tmp_path, data_path), *search_args(space, *OPTIONS)], catch_exceptions=False)


def test_sigkill_mid_trial_then_the_same_command_resumes_that_trial_from_its_checkpoint(tmp_path, data_path):
    space = write_space(str(tmp_path), MOMENTA)
    process = start(tmp_path, data_path, *search_args(space, *OPTIONS), epoch_seconds=5)
    wait_for(tmp_path / "experiments" / "study" / "trial-0000" / "checkpoints" / "1.checkpoint.pt.json", process)
    process.kill()
    process.wait(timeout=30)
    assert [trial.state.name for trial in load_trials(tmp_path)] == ["RUNNING"]
    before = snapshot(str(tmp_path / "experiments"))
    status = CliRunner().invoke(search_project.cli, [*base_args(tmp_path, data_path), "search", "--status"], catch_exceptions=False)
    assert status.output.splitlines()[2].split()[-2:] == ["waiting", "1"], status.output
    assert snapshot(str(tmp_path / "experiments")) == before
    result = rerun(tmp_path, data_path, space)
    assert result.exit_code == 0, result.output
    assert "trial 0 (resume)" in result.output
    trials = load_trials(tmp_path)
    assert [trial.state.name for trial in trials] == ["COMPLETE", "COMPLETE"]
    assert sorted(trials[0].intermediate_values) == [1, 2, 3]
    log = trial_log(tmp_path, 0)
    assert log.count("training from scratch") == 1
    assert log.count("resumed from 1.checkpoint.pt: 1 epochs done") == 1
    assert trial_log(tmp_path, 1).count("training from scratch") == 1


def test_ctrl_c_mid_trial_saves_it_and_the_same_command_resumes_it(tmp_path, data_path):
    space = write_space(str(tmp_path), MOMENTA)
    process = start(tmp_path, data_path, *search_args(space, *OPTIONS), epoch_seconds=2)
    wait_for(tmp_path / "experiments" / "study" / "trial-0000" / "checkpoints" / "1.checkpoint.pt.json", process)
    process.send_signal(signal.SIGINT)
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 130, output
    assert "Error: search stopped in trial 0: training stopped by SIGINT at epoch 2, iteration 1; saved 2.checkpoint.interrupt.pt" in output
    assert "Traceback" not in output
    result = rerun(tmp_path, data_path, space)
    assert result.exit_code == 0, result.output
    assert "resumed from 2.checkpoint.interrupt.pt" in trial_log(tmp_path, 0)
    assert [trial.state.name for trial in load_trials(tmp_path)] == ["COMPLETE", "COMPLETE"]


def test_dashboard_serves_the_study_on_loopback_until_ctrl_c(tmp_path, data_path):
    space = write_space(str(tmp_path), MOMENTA)
    # A study with one short trial is enough to be shown.
    search = search_args(space, "--trials", "1", "--max-epochs", "1")
    result = CliRunner().invoke(search_project.cli, [*base_args(tmp_path, data_path), *search], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    port = free_port()
    process = start(tmp_path, data_path, "search", "--dashboard", "--port", str(port))
    try:
        studies = None
        deadline = time.monotonic() + 60
        while studies is None and time.monotonic() < deadline and process.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=5) as response:
                    studies = json.load(response)["study_summaries"]
            except OSError:
                time.sleep(0.2)
        assert studies is not None, "the dashboard did not answer"
        assert [(study["study_name"], study["directions"]) for study in studies] == [("study", ["minimize"])]
    finally:
        process.send_signal(signal.SIGINT)
        try:
            output, _ = process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()  # never leave a server behind
            pytest.fail(f"the dashboard did not stop on Ctrl-C:\n{process.communicate()[0]}")
    assert f"optuna-dashboard at http://127.0.0.1:{port}/ (Ctrl-C to stop)" in output
    assert process.returncode == 0, output
