"""The MLflow mirror against a real `mlflow server` (SQLite store): one experiment is one
run, resumed in place after a kill; a server down at the start or killed mid-run costs
training nothing, and `sync` then sends every epoch exactly once; bad input is one sentence."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner

from conftest import REPO, free_port, init_args, snapshot
from mlflow_server import start_mlflow_server
from mnist_classifier.__main__ import cli

pytest.importorskip("mlflow")
from mlflow import MlflowClient  # noqa: E402

EPOCH_KEYS = ("train/loss", "train/accuracy", "validation/loss", "validation/accuracy")


@pytest.fixture
def server(mlflow_server):
    return mlflow_server


@pytest.fixture
def cli_in(tmp_path, data_path):
    """Run the MNIST CLI on tmp_path's experiments (an MLflow experiment named after the test's folder)."""

    def run(*args: str, name: str = "x", uri: str | None = None, code: int = 0):
        base = ["--experiments-path", str(tmp_path / "experiments"), "--data-path", data_path, "--experiment-name", name]
        if uri is not None:
            base += ["--mlflow-uri", uri]
        result = CliRunner().invoke(cli, [*base, *args], catch_exceptions=False)
        assert result.exit_code == code, result.output
        return result

    return run


def read_run(server, tmp_path, name: str = "x"):
    state = json.loads((tmp_path / "experiments" / name / "mlflow.json").read_text())
    run_id = state["runs"][server.url]["run_id"]
    return MlflowClient(server.url).get_run(run_id)


def read_steps(server, run_id: str, key: str) -> list[int]:
    return sorted(metric.step for metric in MlflowClient(server.url).get_metric_history(run_id, key))


def test_an_experiment_is_one_run_with_its_config_epochs_tests_provenance_and_artifacts(server, cli_in, tmp_path):
    cli_in(*init_args("--set", "model.name=mlp", "--set", "trainer.max_epochs=2"))
    cli_in("train", "--max-epochs", "1", "--device", "cpu", uri=server.url)
    first = read_run(server, tmp_path)
    assert first.info.status == "FINISHED" and first.info.run_name == "x"
    cli_in("train", "--device", "cpu", uri=server.url)
    cli_in("test", "--device", "cpu", uri=server.url)
    run = read_run(server, tmp_path)
    client = MlflowClient(server.url)
    assert run.info.run_id == first.info.run_id  # the resume continued the same run
    assert client.get_experiment(run.info.experiment_id).name == "experiments"  # the experiments folder's name
    assert run.info.status == "FINISHED"
    for key in EPOCH_KEYS:
        assert read_steps(server, run.info.run_id, key) == [1, 2], key
    assert read_steps(server, run.info.run_id, "test/accuracy") == [2]
    metrics = [json.loads(line) for line in (tmp_path / "experiments" / "x" / "metrics.jsonl").read_text().splitlines()]
    validation = next(line["metrics"]["loss"] for line in metrics if line["kind"] == "validation" and line["epoch"] == 2)
    assert run.data.metrics["validation/loss"] == pytest.approx(validation)
    params = run.data.params
    assert params["model.name"] == "mlp" and params["trainer.max_epochs"] == "2" and params["data.batch_size"] == "16"
    assert params["seed"] == str(json.loads((tmp_path / "experiments" / "x" / "config.json").read_text())["seed"]) and params["precision"] == "fp32"
    provenance = [json.loads(line) for line in (tmp_path / "experiments" / "x" / "provenance.jsonl").read_text().splitlines()][-1]
    tags = run.data.tags
    assert tags["torchexp.version"] == __import__("torchexp").__version__
    assert tags["mlflow.source.git.commit"] == provenance["code"]["commit"]
    assert tags["torchexp.data.sha256"] == provenance["data"]["sha256"]
    assert tags["torchexp.torch"] == provenance["environment"]["torch"] and tags["torchexp.cpu_flags"] == provenance["environment"]["cpu_flags"]
    artifacts = {info.path for info in client.list_artifacts(run.info.run_id)} | {info.path for info in client.list_artifacts(run.info.run_id, "confusion_matrix")}
    assert {"config.json", "confusion_matrix/2.standard.png"} <= artifacts


def start_training(tmp_path, data_path, uri: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "mnist_classifier", "--experiments-path", str(tmp_path / "experiments"), "--data-path", data_path]
    command += ["--experiment-name", "x", "--mlflow-uri", uri, "train", "--device", "cpu"]
    return subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


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


def test_a_killed_run_is_resumed_in_place_and_every_epoch_is_logged_once(server, cli_in, tmp_path, data_path):
    cli_in(*init_args("--set", "model.name=mlp", "--set", "trainer.max_epochs=3"))
    training = start_training(tmp_path, data_path, server.url)
    try:
        wait_for(lambda: has_step(server, tmp_path, "validation/loss", 1), training, "epoch 1 reached MLflow")
        training.send_signal(signal.SIGKILL)
        training.communicate(timeout=60)
    finally:
        training.kill()
    assert read_run(server, tmp_path).info.status == "RUNNING"  # what a SIGKILL leaves
    assert "status KILLED" in cli_in("sync", uri=server.url).output  # sync corrects it
    assert read_run(server, tmp_path).info.status == "KILLED"
    cli_in("train", "--device", "cpu", uri=server.url)
    run = read_run(server, tmp_path)
    assert run.info.status == "FINISHED"
    for key in EPOCH_KEYS:
        assert read_steps(server, run.info.run_id, key) == [1, 2, 3], key


def test_a_server_killed_mid_training_then_restarted_gets_every_epoch_once_from_sync(cli_in, tmp_path, data_path):
    cli_in(*init_args("--set", "model.name=mlp", "--set", "trainer.max_epochs=3"))
    folder = str(tmp_path / "mlflow")
    os.makedirs(folder)
    with start_mlflow_server(folder) as server:
        training = start_training(tmp_path, data_path, server.url)
        try:
            wait_for(lambda: has_step(server, tmp_path, "validation/loss", 1), training, "epoch 1 reached MLflow")
            server.kill()
            output = training.communicate(timeout=300)[0]
        finally:
            training.kill()
    assert training.returncode == 0, output  # training went on
    assert output.count("cannot be reached") == 1 and "epoch 3:" in output, output
    with start_mlflow_server(folder, port=server.port) as restarted:
        assert "FINISHED" in cli_in("sync", uri=restarted.url).output
        run = read_run(restarted, tmp_path)
        for key in EPOCH_KEYS:
            assert read_steps(restarted, run.info.run_id, key) == [1, 2, 3], key
        assert cli_in("sync", uri=restarted.url).output.strip() == "experiment x: nothing new"


def test_a_server_down_at_the_start_costs_training_nothing_and_sync_sends_it_all_once(server, cli_in, tmp_path):
    cli_in(*init_args("--set", "model.name=mlp", "--set", "trainer.max_epochs=2"))
    down = f"http://127.0.0.1:{free_port()}"
    result = cli_in("train", "--device", "cpu", uri=down)
    assert result.output.count("cannot be reached (connection refused)") == 1, result.output
    assert not (tmp_path / "experiments" / "x" / "mlflow.json").exists()
    first = cli_in("sync", uri=server.url).output
    assert "status FINISHED" in first and "config.json" not in first, first
    run = read_run(server, tmp_path)
    for key in EPOCH_KEYS:
        assert read_steps(server, run.info.run_id, key) == [1, 2], key
    assert {info.path for info in MlflowClient(server.url).list_artifacts(run.info.run_id)} == {"config.json"}
    assert cli_in("sync", uri=server.url).output.strip() == "experiment x: nothing new"  # twice changes nothing


def test_bad_uris_and_folders_are_one_sentence_and_change_nothing(server, cli_in, tmp_path):
    cli_in(*init_args("--set", "model.name=mlp"))
    (tmp_path / "experiments" / "notes").mkdir()
    before = snapshot(str(tmp_path / "experiments"))
    result = cli_in("sync", uri="htp://127.0.0.1:5000", code=2)
    assert result.output.strip() == (
        "Error: MLflow tracking URI 'htp://127.0.0.1:5000' is not valid: use http://HOST:PORT of an MLflow server, file:PATH, "
        "or a database URL such as sqlite:///PATH"
    )
    assert "has a port that is not a number" in cli_in("train", uri="http://127.0.0.1:50x0", code=2).output
    down = f"http://127.0.0.1:{free_port()}"
    result = cli_in("sync", uri=down, code=13)
    assert result.output.strip() == (
        f"Error: MLflow at {down} cannot be reached (connection refused) to find the MLflow experiment 'experiments': is the server running there?"
    )
    result = cli_in("sync", uri=server.url, name="notes", code=3)
    assert result.output.strip() == f"Error: 'notes' in {tmp_path / 'experiments'} is neither an experiment nor a study: there is nothing to sync"
    assert "sync needs an MLflow server" in cli_in("sync", code=2).output
    assert snapshot(str(tmp_path / "experiments")) == before


def test_without_tracking_mlflow_is_never_imported(tmp_path, data_path):
    experiments = str(tmp_path / "experiments")
    script = (
        "import sys\n"
        "from mnist_classifier.__main__ import cli\n"
        f"base = ['--experiments-path', {experiments!r}, '--data-path', {data_path!r}, '--experiment-name', 'x']\n"
        f"cli.main([*base, *{init_args('--set', 'model.name=mlp', '--set', 'trainer.max_epochs=1')!r}], standalone_mode=False)\n"
        "cli.main([*base, 'train', '--device', 'cpu'], standalone_mode=False)\n"
        "print('mlflow imported:', 'mlflow' in sys.modules)\n"
    )
    env = {key: value for key, value in os.environ.items() if not key.startswith("MLFLOW_")}
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "mlflow imported: False" in done.stdout
