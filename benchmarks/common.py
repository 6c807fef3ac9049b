"""What the benchmarks share: paths, the machine's description, JSON output, and
building experiments and runners through torchexp's own API.

Experiments are created with the real `init` command (click's CliRunner) and trained with
the real `torchexp.loop.train`, built the way `train` builds it (`Project.make_runner`), so what the
benchmarks time is the loop users run.
"""

import argparse
import glob
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:  # run as `python benchmarks/x.py` from a fresh clone, installed or not
    sys.path.insert(0, REPO)

DEFAULT_DATA_PATH = os.path.normpath(os.path.join(REPO, "..", "shared", "datasets"))
DEFAULT_CONFIG = os.path.join(REPO, "config.default.json")
SCHEMA = os.path.join(REPO, "config.schema.json")
PRESETS = {
    "default": DEFAULT_CONFIG,
    "fast": os.path.join(REPO, "configs", "fast.json"),
    "best": os.path.join(REPO, "configs", "best.json"),
}


def make_parser(description: str) -> argparse.ArgumentParser:
    """An argument parser with the options every benchmark takes."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--data-path", default=DEFAULT_DATA_PATH, help="folder holding MNIST/raw (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of every variant (default: %(default)s, as init)")
    return parser


def emit(record: dict[str, Any]) -> None:
    """Print one JSON line and flush it, so partial results survive an interrupted run."""
    print(json.dumps(record), flush=True)


def machine() -> dict[str, Any]:
    """What the figures depend on: the CPU and its vector extensions, load, threads, versions."""
    import torch

    from torchexp.precision import describe_cpu, read_cpu_model

    load = os.getloadavg()
    return {
        "cpu": read_cpu_model(),
        "cpu_flags": describe_cpu(),
        "cpus": os.cpu_count(),
        "load_avg_1_5_15": [round(value, 2) for value in load],
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cuda": torch.cuda.is_available(),
    }


def median(values: list[float]) -> float:
    return statistics.median(values)


def create_experiment(experiments_path: str, name: str, data_path: str, config_path: str, seed: int, overrides: list[str] = ()) -> None:
    """Run `init` through the command line, exactly as a user would.

    Raises:
        RuntimeError: init failed; carries its output.
    """
    from click.testing import CliRunner

    from mnist_classifier.__main__ import cli

    arguments = ["--experiments-path", experiments_path, "--data-path", data_path, "--experiment-name", name, "--quiet"]
    arguments += ["init", "--config-path", config_path, "--schema-path", SCHEMA, "--seed", str(seed)]
    for override in overrides:
        arguments += ["--set", override]
    result = CliRunner().invoke(cli, arguments)
    if result.exit_code != 0:
        raise RuntimeError(f"init of {name} failed ({result.exit_code}): {result.output}") from result.exception


def make_runner(experiments_path: str, name: str, data_path: str, runner_class: type, data_class: type | None = None) -> Any:
    """Build a runner the way `train` does (`Project.make_runner`), with quiet console logs.

    Args:
        runner_class: the project's Runner or a subclass adding timing hooks.
        data_class: the project's Data or a subclass (e.g. one that trains on a subset).
    """
    from mnist_classifier.data import MNISTClassifierData
    from torchexp import App

    app = App(data_class or MNISTClassifierData, runner_class, name, experiments_path, data_path, "quiet")
    experiment = app.open_experiment()
    return app.project.make_runner(experiment, experiment.read_definition(), num_workers=0)


def close_runner(runner: Any) -> None:
    """Release what `make_runner` opened: TensorBoard's writer and the log file."""
    from torchexp.logs import close_logger

    runner.tracker.close()
    close_logger(runner.logger)


