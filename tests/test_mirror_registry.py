"""Releases in MLflow's Model Registry as pyfunc models from code that answer a client's
instances through the project's serving hooks, nothing pickled: loaded back with
`mlflow.pyfunc.load_model` and served by `mlflow models serve`, they answer MNIST test
digits as torchexp's predictor and `serve` do; the MLflow UI shows a trained run's
validation-loss chart; a PostgreSQL-backed server works the same."""

import json
import os
import subprocess
import sys
import urllib.request

import numpy as np
import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient

from conftest import REPO, free_port, import_or_skip, init_args, snapshot
from mlflow_browser import open_browser, wait_for_metric_chart
from mlflow_server import is_healthy, start_mlflow_server
from mnist_classifier.__main__ import cli
from postgres_server import postgres_server
from serve_fixtures import NAME, build_app, pixels_body

import_or_skip("mlflow", "TORCHEXP_REQUIRE_MLFLOW")
import mlflow.pyfunc  # noqa: E402
from mlflow import MlflowClient  # noqa: E402

import torchexp  # noqa: E402

SERVE_TIMEOUT = 180  # seconds for `mlflow models serve` to answer /ping on a busy machine


@pytest.fixture
def server(mlflow_server):
    return mlflow_server


def run_cli(tmp_path, data_path, *args: str, code: int = 0, name: str = "x"):
    base = ["--experiments-path", str(tmp_path / "experiments"), "--data-path", data_path, "--experiment-name", name]
    result = CliRunner().invoke(cli, [*base, *args], catch_exceptions=False)
    assert result.exit_code == code, result.output
    return result


def read_test_digits(data_path: str, count: int) -> list[list[list[int]]]:
    """The first `count` images of the test set under `data_path`, 28 x 28 values 0-255."""
    with open(os.path.join(data_path, "MNIST", "raw", "t10k-images-idx3-ubyte"), "rb") as file:
        file.seek(16)
        pixels = np.frombuffer(file.read(count * 28 * 28), dtype=np.uint8)
    return pixels.reshape(count, 28, 28).tolist()


def test_a_release_is_a_registered_model_from_code_that_answers_as_serve_does(server, tmp_path, data_path, monkeypatch):
    uri = ("--mlflow-uri", server.url)
    run_cli(tmp_path, data_path, *init_args("--set", "model.name=mlp", "--set", "trainer.max_epochs=1"), name=NAME)
    run_cli(tmp_path, data_path, *uri, "train", "--device", "cpu", name=NAME)
    before = snapshot(str(tmp_path / "experiments"))
    refused = run_cli(tmp_path, data_path, *uri, "create_release", "--registered-model", "a/b", code=13, name=NAME)
    assert refused.output.strip().startswith("Error: MLflow refuses the registered model name 'a/b': Invalid model name 'a/b'")
    assert snapshot(str(tmp_path / "experiments")) == before  # nothing written
    output = run_cli(tmp_path, data_path, *uri, "create_release", name=NAME).output
    assert "registered the release of epoch 1 in MLflow as 'mnist_classifier-served' version 1" in output
    client = MlflowClient(server.url)
    (version,) = client.search_model_versions("name = 'mnist_classifier-served'")
    release_sidecar = json.loads((tmp_path / "experiments" / NAME / "checkpoints" / "1.checkpoint.release.pt.json").read_text())
    assert version.tags["epoch"] == "1" and version.tags["checkpoint_sha256"] == release_sidecar["sha256"]
    run_id = json.loads((tmp_path / "experiments" / NAME / "mlflow.json").read_text())["runs"][server.url]["run_id"]
    assert version.run_id == run_id
    model_folder = client.download_artifacts(run_id, "release-1", str(tmp_path / "downloaded"))
    model_files = {os.path.relpath(os.path.join(folder, name), model_folder) for folder, _, names in os.walk(model_folder) for name in names}
    release_file = f"artifacts/{NAME}/checkpoints/1.checkpoint.release.pt"
    assert {"MLmodel", "release_model.py", "input_example.json", release_file} <= model_files
    assert not any(path.endswith((".pkl", ".pickle")) or "pickle" in path for path in model_files)  # nothing cloudpickled
    mlmodel = open(os.path.join(model_folder, "MLmodel")).read()
    assert "loader_module: mlflow.pyfunc.loaders.code_model" in mlmodel and "python_model:" not in mlmodel
    assert f"torchexp[serve]=={torchexp.__version__}" in open(os.path.join(model_folder, "requirements.txt")).read()
    assert run_cli(tmp_path, data_path, *uri, "sync", name=NAME).output.strip() == f"experiment {NAME}: nothing new"  # registered once

    digits = read_test_digits(data_path, 8)
    expected = torchexp.load_predictor(str(tmp_path / "experiments"), NAME, device="cpu").predict(digits)
    with TestClient(build_app(str(tmp_path / "experiments"))) as served:
        assert served.post(f"/v1/models/{NAME}:predict", json=pixels_body(*digits)).json()["predictions"] == expected
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server.url)
    assert mlflow.pyfunc.load_model("models:/mnist_classifier-served/1").predict(digits) == expected
    settings = {"device": "cpu", "max_batch_size": 8}
    configured = mlflow.pyfunc.load_model("models:/mnist_classifier-served/1", model_config=settings)
    assert configured.unwrap_python_model().predictor.max_batch_size == 8  # one batch of the 8 digits, as with 32
    assert configured.predict(digits) == expected
    assert predictions_from_mlflow_server(server.url, "mnist_classifier-served", 1, digits, tmp_path) == expected


