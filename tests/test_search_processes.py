"""A search as processes: killed or stopped mid-trial, the same command continues the study
and resumes the trial from its checkpoint; --dashboard serves the study until Ctrl-C.

A trial is signalled while it waits at the test project's gate before its second epoch
(`search_project.wait_at_gate`), so the signal lands at the same point on every run.
"""

import json
import os
import select
import signal
import subprocess
import time
import urllib.request

import pytest
from click.testing import CliRunner

import search_project
from conftest import free_port, snapshot
from search_project import open_gate, search_args, start_search, wait_until, write_space

MOMENTA = {"training.momentum": {"choice": [0.1, 0.3]}}
OPTIONS = ("--trials", "2", "--max-epochs", "3", "--sampler", "grid", "--pruner", "none")


def base_args(tmp_path, data_path) -> list[str]:
    return ["--experiments-path", str(tmp_path / "experiments"), "--data-path", data_path, "--experiment-name", "study"]


def start(tmp_path, data_path, *args: str, gate: str | None = None) -> subprocess.Popen:
    return start_search(str(tmp_path / "experiments"), data_path, *args, gate=gate)


def start_at_second_epoch(tmp_path, data_path, space: str) -> tuple[subprocess.Popen, str]:
    """Start the search and wait until trial 0 has saved epoch 1 and waits at the gate
    before epoch 2; return the process and the gate."""
    gate = str(tmp_path / "gate")
    process = start(tmp_path, data_path, *search_args(space, *OPTIONS), gate=gate)
    marker = os.path.join(gate, "trial-0000-epoch-2")
    wait_until(lambda: os.path.exists(marker), [process], "trial 0 reached epoch 2")
    return process, gate


def read_line(process: subprocess.Popen, prefix: str, timeout: float = 60) -> tuple[str, str]:
    """Read the process's output until a line starts with `prefix`, never blocking past
    `timeout` seconds; return that line and all the output read. The pipe is read with
    os.read, so that nothing waits in a buffer that select cannot see."""
    deadline = time.monotonic() + timeout
    received = b""
    fd = process.stdout.fileno()
    while True:
        line = next((line for line in received.split(b"\n")[:-1] if line.startswith(prefix.encode())), None)
        if line is not None:
            return line.decode(), received.decode()
        remaining = deadline - time.monotonic()
        chunk = os.read(fd, 65536) if remaining > 0 and select.select([fd], [], [], remaining)[0] else b""
        if not chunk:
            process.kill()
            pytest.fail(f"no line starting with {prefix!r} within {timeout} s or before the output ended:\n{received.decode()}")
        received += chunk


def load_trials(tmp_path):
    return search_project.load_study(str(tmp_path / "experiments")).trials


def trial_log(tmp_path, number: int) -> str:
    return search_project.read_trial_log(str(tmp_path / "experiments"), f"trial-{number:04d}")


def rerun(tmp_path, data_path, space: str):
    """The same search command again, in this process."""
    return CliRunner().invoke(search_project.cli, [*base_args(tmp_path, data_path), *search_args(space, *OPTIONS)], catch_exceptions=False)


def test_sigkill_mid_trial_then_the_same_command_resumes_that_trial_from_its_checkpoint(tmp_path, data_path):
    space = write_space(str(tmp_path), MOMENTA)
    process, _ = start_at_second_epoch(tmp_path, data_path, space)
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
    assert log.count("resumed from 1.checkpoint.pt: 1 epoch done") == 1
    assert trial_log(tmp_path, 1).count("training from scratch") == 1


def test_ctrl_c_mid_trial_saves_it_and_the_same_command_resumes_it(tmp_path, data_path):
    space = write_space(str(tmp_path), MOMENTA)
    process, gate = start_at_second_epoch(tmp_path, data_path, space)
    # The signal is pending before the gate opens, so the trial stops at its first iteration.
    process.send_signal(signal.SIGINT)
    open_gate(gate)
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
        # The line is printed once the server listens.
        announced, received = read_line(process, "optuna-dashboard at ")
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=30) as response:
            studies = json.load(response)["study_summaries"]
        assert [(study["study_name"], study["directions"]) for study in studies] == [("study", ["minimize"])]
    finally:
        process.send_signal(signal.SIGINT)
        try:
            rest, _ = process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()  # never leave a server behind
            pytest.fail(f"the dashboard did not stop on Ctrl-C:\n{process.communicate()[0]}")
    output = received + rest
    assert announced == f"optuna-dashboard at http://127.0.0.1:{port}/ (Ctrl-C to stop)"
    assert f"optuna-dashboard at http://127.0.0.1:{port}/ (Ctrl-C to stop)" in output
    assert process.returncode == 0, output
