"""The command line end to end on the tiny MNIST, and every user mistake it must explain."""

import contextlib
import dataclasses
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from typing import Callable

import click
import pytest
import torch
from click.testing import CliRunner
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import torchexp
import torchexp.commands.tensorboard
import mnist_classifier.data
from conftest import REPO, init_args, read_line, refuse_mnist_download, snapshot, write_mnist
from mnist_classifier.__main__ import cli

README = os.path.join(REPO, "docs", "errors.md")
ERRORS_START, ERRORS_END = "<!-- errors:start -->", "<!-- errors:end -->"

MLP = ("--set", "model.name=mlp")  # the model does not matter here: take a fast one


def run(root, *args: str, name: str | None = "x", data=None, experiments=None, group: click.Group = cli):
    """Invoke the CLI with experiments and data under `root`; assert no traceback reached the user."""
    base = ["--experiments-path", str(experiments or os.path.join(root, "experiments"))]
    base += ["--data-path", str(data or os.path.join(root, "data"))]
    if name is not None:
        base += ["--experiment-name", name]
    # The name `python -m mnist_classifier` gives it, which usage errors show.
    prog_name = "mnist_classifier" if group is cli else None
    result = CliRunner().invoke(group, [*base, *args], catch_exceptions=False, prog_name=prog_name)
    assert "Traceback" not in result.output
    return result


def ok(result):
    assert result.exit_code == 0, result.output
    return result


def read_lines(path) -> list[dict]:
    with open(path) as file:
        return [json.loads(line) for line in file]


def build_template(root: str) -> str:
    """Tiny data, experiment x trained for 3 epochs, experiment `fresh` created only."""
    write_mnist(os.path.join(root, "data"))
    ok(run(root, *init_args(*MLP)))
    ok(run(root, "train", "--max-epochs", "3", "--device", "cpu"))
    ok(run(root, *init_args(*MLP), name="fresh"))
    return root


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> str:
    return build_template(str(tmp_path_factory.mktemp("template")))


@pytest.fixture
def env(template, tmp_path) -> str:
    """A private copy of the template, to change at will."""
    root = str(tmp_path / "env")
    shutil.copytree(template, root)
    return root


def checkpoint_names(root, name: str = "x") -> list[str]:
    return sorted(n for n in os.listdir(os.path.join(root, "experiments", name, "checkpoints")) if n.endswith(".pt"))


# End to end ---------------------------------------------------------------------------------


def test_init_train_resume_test_release_end_to_end(tmp_path):
    root = str(tmp_path)
    write_mnist(os.path.join(root, "data"))
    experiment = os.path.join(root, "experiments", "x")

    ok(run(root, *init_args(*MLP, "--seed", "5")))
    with open(os.path.join(experiment, "config.json")) as file:
        record = json.load(file)
    assert record["seed"] == 5
    assert record["versions"]["torchexp"] == torchexp.__version__
    assert record["versions"]["torch"] == torch.__version__.split("+")[0]
    assert {"python", "torchvision"} <= set(record["versions"])
    assert record["config"]["model"]["name"] == "mlp" and record["config"]["data"]["batch_size"] == 16
    assert record["config"]["trainer"]["precision"] == "fp32"
    with open(os.path.join(experiment, "data.json")) as file:
        assert len(json.load(file)["validation_indexes"]) == round(96 * 0.2)

    result = ok(run(root, "train", "--max-epochs", "2", "--device", "cpu", "--log-period", "2"))
    assert "no checkpoint to resume from: training from scratch" in result.output
    assert checkpoint_names(root) == ["1.checkpoint.pt", "2.checkpoint.pt"]

    result = ok(run(root, "train", "--max-epochs", "3", "--device", "cpu"))
    assert "resumed from 2.checkpoint.pt: 2 epochs done" in result.output
    assert "epoch 3: train loss" in result.output

    ok(run(root, "test", "--epoch", "3", "--device", "cpu"))
    ok(run(root, "create_release", "--epoch", "3"))
    ok(run(root, "create-release", "--epoch", "2"))
    assert checkpoint_names(root) == [
        "1.checkpoint.pt", "2.checkpoint.pt", "2.checkpoint.release.pt", "3.checkpoint.pt", "3.checkpoint.release.pt"
    ]  # fmt: skip
    result = ok(run(root, "test", "--epoch", "3", "--release", "--device", "cpu"))
    assert "test of 3.checkpoint.release.pt: accuracy" in result.output

    with open(os.path.join(experiment, "results", "3.standard.test.json")) as file:
        standard = json.load(file)
    with open(os.path.join(experiment, "results", "3.release.test.json")) as file:
        release = json.load(file)
    assert standard["checkpoint"] == "3.checkpoint.pt" and release["checkpoint"] == "3.checkpoint.release.pt"
    assert standard["results"] == release["results"]
    results = standard["results"]
    assert results["samples"] == 40 and results["accuracy"] > 0.5
    assert sum(map(sum, results["confusion_matrix"])) == 40 and len(results["per_class_accuracy"]) == 10

    # The release holds the weights and what is needed to use them; nothing to resume training.
    state = torch.load(os.path.join(experiment, "checkpoints", "3.checkpoint.release.pt"), weights_only=True)
    assert state["epoch"] == 3 and state["seed"] == 5 and state["config"] == record["config"]
    assert "optimizer" not in state and "layers.1.weight" in state["model"]

    lines = read_lines(os.path.join(experiment, "metrics.jsonl"))
    assert [line["epoch"] for line in lines if line["kind"] == "train"] == [1, 2, 3]
    assert [line["epoch"] for line in lines if line["kind"] == "validation"] == [1, 2, 3]
    assert [line["checkpoint"] for line in lines if line["kind"] == "test"] == ["3.checkpoint.pt", "3.checkpoint.release.pt"]
    assert any(line["kind"] == "iteration" for line in lines)

    with open(os.path.join(experiment, "verbose.log")) as file:
        log = file.read()
    for text in ("created experiment 'x'", "training from scratch", "resumed from 2.checkpoint.pt", "released epoch 3", "test of 3.checkpoint.pt"):
        assert text in log

    events = EventAccumulator(os.path.join(experiment, "tensorboard"))
    events.Reload()
    assert [event.step for event in events.Scalars("train/loss")] == [1, 2, 3]
    assert [event.step for event in events.Scalars("validation/accuracy")] == [1, 2, 3]
    assert [event.value for event in events.Scalars("test/accuracy")] == pytest.approx([results["accuracy"]] * 2)
    assert len(events.Scalars("test_class_accuracy/0")) == 2


