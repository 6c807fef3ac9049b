"""The MLflow mirror against a real `mlflow server` (SQLite store): one experiment is one
run, resumed in place after a kill; bad input is one sentence; no mlflow without tracking."""

import json
import os
import signal
import subprocess
import sys

import pytest

from conftest import REPO, free_port, import_or_skip, init_args, snapshot

import_or_skip("mlflow", "TORCHEXP_REQUIRE_MLFLOW")
from mirror_helpers import EPOCH_KEYS, has_step, read_run, read_steps, start_training, wait_for  # noqa: E402
from mlflow import MlflowClient  # noqa: E402

from torchexp import Experiments  # noqa: E402


def test_an_experiment_is_one_run_with_its_config_epochs_tests_provenance_and_artifacts(mlflow_server, cli_in, tmp_path):
    server = mlflow_server
    cli_in(*init_args("--set", "model.name=mlp", "--set", "trainer.max_epochs=2"))
    cli_in("train", "--max-epochs", "1", "--device", "cpu", uri=server.url)
    first = read_run(server, tmp_path)
    assert first.info.status == "FINISHED" and first.info.run_name == "x"
    cli_in("train", "--device", "cpu", uri=server.url)
    cli_in("test", "--device", "cpu", uri=server.url)
    run = read_run(server, tmp_path)
    client = MlflowClient(server.url)
    assert run.info.run_id == first.info.run_id  # the resume continued the same run
    assert client.get_experiment(run.info.experiment_id).name == "mnist_classifier"  # the project's name
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


def test_a_killed_run_is_resumed_in_place_and_every_epoch_is_logged_once(mlflow_server, cli_in, tmp_path, data_path):
    server = mlflow_server
    # Planned far beyond what runs before the kill: on tiny data three epochs could all end
    # before the SIGKILL lands, and the run would then truly be FINISHED.
    cli_in(*init_args("--set", "model.name=mlp", "--set", "trainer.max_epochs=1000"))
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
    saved = Experiments(str(tmp_path / "experiments"))["x"].epochs  # the mirror logs an epoch after its checkpoint
    cli_in("train", "--max-epochs", str(saved + 2), "--device", "cpu", uri=server.url)
    run = read_run(server, tmp_path)
    assert run.info.status == "FINISHED"
    for key in EPOCH_KEYS:
        assert read_steps(server, run.info.run_id, key) == list(range(1, saved + 3)), key


def test_bad_uris_and_folders_are_one_sentence_and_change_nothing(mlflow_server, cli_in, tmp_path):
    server = mlflow_server
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
        f"Error: MLflow at {down} cannot be reached (connection refused) to find the MLflow experiment 'mnist_classifier': is the server running there?"
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
