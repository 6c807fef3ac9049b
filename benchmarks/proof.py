"""What proof costs: the checkpoint clock against none, and `verify` of one epoch against
the epoch's own time.

The clock: the fast preset (`configs/fast.json`) trained in this process, one epoch per
variant and round, in alternating order: `trainer.checkpoint_every_minutes` null (no clock),
1 (the issue's cadence: an epoch here is shorter than a minute, so this is the cost of
watching the clock at every step), and `--short-minutes` (default 0.05: 3 s, several
mid-epoch checkpoints per epoch, the cost of writing them). Each variant's epoch seconds are
reported with their ratio to no clock; the goal is at most 1.02 for the 1-minute cadence.

verify: a fast-preset experiment trained one epoch by the command line, then `verify
--epoch 1` as a whole process, against the epoch's own seconds (metrics.jsonl) and the
`train` process's.

    .venv/bin/python benchmarks/proof.py --rounds 3
"""

import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # after the path set-up above

from mnist_classifier.runner import MNISTClassifierRunner


class TimedRunner(MNISTClassifierRunner):
    """The MNIST runner, timing each epoch from its start to the end of its checkpoint (the
    hook called right after it)."""

    def train_before_epoch_tasks(self, device):
        super().train_before_epoch_tasks(device)
        self.epoch_started = time.perf_counter()

    def train_early_stopping(self):
        self.epoch_seconds = time.perf_counter() - self.epoch_started
        return super().train_early_stopping()


def time_epoch(args, experiments_path: str, name: str, minutes: str) -> float:
    """Create a fast-preset experiment with the clock at `minutes` ("null": none) and train
    one epoch in this process; return its seconds."""
    import torch

    from torchexp import loop

    common.create_experiment(experiments_path, name, args.data_path, common.PRESETS["fast"], args.seed, [f"trainer.checkpoint_every_minutes={minutes}"])
    runner = common.make_runner(experiments_path, name, args.data_path, TimedRunner)
    try:
        loop.train(runner, torch.device("cpu"), 1, log_period=10**9)
    finally:
        common.close_runner(runner)
    return runner.epoch_seconds


def measure_clock(args, experiments_path: str) -> None:
    variants = {"none": "null", "1 minute": "1", f"{args.short_minutes} minutes": str(args.short_minutes)}
    seconds: dict[str, list[float]] = {label: [] for label in variants}
    for round_index in range(args.rounds):
        order = list(variants) if round_index % 2 == 0 else list(reversed(variants))
        for label in order:
            value = time_epoch(args, experiments_path, f"clock-{round_index}-{label.split()[0]}", variants[label])
            seconds[label].append(round(value, 3))
            common.emit({"benchmark": "proof", "part": "clock", "round": round_index + 1, "variant": label, "epoch_seconds": round(value, 3)})
    medians = {label: common.median(values) for label, values in seconds.items()}
    ratios = {label: round(medians[label] / medians["none"], 4) for label in variants if label != "none"}
    common.emit({"benchmark": "proof", "part": "clock", "summary": True, "median_epoch_seconds": medians, "ratio_to_none": ratios,
                 "goal": {"1 minute": 1.02, "met": ratios["1 minute"] <= 1.02}, "machine": common.machine()})  # fmt: skip


def measure_verify(args, experiments_path: str) -> None:
    name = "verified"
    common.create_experiment(experiments_path, name, args.data_path, common.PRESETS["fast"], args.seed)
    train_seconds, _ = common.time_process(common.cli_command(experiments_path, name, args.data_path, "train", "--max-epochs", "1", "--device", "cpu"))
    verify_seconds, output = common.time_process(common.cli_command(experiments_path, name, args.data_path, "verify", "--epoch", "1", "--device", "cpu"))
    with open(os.path.join(experiments_path, name, "metrics.jsonl"), encoding="utf-8") as file:
        epoch = next(entry for entry in map(json.loads, file) if entry["kind"] == "train")
    common.emit({
        "benchmark": "proof", "part": "verify", "verdict": output.strip().splitlines()[-1],
        "epoch_seconds": epoch["seconds"], "train_process_seconds": round(train_seconds, 3), "verify_process_seconds": round(verify_seconds, 3),
        "verify_over_epoch": round(verify_seconds / epoch["seconds"], 3), "verify_over_train_process": round(verify_seconds / train_seconds, 3),
        "machine": common.machine(),
    })  # fmt: skip


def main() -> None:
    parser = common.make_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the clock variants, alternating their order (default: %(default)s)")
    parser.add_argument("--short-minutes", type=float, default=0.05, help="the short cadence, in minutes (default: %(default)s)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="torchexp-proof-") as experiments_path:
        measure_clock(args, experiments_path)
        measure_verify(args, experiments_path)


if __name__ == "__main__":
    main()
