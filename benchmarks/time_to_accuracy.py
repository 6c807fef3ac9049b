"""Wall seconds of training until the test accuracy first reaches each target.

Each configuration (the default one and the presets in configs/) is created with `init`
and trained with `Runner.train`, as `train` runs it. After every epoch, once its checkpoint
is written, the model is evaluated on the test set, outside the timed part.

Training seconds of an epoch run from the start of its first iteration to the end of its
checkpoint: iterations, validation (when the config has a validation split), epoch logs,
scheduler and checkpoint. Start-up (reading MNIST, building the model) and the test
evaluations are not counted.

Prints one JSON line per epoch and one summary line per configuration. Each epoch line also
gives the process's CPU seconds and the 1-minute load average, to tell a slow epoch from a
busy machine.

    .venv/bin/python benchmarks/time_to_accuracy.py --configs fast,best
"""

import os
import sys
import time
from typing import ClassVar

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # after the path set-up above

from mnist_classifier.runner import MNISTClassifierRunner

DEFAULT_EPOCHS = 14  # epochs of configs without a one-cycle schedule: pytorch/examples' default


class TimedRunner(MNISTClassifierRunner):
    """The MNIST runner, timing each epoch and testing it after its checkpoint.

    Class attributes set by `run_config`: `targets` (accuracies to reach), `stop_at_targets`
    (stop once every target is reached) and `report` (called with each epoch's figures).
    """

    targets: ClassVar[list[float]] = []
    stop_at_targets = True
    report = staticmethod(lambda record: None)

    def train_before_epoch_tasks(self, device):
        super().train_before_epoch_tasks(device)
        self.epoch_started, self.epoch_cpu_started = time.perf_counter(), time.process_time()

    def save_training_checkpoint(self, kind, epoch):
        super().save_training_checkpoint(kind, epoch)
        if kind != "standard":
            return
        seconds = time.perf_counter() - self.epoch_started
        cpu_seconds = time.process_time() - self.epoch_cpu_started
        self.train_seconds = getattr(self, "train_seconds", 0.0) + seconds
        accuracy, loss = common.test_accuracy(self.model, self.data.loaders["test"])
        self.best_accuracy = max(getattr(self, "best_accuracy", 0.0), accuracy)
        TimedRunner.report(
            {
                "epoch": epoch,
                "epoch_seconds": round(seconds, 3),
                "train_seconds": round(self.train_seconds, 3),
                "epoch_cpu_seconds": round(cpu_seconds, 3),
                "test_accuracy": accuracy,
                "test_loss": round(loss, 5),
                "train_loss": round(self.history["train"][-1]["loss"], 5),
                "load_avg_1": round(os.getloadavg()[0], 2),
            }
        )

    def train_early_stopping(self):
        if self.stop_at_targets and all(self.best_accuracy >= target for target in self.targets):
            return True
        return super().train_early_stopping()


def display_path(path: str) -> str:
    """The path relative to the repository when it lies inside it."""
    relative = os.path.relpath(path, common.REPO)
    return path if relative.startswith("..") else relative


def planned_epochs(config: dict) -> int:
    """Epochs a configuration is meant to run: its one-cycle span, else DEFAULT_EPOCHS."""
    training = config["training"]
    return training["schedule_epochs"] if training["scheduler"] == "onecycle" else DEFAULT_EPOCHS


def run_config(name: str, config_path: str, args, experiments_path: str) -> None:
    """Create, train and test one configuration; print its epochs and its summary."""
    import torch

    started = time.perf_counter()
    common.create_experiment(experiments_path, name, args.data_path, config_path, args.seed)
    runner = common.make_runner(experiments_path, name, args.data_path, TimedRunner)
    epochs = planned_epochs(runner.config.data)
    if args.max_epochs is not None:
        epochs = min(epochs, args.max_epochs)
    reached_seconds: dict[str, float | None] = {f"{target:g}": None for target in args.targets}
    reached_epoch: dict[str, int | None] = dict(reached_seconds)
    history = []

    def report(record):
        record = {"benchmark": "time_to_accuracy", "config": name, **record}
        history.append(record)
        for target in args.targets:
            key = f"{target:g}"
            if reached_seconds[key] is None and record["test_accuracy"] >= target:
                reached_seconds[key], reached_epoch[key] = record["train_seconds"], record["epoch"]
        common.emit(record)

    TimedRunner.targets, TimedRunner.stop_at_targets, TimedRunner.report = args.targets, not args.full, report
    try:
        # Start-up: Runner.train builds the model before the first epoch_started.
        runner.train(torch.device("cpu"), epochs, log_period=100)
    finally:
        common.close_runner(runner)
    common.emit(
        {
            "benchmark": "time_to_accuracy",
            "config": name,
            "summary": True,
            "config_path": display_path(config_path),
            "epochs_run": len(history),
            "planned_epochs": epochs,
            "seconds_to": reached_seconds,
            "epochs_to": reached_epoch,
            "final_accuracy": history[-1]["test_accuracy"] if history else None,
            "best_accuracy": max((record["test_accuracy"] for record in history), default=None),
            "train_seconds": history[-1]["train_seconds"] if history else None,
            "wall_seconds_with_startup_and_tests": round(time.perf_counter() - started, 2),
            "machine": common.machine(),
        }
    )


def main() -> None:
    parser = common.make_parser(__doc__.split("\n\n")[0])
    common.add_configs_option(parser, default="fast,best,default")
    parser.add_argument("--targets", default="0.99,0.992,0.995", help="test accuracies to time (default: %(default)s)")
    parser.add_argument("--max-epochs", type=int, help=f"cap on epochs per config (default: its one-cycle span, else {DEFAULT_EPOCHS})")
    parser.add_argument("--full", action="store_true", help="train every planned epoch even after all targets are reached")
    args = parser.parse_args()
    args.targets = sorted(float(value) for value in args.targets.split(","))
    common.emit({"benchmark": "time_to_accuracy", "machine": common.machine(), "targets": args.targets})
    common.run_each_config(run_config, args, prefix="torchexp-tta-")


if __name__ == "__main__":
    main()
