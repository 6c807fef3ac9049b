"""The MLflow mirror when its server fails: down at the start, or killed mid-training and
restarted; training goes on with one warning, and `sync` then sends every epoch exactly once."""

import os

import pytest

from conftest import free_port, import_or_skip, init_args

import_or_skip("mlflow", "TORCHEXP_REQUIRE_MLFLOW")
from mirror_helpers import EPOCH_KEYS, has_step, read_run, read_steps, start_training, wait_for  # noqa: E402
from mlflow import MlflowClient  # noqa: E402
from mlflow_server import start_mlflow_server  # noqa: E402


@pytest.mark.slow  # 28 s, two server starts; the default suite's outage test is the server down at the start, below
def test_a_server_killed_mid_training_then_restarted_gets_every_epoch_once_from_sync(cli_in, tmp_path, data_path):
    cli_in(*init_args("--set", "model.name=mlp", "--set", "trainer.max_epochs=3"))
    folder = str(tmp_path / "mlflow")
    os.makedirs(folder)
    with start_mlflow_server(folder) as server:
        gate = tmp_path / "server-killed"
        training = start_training(tmp_path, data_path, server.url, gate=str(gate))
        try:
            wait_for(lambda: has_step(server, tmp_path, "validation/loss", 1), training, "epoch 1 reached MLflow")
            server.kill()
            gate.touch()  # training waits before epoch 2 until the server is down
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


def test_a_server_down_at_the_start_costs_training_nothing_and_sync_sends_it_all_once(mlflow_server, cli_in, tmp_path):
    server = mlflow_server
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
