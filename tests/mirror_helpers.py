"""What the MLflow mirror's tests share: reading a run back, and a training process to kill."""

import json
import os
import subprocess
import sys
import time

from conftest import REPO

from mlflow import MlflowClient

EPOCH_KEYS = ("train/loss", "train/accuracy", "validation/loss", "validation/accuracy")


def read_run(server, tmp_path, name: str = "x"):
    state = json.loads((tmp_path / "experiments" / name / "mlflow.json").read_text())
    run_id = state["runs"][server.url]["run_id"]
    return MlflowClient(server.url).get_run(run_id)


def read_steps(server, run_id: str, key: str) -> list[int]:
    return sorted(metric.step for metric in MlflowClient(server.url).get_metric_history(run_id, key))


def start_training(tmp_path, data_path, uri: str, gate: str | None = None) -> subprocess.Popen:
    """`train` in a process of its own; with `gate`, held before epoch 2 until that file exists
    (tests/gated_project.py)."""
    program = ["-m", "mnist_classifier"] if gate is None else [os.path.join(REPO, "tests", "gated_project.py")]
    command = [sys.executable, *program, "--experiments-path", str(tmp_path / "experiments"), "--data-path", data_path]
    command += ["--experiment-name", "x", "--mlflow-uri", uri, "train", "--device", "cpu"]
    env = {**os.environ, **({"TORCHEXP_TEST_GATE": gate} if gate else {})}
    return subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_for(condition, process: subprocess.Popen, what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, f"training ended before {what}: {process.communicate()[0]}"
        assert time.monotonic() < deadline, f"{what} did not happen within {timeout} s"
        time.sleep(0.1)


def has_step(server, tmp_path, key: str, step: int) -> bool:
    path = tmp_path / "experiments" / "x" / "mlflow.json"
    if not path.exists():
        return False
    run_id = json.loads(path.read_text())["runs"][server.url]["run_id"]
    return step in read_steps(server, run_id, key)