def test_test_without_epoch_uses_the_latest_checkpoint(env):
    result = ok(run(env, "test", "--device", "cpu"))
    assert "test of 3.checkpoint.pt" in result.output


def test_test_release_without_epoch_uses_the_latest_release(env):
    ok(run(env, "create_release", "--epoch", "2"))
    result = ok(run(env, "test", "--release", "--device", "cpu"))
    assert "test of 2.checkpoint.release.pt" in result.output


def test_test_with_worker_processes_gives_the_same_results(env):
    ok(run(env, "test", "--epoch", "3", "--device", "cpu"))
    ok(run(env, "test", "--epoch", "3", "--device", "cpu", "--num-workers", "2"))
    lines = [line for line in read_lines(os.path.join(env, "experiments", "x", "metrics.jsonl")) if line["kind"] == "test"]
    assert len(lines) == 2 and lines[0]["metrics"] == lines[1]["metrics"]


def test_training_with_worker_processes_matches_training_in_process(env):
    ok(run(env, *init_args(*MLP), name="workers"))
    ok(run(env, "train", "--max-epochs", "1", "--device", "cpu", "--num-workers", "2", name="workers"))
    records = []
    for name in ("x", "workers"):
        with open(os.path.join(env, "experiments", name, "checkpoints", "1.checkpoint.pt.json")) as file:
            records.append(json.load(file)["metrics"])
    assert records[0] == records[1]  # same seed, same batches in the same order


def test_train_with_max_epochs_already_done_does_nothing(env):
    before = checkpoint_names(env)
    result = ok(run(env, "train", "--max-epochs", "2", "--device", "cpu"))
    assert "3 epochs are done already; raise --max-epochs (or trainer.max_epochs) to train more" in result.output
    assert checkpoint_names(env) == before


def test_train_skips_a_corrupt_newest_checkpoint_and_says_why(env):
    path = os.path.join(env, "experiments", "x", "checkpoints", "3.checkpoint.pt")
    os.truncate(path, 100)
    result = ok(run(env, "train", "--max-epochs", "3", "--device", "cpu"))
    assert "skipping checkpoint 3.checkpoint.pt is 100 bytes" in result.output
    assert "resumed from 2.checkpoint.pt: 2 epochs done" in result.output
    assert os.path.getsize(path) > 100  # epoch 3 trained again and saved whole


