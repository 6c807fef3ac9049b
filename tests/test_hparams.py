"""TensorBoard's HParams view: every experiment's hyperparameters and metrics in its own folder."""

import contextlib
import json
import os
import subprocess
import time
import urllib.error
import urllib.request
from types import SimpleNamespace

import pytest
from click.testing import CliRunner

import torchexp.loop
from conftest import free_port, init_args, write_mnist
from mnist_classifier.__main__ import cli
from torchexp.commands.tensorboard import compare_logdir_spec
from torchexp.hparams import flatten_hparams, list_metric_tags, write_hparams
from torchexp.trackers.fanout import RunTrackers
from torchexp.trackers.tensorboard import tensorboard_command

SERVER_DEADLINE_S = 60  # TensorBoard starts in 2-4 s; a busy machine may take longer
STATUSES = ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE", "STATUS_RUNNING"]
METRICS = ["validation/loss", "validation/accuracy", "test/loss", "test/accuracy", "train/loss", "train/accuracy"]


def run_cli(root: str, name: str, *args: str):
    base = ["--experiments-path", os.path.join(root, "experiments"), "--data-path", os.path.join(root, "data"), "--experiment-name", name]
    return CliRunner().invoke(cli, [*base, *args], catch_exceptions=False)


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> str:
    """Two experiments of different configurations, trained one epoch; `a` also tested."""
    root = str(tmp_path_factory.mktemp("hparams"))
    write_mnist(os.path.join(root, "data"))
    for name, lr in (("a", "1.0"), ("b", "0.5")):
        assert run_cli(root, name, *init_args("--set", "model.name=mlp", "--set", f"training.lr={lr}")).exit_code == 0
        result = run_cli(root, name, "train", "--max-epochs", "1", "--device", "cpu")
        assert result.exit_code == 0, result.output
    result = run_cli(root, "a", "test", "--device", "cpu")
    assert result.exit_code == 0, result.output
    return root


def read_hparams_tags(folder: str) -> dict[str, bytes]:
    """The HParams plugin's tags in a tensorboard folder's root run, with their content."""
    from tensorboard.backend.event_processing.plugin_event_accumulator import EventAccumulator

    accumulator = EventAccumulator(folder)
    accumulator.Reload()
    return accumulator.PluginTagToContent("hparams") if "hparams" in accumulator.ActivePlugins() else {}


