"""The tracker seam: a tracker registered by a package outside torchexp receives a run's
events; W&B's offline files hold one run across a kill and a resume, every step once."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
from click.testing import CliRunner

from conftest import CONFIG, SCHEMA, init_args
from mnist_classifier.__main__ import cli
from torchexp.trackers.base import is_covered
from torchexp.trackers.plugins import ENTRY_POINT_GROUP, list_trackers

TESTS = os.path.dirname(os.path.abspath(__file__))
RECORDER = '''
import json, os
from torchexp.trackers import Tracker


class RecordingTracker(Tracker):
    """Appends every event it receives to $RECORDED_EVENTS as a JSON line."""

    name = "recorder"

    def record(self, event, **fields):
        with open(os.environ["RECORDED_EVENTS"], "a") as file:
            file.write(json.dumps({"event": event, **fields}) + "\\n")

    def start(self, run):
        self.record("start", command=run.command, name=run.name, folder=run.folder)

    def log_hyperparameters(self, hyperparameters):
        self.record("log_hyperparameters", keys=sorted(hyperparameters))

    def resume(self, step, epoch):
        self.record("resume", step=step, epoch=epoch)

    def log_metrics(self, kind, step, metrics, where):
        self.record("log_metrics", kind=kind, step=step, names=sorted(metrics))

    def log_checkpoint(self, step, epoch):
        self.record("log_checkpoint", step=step, epoch=epoch)

    def finish(self, status):
        self.record("finish", status=status)

    def log_test(self, epoch, checkpoint, results):
        self.record("log_test", epoch=epoch, checkpoint=checkpoint, accuracy=results["accuracy"])

    def log_artifact(self, path, name):
        self.record("log_artifact", name=name, exists=os.path.isfile(path))

    def log_release(self, epoch, path):
        self.record("log_release", epoch=epoch, exists=os.path.isfile(path))

    def close(self):
        self.record("close")


class BrokenTracker(Tracker):
    name = "broken"

    def log_metrics(self, kind, step, metrics, where):
        raise RuntimeError("the service is down")
'''


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    """A package installed beside the tests, `recording_plugin`, whose distribution's entry
    points name two trackers; returns the file its recorder appends events to."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "recording_plugin.py").write_text(textwrap.dedent(RECORDER))
    info = site / "recording_plugin-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: recording-plugin\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(
        f"[{ENTRY_POINT_GROUP}]\nrecorder = recording_plugin:RecordingTracker\nbroken = recording_plugin:BrokenTracker\n"
    )
    monkeypatch.syspath_prepend(str(site))
    events = tmp_path / "events.jsonl"
    monkeypatch.setenv("RECORDED_EVENTS", str(events))
    return events


def run_cli(tmp_path, data_path, *args, code=0):
    base = ["--experiments-path", str(tmp_path / "experiments"), "--data-path", data_path, "--experiment-name", "x"]
    result = CliRunner().invoke(cli, [*base, *args], catch_exceptions=False)
    assert result.exit_code == code, result.output
    return result