def test_train_from_an_epoch_with_overwrite_removes_the_later_checkpoints(env):
    ok(run(env, "create_release", "--epoch", "3"))
    result = ok(run(env, "train", "--epoch", "1", "--overwrite", "--max-epochs", "2", "--device", "cpu"))
    assert "--overwrite: removed the checkpoints of epochs 2-3" in result.output
    assert "resumed from 1.checkpoint.pt: 1 epoch done" in result.output
    # The next plain train resumes from the new epoch 2, not from the old epoch 3.
    assert checkpoint_names(env) == ["1.checkpoint.pt", "2.checkpoint.pt", "3.checkpoint.release.pt"]
    result = ok(run(env, "train", "--max-epochs", "3", "--device", "cpu"))
    assert "resumed from 2.checkpoint.pt: 2 epochs done" in result.output


def test_info_lists_config_seed_and_checkpoints_with_metrics(env):
    ok(run(env, "create_release", "--epoch", "2"))
    output = ok(run(env, "info")).output
    assert "experiment: x" in output and "seed: 0" in output and '"name": "mlp"' in output
    assert "versions: torchexp" in output
    assert "checkpoints: 4" in output
    lines = [line.strip() for line in output.splitlines()]
    epoch_1 = next(line for line in lines if line.startswith("epoch 1 standard"))
    assert "train loss" in epoch_1 and "validation loss" in epoch_1 and "accuracy" in epoch_1
    assert any(line.startswith("epoch 2 release") for line in lines)
    assert any(line.startswith("epoch 3 standard") for line in lines)
    assert "tests: none" in output


def test_info_lists_the_test_results_of_every_tested_epoch(env):
    ok(run(env, "test", "--epoch", "1", "--device", "cpu"))
    ok(run(env, "test", "--epoch", "3", "--device", "cpu"))
    output = ok(run(env, "info")).output
    tests = output.split("tests: ")[1].splitlines()
    assert tests[0] == "2"
    for epoch, line in zip((1, 3), tests[1:]):
        with open(os.path.join(env, "experiments", "x", "results", f"{epoch}.standard.test.json")) as file:
            results = json.load(file)["results"]
        assert line == f"  epoch {epoch} standard: accuracy {results['accuracy']:.4g}, loss {results['loss']:.4g}, samples {results['samples']}"


def test_info_of_a_new_experiment_says_it_has_no_checkpoints(env):
    output = ok(run(env, "info", name="fresh")).output
    assert "checkpoints: none" in output and "tests: none" in output
    assert f"project: {REPO}" in output  # where mnist_classifier was imported from at init


@pytest.fixture
def started(monkeypatch) -> list:
    """Record the commands torchexp would start instead of starting them."""
    commands = []

    def fake_run(command, **options):
        assert isinstance(command, list) and "shell" not in options
        commands.append(command)
        return subprocess.CompletedProcess(command, 0)

    monkeypatch.setattr(torchexp.commands.tensorboard.subprocess, "run", fake_run)
    return commands


def test_tensorboard_starts_on_the_experiment_and_prints_the_url(env, started):
    result = ok(run(env, "tensorboard"))
    assert "TensorBoard at http://127.0.0.1:6006/" in result.output
    logdir = os.path.join(env, "experiments", "x", "tensorboard")
    assert started == [[sys.executable, "-m", "tensorboard.main", "--host", "127.0.0.1", "--port", "6006", "--logdir", logdir]]


def test_tensorboard_takes_host_and_port(env, started):
    result = ok(run(env, "tensorboard", "--port", "7007", "--host", "0.0.0.0"))
    assert "TensorBoard at http://0.0.0.0:7007/" in result.output
    assert started[0][3:7] == ["--host", "0.0.0.0", "--port", "7007"]


def test_tensorboard_compare_shows_every_experiment(env, started):
    ok(run(env, "tensorboard", "--compare", name=None))
    experiments = os.path.join(env, "experiments")
    spec = f"fresh:{experiments}/fresh/tensorboard,x:{experiments}/x/tensorboard"
    assert started[0][-2:] == ["--logdir_spec", spec]


def test_tensorboard_compare_shows_the_trials_of_a_study(env, started):
    experiments = os.path.join(env, "experiments")
    study = os.path.join(experiments, "study")
    os.makedirs(study)
    with open(os.path.join(study, "study.json"), "w") as file:
        file.write("{}")
    shutil.copytree(os.path.join(experiments, "x"), os.path.join(study, "trial-0000"))
    ok(run(env, "tensorboard", "--compare", name=None))
    spec = started[0][-1].split(",")
    assert f"study/trial-0000:{study}/trial-0000/tensorboard" in spec and f"x:{experiments}/x/tensorboard" in spec


