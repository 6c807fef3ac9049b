"""What an experiment folder says its MLflow run holds, and the tracking URI's checks:
no server, no mlflow."""

import json

import pytest

from torchexp.errors import ConfigError
from torchexp.folder import Experiment
from torchexp.locks import FileLock
from torchexp.mirror.records import describe_status, flatten, read_points
from torchexp.mirror.target import MlflowTarget, resolve_target


@pytest.fixture
def experiment(tmp_path) -> Experiment:
    experiment = Experiment(str(tmp_path / "experiments"), "x")
    experiment.create({"seed": 1, "versions": {}, "classes": {}, "config": {"trainer": {"max_epochs": 2}}}, {})
    return experiment


def append(path: str, **line) -> None:
    with open(path, "a", encoding="utf-8") as file:
        file.write(json.dumps(line) + "\n")


def test_target_follows_mlflows_conventions():
    assert resolve_target(None, {}) is None
    assert resolve_target(None, {"MLFLOW_TRACKING_URI": "http://127.0.0.1:5000"}) == MlflowTarget("http://127.0.0.1:5000")
    target = resolve_target("http://127.0.0.1:5001", {"MLFLOW_TRACKING_URI": "http://127.0.0.1:5000", "MLFLOW_EXPERIMENT_NAME": "team"})
    assert target == MlflowTarget("http://127.0.0.1:5001", "team") and target.experiment_for("/a/experiments") == "team"
    assert MlflowTarget("sqlite:///m.db").experiment_for("/a/my-experiments/") == "my-experiments"


@pytest.mark.parametrize(
    "uri, message",
    [
        ("htp://host:5000", "is not valid"),
        ("127.0.0.1:5000", "is not valid"),
        ("http://:5000", "names no host"),
        ("http://host:50x0", "has a port that is not a number"),
        ("http://host:0", "has port 0"),
    ],
)
def test_a_malformed_uri_is_one_sentence(uri, message):
    with pytest.raises(ConfigError, match=f"MLflow tracking URI '{uri}' {message}"):
        resolve_target(uri, {})


def test_flatten_writes_nested_keys_and_json_values():
    assert flatten({"training": {"lr": 0.1, "milestones": [1, 2]}, "model": {"name": "cnn", "drop": None}}) == {
        "training.lr": "0.1",
        "training.milestones": "[1, 2]",
        "model.name": "cnn",
        "model.drop": "null",
    }


def test_points_are_epoch_metrics_once_per_step_with_nan_for_a_diverged_value(experiment):
    append(experiment.metrics_path, kind="iteration", step=3, time=1.0, metrics={"loss": 9.0})
    append(experiment.metrics_path, kind="train", step=1, epoch=1, time=2.0, metrics={"loss": 0.5, "lr": 0.1})
    append(experiment.metrics_path, kind="validation", step=1, epoch=1, time=2.5, metrics={"loss": None})
    append(experiment.metrics_path, kind="test", step=1, epoch=1, time=3.0, metrics={"accuracy": 0.8})
    append(experiment.metrics_path, kind="test", step=1, epoch=1, time=4.0, metrics={"accuracy": 0.9})
    points = {(point.key, point.step): point for point in read_points(experiment)}
    assert set(points) == {("train/loss", 1), ("train/lr", 1), ("validation/loss", 1), ("test/accuracy", 1)}
    assert points["validation/loss", 1].value != points["validation/loss", 1].value  # NaN
    assert points["test/accuracy", 1].value == 0.9 and points["test/accuracy", 1].timestamp_ms == 4000


def test_an_experiment_trained_by_steps_is_logged_at_its_steps(experiment):
    append(experiment.metrics_path, kind="iteration", step=250, epoch=2, time=1.0, metrics={"loss": 9.0})
    append(experiment.metrics_path, kind="train", step=500, unit="step", time=2.0, metrics={"loss": 0.5})
    append(experiment.metrics_path, kind="validation", step=500, unit="step", time=2.5, metrics={"loss": 0.6})
    append(experiment.metrics_path, kind="test", step=500, epoch=500, time=3.0, metrics={"accuracy": 0.8})
    assert sorted((point.key, point.step) for point in read_points(experiment)) == [("test/accuracy", 500), ("train/loss", 500), ("validation/loss", 500)]


def test_status_follows_how_the_last_train_ended(experiment):
    assert describe_status(experiment) == "SCHEDULED"
    append(experiment.provenance_path, event="train", time="2026-12-04T10:00:00+0000")
    assert describe_status(experiment) == "KILLED"  # started, never ended: a SIGKILL
    assert describe_status(experiment, training=True) == "RUNNING"
    with FileLock(experiment.lock_path):
        assert describe_status(experiment) == "RUNNING"
    started = 1796378400.0  # 2026-12-04T10:00:00Z
    for reason, status in (("max_epochs", "FINISHED"), ("early_stopping", "FINISHED"), ("interrupted", "KILLED"), ("failed", "FAILED")):
        append(experiment.metrics_path, kind="stop", reason=reason, epoch=1, max_epochs=2, time=started + 5)
        assert describe_status(experiment, training=False) == status, reason
    append(experiment.provenance_path, event="train", time="2026-12-04T10:01:00+0000")
    assert describe_status(experiment, training=False) == "KILLED"  # a later run left no end


def test_the_default_mlflow_experiment_is_the_projects_name():
    assert resolve_target("sqlite:///m.db", {}, project="digits").experiment_for("/a/experiments") == "digits"
    assert resolve_target("sqlite:///m.db", {"MLFLOW_EXPERIMENT_NAME": "team"}, project="digits").experiment_name == "team"


def test_the_command_line_names_the_mlflow_experiment_after_its_project(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from torchexp.cli import make_cli
    from torchexp.commands.context import pass_app

    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    seen = []
    cli = make_cli("digits.data:DigitsData", "digits.runner:DigitsRunner")

    @cli.command()
    @pass_app
    def where(app):
        seen.append(app.tracking.experiment_name)

    result = CliRunner().invoke(cli, ["--mlflow-uri", f"sqlite:///{tmp_path}/m.db", "where"])
    assert result.exit_code == 0, result.output
    assert seen == ["digits"]