def read_events(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_plugins_tracker_receives_every_event_of_train_test_and_release(plugin, tmp_path, data_path):
    assert list_trackers()["recorder"] == "recording_plugin:RecordingTracker"
    run_cli(tmp_path, data_path, *init_args("--set", "trainer.max_epochs=2"))
    run_cli(tmp_path, data_path, "--tracker", "recorder", "train", "--log-period", "3")
    events = read_events(plugin)
    names = [event["event"] for event in events]
    assert names[:2] == ["start", "log_hyperparameters"] and names[-2:] == ["finish", "close"]
    assert events[0]["command"] == "train" and events[0]["name"] == "x" and events[0]["folder"] == str(tmp_path / "experiments" / "x")
    assert "training.lr" in events[1]["keys"] and "seed" in events[1]["keys"]
    assert events[-2]["status"] == "FINISHED"
    epochs = [(event["kind"], event["step"]) for event in events if event["event"] == "log_metrics" and event["kind"] != "iteration"]
    assert epochs == [("train", 1), ("validation", 1), ("train", 2), ("validation", 2)]
    assert [event["step"] for event in events if event["event"] == "log_metrics" and event["kind"] == "iteration"] == [3, 6, 9]
    checkpoints = [(event["step"], event["epoch"]) for event in events if event["event"] == "log_checkpoint"]
    assert checkpoints == [(5, 1), (10, 2)]  # 77 training samples in batches of 16: 5 steps an epoch
    # Each epoch's numbers come before the checkpoint that covers them.
    assert names.index("log_checkpoint") > names.index("log_metrics")

    plugin.unlink()
    run_cli(tmp_path, data_path, "--tracker", "recorder", "test")
    run_cli(tmp_path, data_path, "--tracker", "recorder", "create_release")
    events = read_events(plugin)
    assert [event["event"] for event in events] == ["start", "log_test", "log_artifact", "close", "start", "log_release", "close"]
    assert events[1]["epoch"] == 2 and events[1]["checkpoint"] == "2.checkpoint.pt" and 0 <= events[1]["accuracy"] <= 1
    assert events[2] == {"event": "log_artifact", "name": "results/2.standard.test.json", "exists": True}
    assert [events[0]["command"], events[4]["command"]] == ["test", "create_release"]
    assert events[5] == {"event": "log_release", "epoch": 2, "exists": True}


def test_a_resumed_run_tells_its_trackers_from_where(plugin, tmp_path, data_path):
    run_cli(tmp_path, data_path, *init_args("--set", "trainer.max_epochs=2"))
    run_cli(tmp_path, data_path, "train", "--max-epochs", "1")
    run_cli(tmp_path, data_path, "--tracker", "recorder", "train")
    events = read_events(plugin)
    assert {"event": "resume", "step": 5, "epoch": 1} in events
    assert [event["step"] for event in events if event["event"] == "log_metrics" and event["kind"] == "train"] == [2]


def test_a_failing_tracker_is_warned_of_once_and_training_goes_on(plugin, tmp_path, data_path):
    run_cli(tmp_path, data_path, *init_args("--set", "trainer.max_epochs=2"))
    result = run_cli(tmp_path, data_path, "--tracker", "broken", "--tracker", "recorder", "train")
    warning = "tracker 'broken' failed at log_metrics: RuntimeError: the service is down; the command goes on"
    assert result.output.count(warning) == 1, result.output
    assert read_events(plugin)[-2] == {"event": "finish", "status": "FINISHED"}  # the other tracker got everything


def test_unknown_and_misconfigured_trackers_are_one_sentence(tmp_path, data_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    result = run_cli(tmp_path, data_path, "--tracker", "neptune", "info", code=2)
    assert "Error: tracker 'neptune' is not installed: choose among mlflow, wandb" in result.output
    assert "Traceback" not in result.output
    result = run_cli(tmp_path, data_path, "--tracker", "mlflow", "info", code=2)
    assert "Error: tracker 'mlflow' needs a tracking URI: pass --mlflow-uri or set MLFLOW_TRACKING_URI" in result.output
    monkeypatch.setenv("TORCHEXP_TRACKERS", "neptune")
    assert "tracker 'neptune' is not installed" in run_cli(tmp_path, data_path, "info", code=2).output


@pytest.mark.parametrize(
    "kind, step, where, covered",
    [
        ("iteration", 12, {"epoch": 3}, False),
        ("iteration", 10, {"epoch": 2}, True),
        ("train", 3, {"epoch": 3}, False),
        ("train", 2, {"epoch": 2}, True),
        ("validation", 11, {"unit": "step"}, False),
        ("validation", 10, {"unit": "step"}, True),
    ],
)
def test_only_what_a_checkpoint_covers_is_final(kind, step, where, covered):
    assert is_covered(kind, step, where, 10, 2) is covered


KILLING_PROJECT = '''
import os, signal, sys, time
sys.path.insert(0, {repo!r})
import torchexp
from mnist_classifier.data import MNISTClassifierData
from mnist_classifier.runner import MNISTClassifierRunner


class KilledRunner(MNISTClassifierRunner):
    """SIGKILLs its own process after epoch 3's numbers are logged, before its checkpoint,
    once W&B has had the time to write what the checkpoint of epoch 2 sent it."""

    def train_after_epoch_tasks(self, device):
        if self.counters["epoch"] == 3 and os.environ.get("KILL_AT_EPOCH_3"):
            time.sleep(0.5)
            os.kill(os.getpid(), signal.SIGKILL)


if __name__ == "__main__":
    torchexp.make_cli(MNISTClassifierData, KilledRunner, {config!r}, {schema!r})()
'''


def test_wandb_offline_keeps_one_run_across_a_kill_and_a_resume_with_every_step_once(tmp_path, data_path):
    from wandb_files import read_runs

    script = tmp_path / "killed_project.py"
    script.write_text(KILLING_PROJECT.format(repo=os.path.dirname(TESTS), config=CONFIG, schema=SCHEMA))
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_PROJECT": "torchexp-tests", "OMP_NUM_THREADS": "1"}
    env.pop("WANDB_DIR", None)
    base = [sys.executable, str(script), "--experiments-path", str(tmp_path / "experiments"), "--data-path", data_path, "--experiment-name", "x"]

    def run(*args, kill=False):
        return subprocess.run([*base, *args], env={**env, **({"KILL_AT_EPOCH_3": "1"} if kill else {})}, capture_output=True, text=True, timeout=180)

    assert run(*init_args("--set", "trainer.max_epochs=4")).returncode == 0
    killed = run("--tracker", "wandb", "train", "--log-period", "2", kill=True)
    assert killed.returncode == -9, killed.stderr
    resumed = run("--tracker", "wandb", "train", "--log-period", "2")
    assert resumed.returncode == 0, resumed.stderr

    runs = read_runs(str(tmp_path / "experiments" / "x" / "wandb"))
    assert len(runs) == 2 and runs[0]["id"] == runs[1]["id"]  # one W&B run, written by two processes
    state = json.loads((tmp_path / "experiments" / "x" / "wandb.json").read_text())
    assert state["run_id"] == runs[0]["id"]
    rows = [row for run_ in runs for row in run_["history"]]
    iterations = [row["step"] for row in rows if "iteration/loss" in row]
    assert iterations == list(range(2, 21, 2))  # 5 steps an epoch, 4 epochs, every other step: each once
    assert [row["epoch"] for row in rows if "train/loss" in row] == [1, 2, 3, 4]
    assert [row["epoch"] for row in rows if "validation/loss" in row] == [1, 2, 3, 4]
    steps = [row["_step"] for row in rows]
    assert steps == sorted(set(steps))  # W&B's own step never goes back across the two processes
    assert runs[0]["config"]["training.lr"] == 1.0 and runs[1]["exit_code"] == 0