def test_tensorboard_failing_to_serve_is_an_error(env, monkeypatch):
    monkeypatch.setattr(torchexp.commands.tensorboard.subprocess, "run", lambda command, **options: subprocess.CompletedProcess(command, 1))
    result = run(env, "tensorboard", "--port", "6010")
    assert result.exit_code == 1
    assert "Error: TensorBoard stopped with exit code 1 (is port 6010 in use?)" in result.output


def test_tensorboard_stopped_with_ctrl_c_is_a_normal_end(env, monkeypatch):
    def interrupted(command, **options):
        raise KeyboardInterrupt

    monkeypatch.setattr(torchexp.commands.tensorboard.subprocess, "run", interrupted)
    assert ok(run(env, "tensorboard")).output.count("Error") == 0


# The tensorboard command in its own process, with a stand-in for TensorBoard that prints
# its process id and waits, as TensorBoard serves until it is stopped.
TENSORBOARD_STAND_IN_SCRIPT = """
import sys
import torchexp.commands.tensorboard
from mnist_classifier.__main__ import cli

serve = "import os, time; print('serving', os.getpid(), flush=True); time.sleep(60)"
torchexp.commands.tensorboard.tensorboard_command = lambda *args: [sys.executable, "-c", serve]
cli(["--experiments-path", sys.argv[1] + "/experiments", "--experiment-name", "x", "tensorboard"], prog_name="mnist_classifier")
"""


def test_tensorboard_stopped_with_sigterm_stops_tensorboard_too(env):
    command = subprocess.Popen([sys.executable, "-c", TENSORBOARD_STAND_IN_SCRIPT, env], stdout=subprocess.PIPE, text=True, cwd=REPO)
    served = None
    try:
        served = int(read_line(command.stdout, 60, prefix="serving").split()[1])
        command.terminate()
        assert command.wait(timeout=30) == 0
        with pytest.raises(ProcessLookupError, match="No such process"):
            os.kill(served, 0)
    finally:
        command.kill()
        if served is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(served, signal.SIGKILL)


def test_tensorboard_of_a_missing_experiment_is_refused(env, started):
    result = run(env, "tensorboard", name="nope")
    assert result.exit_code == 3 and "experiment 'nope' does not exist" in result.output
    assert started == []


def test_help_of_every_command_shows_the_defaults():
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0
    output = " ".join(result.output.split())  # help wraps lines
    assert "[default: experiments]" in output and "[default: data]" in output
    assert set(cli.commands) == {
        "init", "info", "train", "test", "create_release", "verify", "tensorboard", "serve", "compare", "export", "search", "sync"
    }
    for name, command in cli.commands.items():
        result = CliRunner().invoke(cli, [name, "--help"])
        assert result.exit_code == 0, result.output
        assert command.help.splitlines()[0] in " ".join(result.output.split())
        for param in command.params:
            if isinstance(param, click.Option) and not param.is_flag and not param.multiple and param.name != "help":
                assert param.show_default or param.required or "[default:" in (param.help or ""), f"{name} --{param.name}"
                assert param.opts[0] in result.output
        if any(isinstance(p, click.Option) and not p.is_flag and not p.required for p in command.params):
            assert "[default:" in result.output, name


def test_help_states_train_defaults():
    output = " ".join(CliRunner().invoke(cli, ["train", "--help"]).output.split())
    for text in ("[default: the furthest]", "[default: 100; x>=1]", "[default: auto]", "[default: 0; x>=0]"):
        assert text in output


def test_a_user_command_receives_the_app(env):
    group = torchexp.make_cli("mnist_classifier.data:MNISTClassifierData", "mnist_classifier.runner:MNISTClassifierRunner")

    @group.command()
    @click.option("--shout", is_flag=True, help="Upper case.")
    @torchexp.pass_app
    def hello(app: torchexp.App, shout: bool) -> None:
        """Say the experiment's path."""
        experiment = app.open_experiment()
        text = f"hello {experiment.name} in {experiment.path}"
        click.echo(text.upper() if shout else text)

    result = ok(run(env, "hello", group=group))
    assert f"hello x in {os.path.join(env, 'experiments', 'x')}" in result.output
    assert "HELLO X" in ok(run(env, "hello", "--shout", group=group)).output
    result = run(env, "hello", name="nope", group=group)  # torchexp errors are shown the same way
    assert result.exit_code == 3 and "Error: experiment 'nope' does not exist" in result.output
    assert "hello" in CliRunner().invoke(group, ["--help"]).output
    assert "hello" not in cli.commands  # the project's own group is untouched


