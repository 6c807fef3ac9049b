"""Time to accuracy: torchexp's presets against pytorch/examples, and per epoch.

By default, whole processes, as a user runs them: for each configuration (default: the fast
preset), `init` (not timed), then a bare `train` (its own trainer.max_epochs, no option
beyond the preset) timed from `python` to exit, then a bare `create_release` and
`test --release` for the accuracy. Beside it, in alternate order each round, the reference:
a whole process of pytorch/examples' mnist/main.py, one epoch over 48,000 training images
with its per-image transforms and DataLoader, then its 10,000-image test pass
(benchmarks/reference_mnist.py). The ratio is train seconds / reference seconds; the goal
for the fast preset is at most 0.25 with at least 99.2 % test accuracy.

With --per-epoch, configurations are trained in this process with `torchexp.loop.train`, and the
test accuracy is measured after every epoch's checkpoint, outside the timed part: seconds
of training until each target accuracy is first reached. Training seconds of an epoch run
from the start of its first iteration to the end of its checkpoint; start-up and the test
evaluations are not counted.

Every line is JSON; the first and the summaries carry the machine: CPU model and flags
(AVX2 or AVX-512, bf16 or not), load, threads.

    .venv/bin/python benchmarks/time_to_accuracy.py
    .venv/bin/python benchmarks/time_to_accuracy.py --per-epoch --configs fast,best,default
"""

import functools
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

    def train_early_stopping(self):
        # Called right after the epoch's checkpoint is written.
        epoch = self.counters["epoch"]
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
    from torchexp import loop

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
        # Start-up: torchexp.loop.train builds the model before the first epoch_started.
        loop.train(runner, torch.device("cpu"), epochs, log_period=100)
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


def run_against_reference(name: str, config_path: str, args, experiments_path: str) -> None:
    """Alternate the reference process and the preset's init + bare train + release + test;
    print each round and a summary with the median ratio."""
    rounds = []
    for round_index in range(args.rounds):
        figures = {}
        order = ("reference", "preset") if round_index % 2 == 0 else ("preset", "reference")
        for part in order:
            if part == "reference":
                figures["reference"] = common.run_reference(args.data_path)
            else:
                figures["preset"] = run_preset_processes(f"{name}-{round_index}", config_path, args, experiments_path)
        record = {
            "benchmark": "time_to_accuracy", "config": name, "round": round_index + 1,
            "train_seconds": figures["preset"]["train_seconds"], "test_accuracy": figures["preset"]["test_accuracy"],
            "reference_seconds": figures["reference"]["seconds"], "reference_test_accuracy": figures["reference"]["test_accuracy"],
            "ratio": round(figures["preset"]["train_seconds"] / figures["reference"]["seconds"], 3),
            "load_avg_1": round(os.getloadavg()[0], 2),
        }  # fmt: skip
        rounds.append(record)
        common.emit(record)
    ratio = common.median([record["ratio"] for record in rounds])
    accuracy = min(record["test_accuracy"] for record in rounds)
    common.emit(
        {
            "benchmark": "time_to_accuracy", "config": name, "summary": True, "config_path": display_path(config_path),
            "median_train_seconds": common.median([record["train_seconds"] for record in rounds]),
            "median_reference_seconds": common.median([record["reference_seconds"] for record in rounds]),
            "median_ratio": ratio, "test_accuracy": accuracy,
            "goal": {"ratio_at_most": args.goal_ratio, "accuracy_at_least": args.goal_accuracy,
                     "met": ratio <= args.goal_ratio and accuracy >= args.goal_accuracy},
            "machine": common.machine(),
        }  # fmt: skip
    )


def run_preset_processes(name: str, config_path: str, args, experiments_path: str) -> dict[str, float]:
    """init, then a timed bare `train`, then bare `create_release` and `test --release`, each
    a process of the MNIST classifier's command line."""
    command = functools.partial(common.cli_command, experiments_path, name, args.data_path)
    common.time_process(command("init", "--config-path", config_path, "--schema-path", common.SCHEMA, "--seed", str(args.seed)))
    train_seconds, _ = common.time_process(command("train", "--device", "cpu"))
    common.time_process(command("create_release"))
    common.time_process(command("test", "--release", "--device", "cpu"))
    return {"train_seconds": round(train_seconds, 3), "test_accuracy": common.read_test_accuracy(experiments_path, name)}


def main() -> None:
    parser = common.make_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--per-epoch", action="store_true", help="time each epoch in this process instead of whole processes")
    common.add_configs_option(parser, default=None, shown="fast; fast,best,default with --per-epoch")
    parser.add_argument("--rounds", type=int, default=2, help="whole-process rounds, alternating the order (default: %(default)s)")
    parser.add_argument("--goal-ratio", type=float, default=0.25, help="train / reference seconds at most (default: %(default)s)")
    parser.add_argument("--goal-accuracy", type=float, default=0.992, help="test accuracy at least (default: %(default)s)")
    parser.add_argument("--targets", default="0.99,0.992,0.995", help="--per-epoch: test accuracies to time (default: %(default)s)")
    parser.add_argument("--max-epochs", type=int, help=f"--per-epoch: cap on epochs per config (default: its one-cycle span, else {DEFAULT_EPOCHS})")
    parser.add_argument("--full", action="store_true", help="--per-epoch: train every planned epoch even after all targets are reached")
    args = parser.parse_args()
    args.configs = args.configs or ("fast,best,default" if args.per_epoch else "fast")
    args.targets = sorted(float(value) for value in args.targets.split(","))
    common.emit({"benchmark": "time_to_accuracy", "per_epoch": args.per_epoch, "machine": common.machine()})
    common.run_each_config(run_config if args.per_epoch else run_against_reference, args, prefix="torchexp-tta-")


if __name__ == "__main__":
    main()