def subset_data_class(train_samples: int) -> type:
    """The MNIST Data with the training set cut to its first `train_samples` images: a
    subclass as a user would write one, so the loaders and loop stay torchexp's own."""
    from mnist_classifier.data import MNISTClassifierData

    class SubsetData(MNISTClassifierData):
        def load_datasets(self, data_path: str) -> None:
            super().load_datasets(data_path)
            self.datasets["train"] = tuple(tensor[:train_samples] for tensor in self.datasets["train"])

    return SubsetData


def test_accuracy(model: Any, loader: Any) -> tuple[float, float]:
    """Test-set (accuracy, mean loss) of `model`, computed as the `test` command does:
    eval mode, no gradients, fp32, sums divided by the number of samples."""
    import torch
    import torch.nn.functional as F

    was_training = model.training
    model.eval()
    correct, loss, count = 0, 0.0, 0
    with torch.no_grad():
        for images, labels in loader:
            output = model(images)
            loss += F.nll_loss(output.float(), labels, reduction="sum").item()
            correct += (output.argmax(1) == labels).sum().item()
            count += len(labels)
    model.train(was_training)
    return correct / count, loss / count


def add_configs_option(parser: argparse.ArgumentParser, default: str | None, shown: str = "%(default)s") -> None:
    """Add `--configs`: preset names or config paths, comma-separated; `shown` describes a
    default that depends on other options."""
    names = ", ".join(PRESETS)
    parser.add_argument("--configs", default=default, help=f"comma-separated: {names}, or config paths (default: {shown})")


def run_each_config(run_config: Callable[[str, str, argparse.Namespace, str], None], args: argparse.Namespace, prefix: str) -> None:
    """Call `run_config(label, path, args, experiments_path)` for each of `--configs`, with
    the experiments in a temporary folder removed afterwards."""
    with tempfile.TemporaryDirectory(prefix=prefix) as experiments_path:
        for label, path in resolve_configs(args.configs):
            run_config(label, path, args, experiments_path)


def resolve_configs(names: str) -> list[tuple[str, str]]:
    """Return (label, absolute path) for each comma-separated preset name or config path."""
    resolved = []
    for name in names.split(","):
        label = name if name in PRESETS else os.path.splitext(os.path.basename(name))[0]
        resolved.append((label, os.path.abspath(PRESETS.get(name, name))))
    return resolved


def time_process(command: list[str], env: dict[str, str] | None = None) -> tuple[float, str]:
    """Run a command to its end; return its wall seconds, from start to exit, and its output.

    Raises:
        RuntimeError: it failed; carries its output.
    """
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=False, env=env)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}):\n{done.stdout}{done.stderr}")
    return seconds, done.stdout + done.stderr


def run_reference(data_path: str, train_samples: int = 48_000, epochs: int = 1) -> dict[str, float]:
    """Time a whole process of pytorch/examples' mnist/main.py (reference_mnist.py);
    return its wall seconds and test accuracy."""
    script = os.path.join(REPO, "benchmarks", "reference_mnist.py")
    command = [sys.executable, script, "--data-path", data_path, "--train-samples", str(train_samples), "--epochs", str(epochs)]
    seconds, output = time_process(command)
    correct, total = map(int, re.findall(r"Accuracy: (\d+)/(\d+)", output)[-1])
    return {"seconds": round(seconds, 3), "test_accuracy": correct / total}


def cli_command(experiments_path: str, name: str, data_path: str, *arguments: str) -> list[str]:
    """The MNIST classifier's command line, as a user types it, for one experiment."""
    base = [sys.executable, "-m", "mnist_classifier", "--experiments-path", experiments_path, "--data-path", data_path]
    return [*base, "--experiment-name", name, "--quiet", *arguments]


def read_test_accuracy(experiments_path: str, name: str) -> float:
    """The accuracy of the experiment's most recent test report."""
    reports = glob.glob(os.path.join(experiments_path, name, "results", "*.test.json"))
    with open(max(reports, key=os.path.getmtime), encoding="utf-8") as file:
        return json.load(file)["results"]["accuracy"]