def test_version_option():
    result = CliRunner().invoke(cli, ["--version"])
    assert result.exit_code == 0 and torchexp.__version__ in result.output


@pytest.mark.parametrize(
    "args, option, placed",
    [
        (["train", "--experiment-name", "x"], "--experiment-name", "--experiment-name x train"),
        (
            ["--data-path", "d", "test", "--epoch", "2", "--experiment-name=x", "--quiet"],
            "--experiment-name",
            "--data-path d --experiment-name=x --quiet test --epoch 2",
        ),
        (["info", "--debug", "--tracker", "wandb", "--", "--quiet"], "--debug", "--debug --tracker wandb info -- --quiet"),
    ],
)
def test_a_project_option_after_the_command_is_shown_before_it(args, option, placed):
    result = CliRunner().invoke(cli, args, prog_name="mnist_classifier")
    assert result.exit_code == 2
    assert result.output.splitlines()[-1] == (
        f"Error: No such option '{option}'. Project options go before the command: mnist_classifier {placed}"
    )


def test_an_option_of_neither_the_project_nor_the_command_gets_no_placement_hint():
    result = CliRunner().invoke(cli, ["train", "--deb"], prog_name="mnist_classifier")
    assert result.exit_code == 2
    assert result.output.splitlines()[-1] == "Error: No such option '--deb'. Did you mean '--device'?"


# Registered before the command line runs, this exit handler runs after the command line's
# own (they run last registered, first), and sees what the interpreter's last garbage
# collections will have to trace.
FROZEN_AT_EXIT_SCRIPT = """
import atexit, gc, sys
from mnist_classifier.__main__ import cli

atexit.register(lambda: print("frozen at exit:", gc.get_freeze_count(), flush=True))
print("frozen before:", gc.get_freeze_count(), flush=True)
cli(["--version"], prog_name="mnist_classifier")
"""


def test_a_command_line_process_freezes_its_objects_out_of_the_exit_collections():
    done = subprocess.run([sys.executable, "-c", FROZEN_AT_EXIT_SCRIPT], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert done.returncode == 0, done.stderr
    lines = dict(line.split(": ") for line in done.stdout.splitlines() if line.startswith("frozen"))
    assert int(lines["frozen before"]) == 0
    assert int(lines["frozen at exit"]) > 10_000


NO_TORCH_SCRIPT = """
import runpy, subprocess, sys
from click.testing import CliRunner

root = sys.argv[1]
sys.argv = ["mnist_classifier", "--help"]  # python -m mnist_classifier --help
try:
    runpy.run_module("mnist_classifier", run_name="__main__")
except SystemExit as stop:
    assert stop.code in (0, None), stop.code

from mnist_classifier.__main__ import cli

subprocess.run = lambda command, **options: subprocess.CompletedProcess(command, 0)  # no real TensorBoard
base = ["--experiments-path", root + "/experiments", "--data-path", root + "/data", "--experiment-name", "x"]
for args in (["info"], ["tensorboard"], ["tensorboard", "--compare"], *([name, "--help"] for name in cli.commands)):
    result = CliRunner().invoke(cli, base + args)
    assert result.exit_code == 0, (args, result.output)
print("heavy modules:", sorted({name.split(".")[0] for name in sys.modules} & {"torch", "torchvision", "numpy", "tensorboard"}))
"""


def test_help_info_and_tensorboard_do_not_import_torch(env):
    # A separate interpreter: this one imported torch long ago.
    done = subprocess.run([sys.executable, "-c", NO_TORCH_SCRIPT, env], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "heavy modules: []"


# User mistakes ------------------------------------------------------------------------------


@dataclasses.dataclass
class Mistake:
    """One user mistake: the command, and what the user must be told."""

    id: str
    what: str
    args: tuple[str, ...]
    exit_code: int
    expected: tuple[str, ...]
    name: str | None = "x"
    data: str | None = None  # relative to the environment's root
    setup: Callable | None = None  # setup(root) -> values for the expected texts, after which nothing may change
    skip: bool = False

    def full_args(self, root: str) -> list[str]:
        """The arguments to run in `root`: init takes the repository's config and small batches."""
        args = [arg.format(root=root) for arg in self.args]
        return [*init_args(*MLP), *args[1:]] if args[0] == "init" else args


def flip_a_byte(root):
    path = os.path.join(root, "experiments", "x", "checkpoints", "3.checkpoint.pt")
    with open(path, "r+b") as file:
        file.seek(1000)
        byte = file.read(1)
        file.seek(1000)
        file.write(bytes([byte[0] ^ 0xFF]))
    return {}


def write_bad_config(root):
    with open(os.path.join(root, "bad.json"), "w") as file:
        file.write('{"data": {"batch_size": 16,}}')
    return {}


def make_empty_data(root):
    os.mkdir(os.path.join(root, "empty"))
    return {}


def make_data_file(root):
    with open(os.path.join(root, "data.txt"), "w") as file:
        file.write("not a folder")
    return {}


HOLD_LOCK = """
import sys, time
from torchexp.folder import Experiment
with Experiment(sys.argv[1], "x").lock():
    print("locked", flush=True)
    time.sleep(60)
"""
HOLDERS: list[subprocess.Popen] = []


def hold_the_lock(root):
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, os.path.join(root, "experiments")], stdout=subprocess.PIPE, text=True, cwd=REPO
    )
    HOLDERS.append(holder)
    assert read_line(holder.stdout, 60).strip() == "locked"
    return {"pid": holder.pid}