def test_a_release_of_an_experiment_with_sharded_checkpoints_is_registered_from_its_single_file(server, tmp_path, data_path):
    uri = ("--mlflow-uri", server.url)
    run_cli(tmp_path, data_path, *init_args("--set", "model.name=mlp", "--set", "trainer.max_epochs=1", "--set", "trainer.strategy=fsdp"), name="sharded")
    run_cli(tmp_path, data_path, *uri, "train", "--device", "cpu", name="sharded")
    assert (tmp_path / "experiments" / "sharded" / "checkpoints" / "1.checkpoint.dcp").is_dir()
    output = run_cli(tmp_path, data_path, *uri, "create_release", "--registered-model", "sharded-release", name="sharded").output
    assert "registered the release of epoch 1 in MLflow as 'sharded-release' version 1" in output
    (version,) = MlflowClient(server.url).search_model_versions("name = 'sharded-release'")
    release_sidecar = json.loads((tmp_path / "experiments" / "sharded" / "checkpoints" / "1.checkpoint.release.pt.json").read_text())
    assert version.tags["checkpoint_sha256"] == release_sidecar["sha256"]


def predictions_from_mlflow_server(tracking_uri: str, name: str, version: int, instances: list, tmp_path) -> list:
    """Serve models:/name/version with `mlflow models serve` and return its predictions of the instances."""
    port = free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri, "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"]}
    command = [sys.executable, "-m", "mlflow", "models", "serve", "-m", f"models:/{name}/{version}", "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port)]
    with open(tmp_path / "models-serve.log", "wb") as log:
        process = subprocess.Popen(command, env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_serving(process, url, tmp_path / "models-serve.log")
        body = json.dumps({"inputs": instances}).encode()
        request = urllib.request.Request(f"{url}/invocations", body, {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as response:
            return json.load(response)["predictions"]
    finally:
        os.killpg(process.pid, 9)
        process.wait(timeout=30)


def wait_until_serving(process: subprocess.Popen, url: str, log_path) -> None:
    import time

    deadline = time.monotonic() + SERVE_TIMEOUT
    while True:
        assert process.poll() is None, f"mlflow models serve exited: {open(log_path).read()}"
        try:
            with urllib.request.urlopen(f"{url}/ping", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        assert time.monotonic() < deadline, f"mlflow models serve did not answer within {SERVE_TIMEOUT} s: {open(log_path).read()}"
        time.sleep(0.3)


def test_the_mlflow_ui_shows_a_trained_runs_validation_loss_chart(server, tmp_path, data_path):
    run_cli(tmp_path, data_path, *init_args("--set", "model.name=mlp", "--set", "trainer.max_epochs=2"))
    run_cli(tmp_path, data_path, "--mlflow-uri", server.url, "train", "--device", "cpu")
    state = json.loads((tmp_path / "experiments" / "x" / "mlflow.json").read_text())["runs"][server.url]
    try:
        browser = open_browser()
        driver = browser.__enter__()
    except Exception as error:  # no Chromium here: a skip, or under CI a failure
        if os.environ.get("TORCHEXP_REQUIRE_BROWSER") == "1":
            raise
        pytest.skip(f"no headless Chromium: {error}")
    try:
        card = wait_for_metric_chart(driver, server.url, state["experiment_id"], state["run_id"], "validation/loss", timeout=90)
        assert "validation/loss" in card.get_attribute("innerHTML")
    finally:
        browser.__exit__(None, None, None)


def test_a_postgresql_backed_server_mirrors_the_same_run(tmp_path, data_path):
    run_cli(tmp_path, data_path, *init_args("--set", "model.name=mlp", "--set", "trainer.max_epochs=1"))
    with postgres_server(database="mlflow") as database:
        folder = tmp_path / "mlflow"
        folder.mkdir()
        with start_mlflow_server(str(folder), backend_store_uri=database) as server:
            assert is_healthy(server.url)
            run_cli(tmp_path, data_path, "--mlflow-uri", server.url, "train", "--device", "cpu")
            state = json.loads((tmp_path / "experiments" / "x" / "mlflow.json").read_text())["runs"][server.url]
            run = MlflowClient(server.url).get_run(state["run_id"])
            assert run.info.status == "FINISHED" and set(run.data.metrics) >= {"train/loss", "validation/loss"}
            assert run_cli(tmp_path, data_path, "--mlflow-uri", server.url, "sync").output.strip() == "experiment x: nothing new"