def post(port: int, route: str, request: dict) -> dict:
    """POST a JSON request to the HParams plugin's HTTP API (see its hparams_plugin.py)."""
    http = urllib.request.Request(
        f"http://127.0.0.1:{port}/data/plugin/hparams/{route}",
        data=json.dumps(request).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(http, timeout=10) as response:
        return json.loads(response.read())


def wait_for_session_groups(port: int, server: subprocess.Popen, count: int) -> list[dict]:
    """Poll until TensorBoard has loaded `count` session groups with their metrics."""
    deadline = time.monotonic() + SERVER_DEADLINE_S
    while time.monotonic() < deadline:
        assert server.poll() is None, "TensorBoard exited"
        try:
            groups = post(port, "session_groups", {"allowedStatuses": STATUSES, "startIndex": 0, "sliceSize": 100})["sessionGroups"]
            if len(groups) == count and all(len(group["metricValues"]) >= 6 for group in groups if group["name"] == "a"):
                return groups
        except (urllib.error.URLError, ConnectionError, KeyError):
            pass
        time.sleep(0.2)
    raise AssertionError(f"TensorBoard did not show {count} HParams sessions within {SERVER_DEADLINE_S} s")


def test_tensorboard_compare_shows_every_experiment_with_its_hyperparameters_and_metrics(root):
    port = free_port()
    logdir_spec = compare_logdir_spec(os.path.join(root, "experiments"))
    server = subprocess.Popen(
        tensorboard_command(None, logdir_spec, "127.0.0.1", port), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        groups = {group["name"]: group for group in wait_for_session_groups(port, server, 2)}
        experiment = post(port, "experiment", {})
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    assert sorted(groups) == ["a", "b"]
    for name, lr in (("a", 1.0), ("b", 0.5)):
        hparams = groups[name]["hparams"]
        assert hparams["training.lr"] == lr and hparams["model.name"] == "mlp" and hparams["seed"] == 0
        assert hparams["trainer.precision"] == "fp32" and hparams["data.batch_size"] == 16
        assert [session["status"] for session in groups[name]["sessions"]] == ["STATUS_SUCCESS"]
    metrics = {name: {m["name"]["tag"]: m["value"] for m in group["metricValues"]} for name, group in groups.items()}
    history = [json.loads(line) for line in open(os.path.join(root, "experiments", "a", "metrics.jsonl"))]
    last = {f"{line['kind']}/{key}": value for line in history if line["kind"] != "stop" for key, value in line["metrics"].items()}
    assert sorted(metrics["a"]) == sorted(METRICS)
    for tag in METRICS:
        assert metrics["a"][tag] == pytest.approx(last[tag], rel=1e-6)
    assert sorted(metrics["b"]) == sorted(tag for tag in METRICS if not tag.startswith("test/"))
    assert [info["name"]["tag"] for info in experiment["metricInfos"]] == METRICS
    declared = {info["name"] for info in experiment["hparamInfos"]}
    assert {"training.lr", "model.name", "trainer.precision", "data.val_split", "seed"} <= declared


def test_hparams_go_into_the_experiments_own_folder_not_a_timestamped_sub_run(root):
    for name in ("a", "b"):
        folder = os.path.join(root, "experiments", name, "tensorboard")
        assert all(os.path.isfile(os.path.join(folder, entry)) for entry in os.listdir(folder))
        tags = read_hparams_tags(folder)
        assert sorted(tags) == ["_hparams_/experiment", "_hparams_/session_end_info", "_hparams_/session_start_info"]


def test_a_failed_train_writes_no_session(tmp_path):
    root = str(tmp_path)
    write_mnist(os.path.join(root, "data"))
    assert run_cli(root, "x", *init_args("--set", "model.name=mlp", "--set", "trainer.precision=fp16")).exit_code == 0
    result = run_cli(root, "x", "train", "--max-epochs", "1", "--device", "cpu")
    assert result.exit_code == 2 and "fp16 needs a CUDA device" in result.output
    assert os.listdir(os.path.join(root, "experiments", "x", "tensorboard")) == []


def test_an_experiment_without_hparams_gets_them_when_it_trains_again_with_nothing_to_do(tmp_path, monkeypatch):
    root = str(tmp_path)
    write_mnist(os.path.join(root, "data"))
    assert run_cli(root, "x", *init_args("--set", "model.name=mlp")).exit_code == 0
    folder = os.path.join(root, "experiments", "x", "tensorboard")
    with monkeypatch.context() as patch:
        # As trained before torchexp wrote HParams.
        patch.setattr(torchexp.loop, "recording_hparams", lambda runner: contextlib.nullcontext())
        assert run_cli(root, "x", "train", "--max-epochs", "1", "--device", "cpu").exit_code == 0
    assert read_hparams_tags(folder) == {}
    result = run_cli(root, "x", "train", "--max-epochs", "1", "--device", "cpu")
    assert result.exit_code == 0 and "1 epoch is done already" in result.output
    assert "_hparams_/session_start_info" in read_hparams_tags(folder)


def test_other_distributed_ranks_write_nothing(tmp_path):
    tracker = RunTrackers(str(tmp_path / "tensorboard"), str(tmp_path / "metrics.jsonl"), enabled=False)
    runner = SimpleNamespace(tracker=tracker, history={"train": [], "validation": []}, config=SimpleNamespace(data={}), seed=0)
    write_hparams(runner)
    assert not os.path.exists(tmp_path / "tensorboard")


def test_flatten_hparams_keeps_json_scalars_under_dotted_keys():
    config = {"training": {"lr": 0.5, "steps": [1, 2]}, "model": {"name": "mlp", "deep": {"width": 3}}, "trainer": {"clip": None, "compile": False}}
    assert flatten_hparams(config, 7) == {
        "training.lr": 0.5,
        "training.steps": "[1, 2]",
        "model.name": "mlp",
        "model.deep.width": 3,
        "trainer.clip": "null",
        "trainer.compile": False,
        "seed": 7,
    }


def test_metric_tags_guess_the_kinds_this_process_has_not_seen():
    assert list_metric_tags({"train": ["loss", "mae"], "validation": ["loss", "mae"], "test": []}) == [
        "validation/loss", "validation/mae", "test/loss", "test/mae", "train/loss", "train/mae",
    ]
    assert list_metric_tags({"train": [], "validation": [], "test": ["accuracy"]}) == [
        "validation/accuracy", "test/accuracy", "train/accuracy",
    ]