HAS_CUDA = torch.cuda.is_available()

MISTAKES = [
    Mistake(
        "bad-config-value", "a config value the schema forbids (every error is listed)",
        ("init", "--set", "training.lr=-1", "--set", "data.batch_size=0"), 2,
        ("config is invalid", "data.batch_size: 0 is less than the minimum of 1", "training.lr: -1 is less than or equal to the minimum of 0"),
        name="new",
    ),
    Mistake(
        "unknown-set-key", "--set of a key the schema does not declare", ("init", "--set", "training.lrr=0.1"), 2,
        ("unknown config key training.lrr: the schema does not declare it (did you mean 'training.lr'?)",), name="new",
    ),
    Mistake(
        "malformed-set", "--set without a value", ("init", "--set", "training.lr"), 2,
        ("override 'training.lr' must look like section.key=value",), name="new",
    ),
    Mistake(
        "config-not-json", "a config file that is not JSON", ("init", "--config-path", "{root}/bad.json"), 2,
        ("config file {root}/bad.json is not valid JSON: Expecting property name enclosed in double quotes",),
        name="new", setup=write_bad_config,
    ),
    Mistake(
        "missing-experiment", "an experiment that does not exist", ("train",), 3,
        ("experiment 'nope' does not exist in {root}/experiments: create it with init",), name="nope",
    ),
    Mistake(
        "existing-experiment", "init of a name already taken", ("init",), 3,
        ("experiment 'x' already exists in {root}/experiments; choose another name",),
    ),
    Mistake(
        "bad-name", "an experiment name that is not a plain folder name", ("info",), 3,
        ("experiment name '../x' is not allowed: use letters, digits",), name="../x",
    ),
    Mistake(
        "no-name", "no --experiment-name", ("train",), 3, ("no experiment name given: pass --experiment-name NAME",), name=None,
    ),
    Mistake(
        "option-after-command", "a project option after the command", ("train", "--experiment-name", "x", "--max-epochs", "4"), 2,
        ("Error: No such option '--experiment-name'. Project options go before the command: mnist_classifier "
         "--experiments-path {root}/experiments --data-path {root}/data --experiment-name x train --max-epochs 4\n",),
        name=None,
    ),
    Mistake(
        "test-unknown-epoch", "test of an epoch without a checkpoint", ("test", "--epoch", "7"), 4,
        ("epoch 7 has no standard or release checkpoint in {root}/experiments/x/checkpoints (available: 1-3)",),
    ),
    Mistake(
        "release-unknown-epoch", "create_release of an epoch without a checkpoint", ("create_release", "--epoch", "7"), 4,
        ("epoch 7 has no standard checkpoint in {root}/experiments/x/checkpoints (available: 1-3)",),
    ),
    Mistake(
        "train-unknown-epoch", "train --epoch of an epoch without a checkpoint", ("train", "--epoch", "7"), 4,
        ("epoch 7 has no standard checkpoint in {root}/experiments/x/checkpoints (available: 1-3)",),
    ),
    Mistake(
        "epoch-zero", "--epoch 0", ("test", "--epoch", "0"), 2, ("Invalid value for '--epoch': 0 is not in the range x>=1.",),
    ),
    Mistake(
        "epoch-negative", "a negative --epoch", ("train", "--epoch", "-2"), 2,
        ("Invalid value for '--epoch': -2 is not in the range x>=1.",),
    ),
    Mistake(
        "test-before-training", "test before any training", ("test",), 4,
        ("experiment 'fresh' has no standard or release checkpoint yet: train it first",), name="fresh",
    ),
    Mistake(
        "test-release-missing", "test --release when no release exists", ("test", "--release"), 4,
        ("experiment 'x' has no release checkpoint yet: create one with create_release",),
    ),
    Mistake(
        "bad-device", "a malformed --device", ("train", "--device", "gpu"), 6,
        ("device 'gpu' is not valid: use auto, cpu, cuda or cuda:N",),
    ),
    Mistake(
        "absent-cuda-device", "a CUDA device this machine lacks", ("train", "--device", "cuda:3"), 6,
        ("device 'cuda:3' is not available: this machine has no CUDA device",), skip=HAS_CUDA,
    ),
    Mistake(
        "no-cuda", "--device cuda on a machine without CUDA", ("test", "--device", "cuda"), 6,
        ("device 'cuda' is not available: this machine has no CUDA device",), skip=HAS_CUDA,
    ),
    Mistake(
        "missing-data-init", "init without the data set (and no network)", ("init",), 5,
        ("MNIST is not in {root}/empty/MNIST/raw and could not be downloaded (RuntimeError)",
         "put train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte there, "
         "or point --data-path at a folder that has MNIST/raw"),
        name="new", data="empty", setup=make_empty_data,
    ),
    Mistake(
        "missing-data-train", "train without the data set", ("train", "--max-epochs", "4"), 5,
        ("MNIST is not in {root}/nowhere/MNIST/raw and could not be downloaded (RuntimeError): put train-images-idx3-ubyte",),
        data="nowhere",
    ),
    Mistake(
        "data-path-is-a-file", "--data-path naming a file", ("init",), 5,
        ("data path {root}/data.txt is a file, not a folder",), name="new", data="data.txt", setup=make_data_file,
    ),
    Mistake(
        "corrupt-checkpoint", "test of a corrupted checkpoint", ("test", "--epoch", "3"), 4,
        ("checkpoint 3.checkpoint.pt does not match its SHA-256 (corrupted)",), setup=flip_a_byte,
    ),
    Mistake(
        "max-steps-of-an-epoch-experiment", "train --max-steps for an experiment trained by epochs", ("train", "--max-steps", "500"), 2,
        ("this experiment trains by epochs (trainer.max_steps is null): use --max-epochs, not --max-steps",),
    ),
    Mistake(
        "step-of-an-epoch-experiment", "test --step for an experiment trained by epochs", ("test", "--step", "3"), 2,
        ("experiment 'x' trains by epochs: use --epoch 3, not --step",),
    ),
    Mistake(
        "validate-every-steps-without-steps", "init with trainer.validate_every_steps but no trainer.max_steps",
        ("init", "--set", "trainer.validate_every_steps=100"), 2,
        ("config is invalid", "trainer.validate_every_steps: 100 needs trainer.max_steps (an experiment trained by epochs validates at each epoch's end)"),
        name="new",
    ),
    Mistake(
        "bad-monitor", "a trainer.monitor that is not split.name", ("init", "--set", "trainer.monitor=accuracy"), 2,
        ("config is invalid", "trainer.monitor: 'accuracy' does not match"), name="new",
    ),
    Mistake(
        "bad-compare-direction", "compare --direction with a direction that is not max or min",
        ("compare", "--direction", "loss=down"), 2,
        ("--direction 'loss=down' gives metric 'loss' the direction 'down': use 'max' or 'min' "
         "('maximize', 'minimize')",),
    ),
    Mistake(
        "compare-direction-of-no-metric", "compare --direction of a metric no experiment validates",
        ("compare", "--direction", "r2=max"), 2,
        ("--direction names 'r2', which no compared experiment validates (they validate accuracy, loss)",),
    ),
    Mistake(
        "train-over-later-epochs", "train --epoch E when later checkpoints exist", ("train", "--epoch", "1"), 4,
        ("epochs 2-3 have checkpoints that training from epoch 1 would overwrite: pass --overwrite to allow it",),
    ),
    Mistake(
        "experiment-in-use", "train while another process trains the experiment", ("train", "--max-epochs", "4"), 7,
        ("experiment 'x' is in use by process {pid}; wait for it or stop it",), setup=hold_the_lock,
    ),
]


