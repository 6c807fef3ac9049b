"""A project for the search tests: the MNIST classifier whose validation loss a parameter sets.

The validation loss of epoch e is `training.momentum + 1 / e` (Adam ignores momentum), so a
test knows how trials rank at every rung. Momentum FAIL_NAN makes the loss NaN, FAIL_RAISE
makes training raise, UNREDUCED makes train_step return each sample's loss (a user's
bug), and FLAT keeps the loss at FLAT every epoch (early stopping ends it). SEARCH_TEST_GATE
in the environment names a gate folder:
before every epoch after the first, a trial writes `<trial>-epoch-<N>` there and waits
until the test creates `open` in it, so that a test can signal a trial at a known point
instead of racing a timer.

Run as a script, it is the project's command line: `python tests/search_project.py ...`.
"""

import json
import math
import os
import signal
import subprocess
import sys
import time
from typing import Any, Callable

import torch

from mnist_classifier.runner import MNISTClassifierRunner
from torchexp import make_cli

FAIL_NAN = 0.99
FAIL_RAISE = 0.98
FLAT = 0.97
UNREDUCED = 0.96
GATE_SECONDS = 120  # a trial waits this long at a gate the test never opens, then fails
OPEN = "open"


class SearchTestRunner(MNISTClassifierRunner):
    """MNIST training, with a validation loss that ranks trials by training.momentum."""

    def train_before_epoch_tasks(self, device: torch.device) -> None:
        gate = os.environ.get("SEARCH_TEST_GATE")
        if gate and self.counters["epoch"] >= 1:
            wait_at_gate(gate, f"{self.experiment.name}-epoch-{self.counters['epoch'] + 1}")

    def train_step(self, batch: Any, device: torch.device) -> dict[str, torch.Tensor]:
        if self.get_conf("training", "momentum") == FAIL_RAISE:
            raise RuntimeError("the model blew up")
        if self.get_conf("training", "momentum") == UNREDUCED:
            images, labels = batch
            return {"loss": torch.nn.functional.nll_loss(self.model(images), labels, reduction="none")}
        return super().train_step(batch, device)

    def validation_step(self, batch: Any, device: torch.device) -> dict[str, torch.Tensor]:
        metrics = super().validation_step(batch, device)
        momentum = self.get_conf("training", "momentum")
        loss = {FAIL_NAN: math.nan, FLAT: FLAT}.get(momentum, momentum + 1 / (self.counters["epoch"] + 1))
        return {**metrics, "loss": torch.tensor(loss)}


def wait_at_gate(gate: str, marker: str) -> None:
    """Write `marker` in the gate folder, then wait until the test opens the gate."""
    with open(os.path.join(gate, marker), "w", encoding="utf-8"):
        pass
    deadline = time.monotonic() + GATE_SECONDS
    while not os.path.exists(os.path.join(gate, OPEN)):
        if time.monotonic() > deadline:
            raise RuntimeError(f"the test never opened the gate {gate}")
        time.sleep(0.01)


cli = make_cli("mnist_classifier.data:MNISTClassifierData", "search_project:SearchTestRunner")

if __name__ == "__main__":
    cli(prog_name="search_project")


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCHEMA = os.path.join(REPO, "config.schema.json")
# Every trial: a tiny MLP trained with Adam on tiny batches, fast on one thread.
FIXED = {
    "model.name": "mlp",
    "data.batch_size": 16,
    "data.test_batch_size": 20,
    "training.optimizer": "adam",
    "training.lr": 0.001,
    "training.scheduler": "none",
}


def write_space(folder: str, parameters: dict, fixed: dict | None = None, name: str = "space.json") -> str:
    """Write a search space over the repository's config.default.json, with FIXED values for
    the keys it does not search; return its path."""
    path = os.path.join(folder, name)
    fixed = {key: value for key, value in {**FIXED, **(fixed or {})}.items() if key not in parameters}
    space = {"config": os.path.join(REPO, "config.default.json"), "fixed": fixed, "parameters": parameters}
    with open(path, "w", encoding="utf-8") as file:
        json.dump(space, file)
    return path


def search_args(space: str, *extra: str) -> list[str]:
    """`search` with the repository's schema, on the CPU."""
    return ["search", "--space", space, "--schema-path", SCHEMA, "--device", "cpu", *extra]


def start_search(experiments: str, data_path: str, *args: str, gate: str | None = None) -> subprocess.Popen:
    """This project's command line on study "study" in a process of its own, one thread,
    its output (stdout and stderr) in one pipe; with a `gate` folder, its trials wait there
    before every epoch after the first (`wait_at_gate`)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("SEARCH_TEST_GATE", None)
    if gate is not None:
        os.makedirs(gate, exist_ok=True)
        env["SEARCH_TEST_GATE"] = gate
    base = ["--experiments-path", experiments, "--data-path", data_path, "--experiment-name", "study"]
    # A test run in the background inherits an ignored SIGINT; a user's terminal does not.
    return subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), *base, *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def wait_until(condition: Callable[[], bool], processes: list[subprocess.Popen], what: str, timeout: float = 120) -> None:
    """Wait until `condition()` holds; kill the processes and raise AssertionError with
    their output if one ends first or `timeout` seconds pass."""
    deadline = time.monotonic() + timeout
    while not condition():
        ended = any(process.poll() is not None for process in processes)
        if ended or time.monotonic() > deadline:
            for process in processes:
                process.kill()
            outputs = "\n".join(process.communicate()[0] for process in processes)
            raise AssertionError(f"{'a search ended' if ended else f'{timeout} s passed'} before {what}:\n{outputs}")
        time.sleep(0.01)


def open_gate(gate: str) -> None:
    """Let every trial waiting at the gate, and every later one, go on."""
    with open(os.path.join(gate, OPEN), "w", encoding="utf-8"):
        pass


def load_study(experiments: str, name: str = "study") -> Any:
    """The Optuna study of study `name` under `experiments`, from its journal."""
    import optuna

    from torchexp.search.storage import open_journal

    return optuna.load_study(study_name=name, storage=open_journal(os.path.join(experiments, name)))


def read_trial_log(experiments: str, trial: str) -> str:
    """verbose.log of trial `trial` (trial-0003) of study "study"."""
    with open(os.path.join(experiments, "study", trial, "verbose.log"), encoding="utf-8") as file:
        return file.read()
