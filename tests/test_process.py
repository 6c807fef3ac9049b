"""Process-wide changes: none from torchexp used as a library, and only those the command
line documents, each with its switch (torchexp.process)."""

import atexit
import gc
import json
import os
import subprocess
import sys

import torch
from click.testing import CliRunner

from conftest import CONFIG, REPO, SCHEMA, write_mnist
from torchexp import cli, process
from torchexp.cores import keeping_torch_threads

# Imports torch (and torch._dynamo, which torch.optim imports, and which sets a variable
# and exit callbacks of its own), records what the process looks like, then uses torchexp
# as a library: creates and trains an experiment (deterministic, which sets cuBLAS's
# variable while it trains), reads it back and loads its model; prints what changed, and
# the modules of the audit hooks, exit callbacks and mallopt calls that were asked for.
LIBRARY_USE = """
import atexit, gc, json, logging, os, signal, sys
asked = {"audit hooks": [], "exit callbacks": []}
add_audit_hook, register = sys.addaudithook, atexit.register
sys.addaudithook = lambda hook: asked["audit hooks"].append(hook.__module__) or add_audit_hook(hook)
atexit.register = lambda hook, *args: asked["exit callbacks"].append(hook.__module__) or register(hook, *args)
import torch, torch._dynamo

def look():
    return {
        "gc": [gc.isenabled(), gc.get_threshold(), gc.get_freeze_count()],
        "environment": dict(os.environ),
        "signal handlers": [str(signal.getsignal(number)) for number in (signal.SIGINT, signal.SIGTERM)],
        "torch": [torch.get_num_threads(), torch.are_deterministic_algorithms_enabled(),
                  torch.backends.cudnn.benchmark],
        "root logger": [logging.root.level, len(logging.root.handlers)],
    }

before = look()
import torchexp
from torchexp import memory
from torchexp.config import build_config
from torchexp.creation import init_experiment
from torchexp.folder import Experiment
from torchexp.project import Project
from torchexp.training import train_experiment
from mnist_classifier.data import MNISTClassifierData
from mnist_classifier.runner import MNISTClassifierRunner

asked["mallopt"] = []
memory.find_mallopt = lambda: asked["mallopt"].append("looked up")
experiments, data_path, config, schema = sys.argv[1:]
project = Project(MNISTClassifierData, MNISTClassifierRunner, data_path, "quiet")
experiment = Experiment(experiments, "x")
settings = ["model.name=mlp", "data.batch_size=32", "trainer.deterministic=true"]
init_experiment(project, experiment, build_config(config, schema, settings), 0)
train_experiment(project, experiment, "cpu", 0, 1, 100)
view = torchexp.Experiments(experiments)["x"]
assert len(view.history) == 1 and view.state == "stopped at --max-epochs", (view.history, view.state)
view.load_model()
after = look()
changed = {key: [before[key], after[key]] for key in before if before[key] != after[key]}
print(json.dumps({"changed": changed, **asked}))
"""


def test_library_use_changes_nothing_process_wide(tmp_path):
    ours = ("TORCHEXP_", "CUBLAS_WORKSPACE_CONFIG")  # nothing that would turn a setting on
    env = {key: value for key, value in os.environ.items() if not key.startswith(ours)}
    data_path = write_mnist(str(tmp_path / "data"))
    arguments = [str(tmp_path / "experiments"), data_path, CONFIG, SCHEMA]
    command = [sys.executable, "-c", LIBRARY_USE, *arguments]
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout.splitlines()[-1])
    # filelock (the locks) and tqdm (the progress bars) add exit callbacks, and filelock an
    # audit hook on Python 3.12 and later, of their own (docs/performance.md); torchexp none.
    for kind in ("audit hooks", "exit callbacks"):
        found[kind] = [module for module in found[kind] if str(module).startswith("torchexp")]
    assert found == {"changed": {}, "audit hooks": [], "exit callbacks": [], "mallopt": []}


def recorded_exit_callbacks(monkeypatch, *arguments: str) -> list:
    """The callbacks `torchexp ARGUMENTS` registers to run at exit, recorded instead."""
    registered = []
    monkeypatch.setattr(atexit, "register", registered.append)
    monkeypatch.setattr(atexit, "unregister", lambda callback: None)
    result = CliRunner().invoke(cli.main, list(arguments))
    assert result.exit_code == 0, result.output
    return registered


def test_the_command_line_freezes_objects_at_exit_unless_told_not_to(monkeypatch):
    monkeypatch.delenv(process.GC_FREEZE, raising=False)
    assert recorded_exit_callbacks(monkeypatch, "--version") == [gc.freeze]
    monkeypatch.setenv(process.GC_FREEZE, "0")
    assert recorded_exit_callbacks(monkeypatch, "--version") == []


def test_the_command_lines_process_is_its_own_only_while_it_runs(monkeypatch):
    seen = []
    monkeypatch.delenv(process.MALLOPT, raising=False)
    monkeypatch.setattr(cli.TorchexpGroup, "invoke", lambda group, ctx: seen.append(process.allows(process.MALLOPT)))
    CliRunner().invoke(cli.main, ["compare"])
    assert seen == [True]
    assert process.allows(process.MALLOPT) is False
    assert process.allows(process.MALLOPT, asked=True) is True


def test_training_gives_torchs_thread_count_back():
    threads = torch.get_num_threads()
    with keeping_torch_threads():
        torch.set_num_threads(threads + 1)
    assert torch.get_num_threads() == threads