def run_mistake(mistake: Mistake, root: str):
    """Set up and run a mistake; return the result, its expected texts and the files before it."""
    values = {"root": root}
    if mistake.setup is not None:
        values.update(mistake.setup(root))
    data = os.path.join(root, mistake.data) if mistake.data else None
    before = snapshot(root)
    try:
        result = run(root, *mistake.full_args(root), name=mistake.name, data=data)
    finally:
        for holder in HOLDERS:
            holder.kill()
            holder.wait()
        HOLDERS.clear()
    return result, [text.format(**values) for text in mistake.expected], before


@pytest.mark.parametrize("mistake", [pytest.param(m, id=m.id, marks=pytest.mark.skipif(m.skip, reason="CUDA present")) for m in MISTAKES])
def test_mistakes_are_explained_in_one_sentence_and_change_nothing(env, mistake):
    result, expected, before = run_mistake(mistake, env)
    assert result.exit_code == mistake.exit_code, result.output
    for text in expected:
        assert text in result.output
    assert "Traceback" not in result.output
    assert result.output.count("Error:") == 1
    assert snapshot(env) == before


MISSING_DATA = (
    "Error: MNIST is not in {folder}/MNIST/raw and could not be downloaded (RuntimeError): put train-images-idx3-ubyte, "
    "train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte there, or point --data-path at a folder that has MNIST/raw\n"
)


@pytest.mark.parametrize("command", ["init", "train"])
def test_missing_data_asks_the_download_seam_and_never_torchvision(env, mnist_downloads, monkeypatch, command):
    import torchvision.datasets

    started = []
    monkeypatch.setattr(torchvision.datasets, "MNIST", lambda *args, **kwargs: started.append(args))
    empty = os.path.join(env, "empty")
    os.mkdir(empty)
    before = snapshot(env)
    args = init_args(*MLP) if command == "init" else ["train", "--max-epochs", "4"]
    result = run(env, *args, name="new" if command == "init" else "x", data=empty)
    assert result.exit_code == 5, result.output
    assert result.output == MISSING_DATA.format(folder=empty)
    assert mnist_downloads == [empty]  # conftest's stand-in was asked, once, for this folder
    assert started == []  # torchvision's MNIST, which downloads, was never reached
    assert snapshot(env) == before  # the MNIST/raw the failed download made is gone


def test_errors_table_documents_every_mistake():
    with open(README) as file:
        table = file.read().split(ERRORS_START)[1].split(ERRORS_END)[0]
    for mistake in MISTAKES:
        assert f"`python -m mnist_classifier {command_line(mistake)}`" in table, mistake.id


def command_line(mistake: Mistake) -> str:
    """The mistake as a user types it, for the README's table."""
    words = [] if mistake.name is None else ["--experiment-name", mistake.name]
    if mistake.data:
        words += ["--data-path", mistake.data]
    return " ".join(words + [arg.replace("{root}/", "") for arg in mistake.args])


def write_errors_table(readme: str) -> None:
    """Run every mistake and write the README's errors table from what the user actually sees."""
    import tempfile

    rows = ["| mistake | example command | what the user sees | exit code |", "| --- | --- | --- | --- |"]
    # The download fails as on a machine without network, as in the tests, wherever the table is made.
    with tempfile.TemporaryDirectory() as folder, pytest.MonkeyPatch.context() as patch:
        patch.setattr(mnist_classifier.data, "download_mnist", refuse_mnist_download)
        template = build_template(os.path.join(folder, "template"))
        for mistake in MISTAKES:
            root = os.path.join(folder, mistake.id)
            shutil.copytree(template, root)
            result, _, _ = run_mistake(mistake, root)
            seen = [line for line in result.output.splitlines() if line.startswith("Error:") or line.startswith("  ")]
            text = "<br>".join(line.strip().replace(root + "/", "").replace("|", "\\|") for line in seen)
            text = re.sub(r"process \d+", "process 12345", text)
            rows.append(f"| {mistake.what} | `python -m mnist_classifier {command_line(mistake)}` | {text} | {result.exit_code} |")
    intro = (
        "Every mistake below ends the command with one message on stderr, an exit code that names its kind "
        "(2 configuration or usage, 3 experiment, 4 checkpoint, 5 data, 6 device, 7 lock, 8 storage, "
        "9 distributed, 10 missing extra, 11 the project's code, 130 interrupted) and no change to the experiment. The table is generated by "
        "`python tests/test_cli.py` from the cases `tests/test_cli.py` checks; paths are relative to the "
        "working folder.\n\n"
    )
    with open(readme) as file:
        text = file.read()
    before, rest = text.split(ERRORS_START)
    after = rest.split(ERRORS_END)[1]
    with open(readme, "w") as file:
        file.write(before + ERRORS_START + "\n" + intro + "\n".join(rows) + "\n" + ERRORS_END + after)


if __name__ == "__main__":
    write_errors_table(README)
