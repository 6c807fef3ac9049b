"""Seconds to save and to load a training checkpoint, against the time of an epoch.

For each configuration (the default: pytorch/examples' CNN with Adadelta), a runner trains
a short epoch through `torchexp.loop.train`, so its state holds everything a real checkpoint
holds (model, optimizer state, scheduler, RNG states, history). Then, `--repeats` times,
interleaved:

    torchexp_save   torchexp.checkpoints.save_checkpoint: torch.save to a temporary file,
                    fsync, rename, SHA-256 and its JSON record
    torchexp_load   torchexp.checkpoints.load_checkpoint: SHA-256 check, then
                    torch.load(weights_only=True)
    torch_save      plain torch.save(state, path)
    torch_load      plain torch.load(path, weights_only=True)

The epoch time it is compared with is extrapolated from the short epoch's iterations to a
full epoch of the configuration's training split.

    .venv/bin/python benchmarks/checkpoint.py
"""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # after the path set-up above

from mnist_classifier.runner import MNISTClassifierRunner

MNIST_TRAIN_SIZE = 60_000


class TimedRunner(MNISTClassifierRunner):
    """The MNIST runner, timing its training iterations: from the epoch's start to its first
    validation step (or its log, without a validation set)."""

    iterations_ended = None

    def train_before_epoch_tasks(self, device):
        super().train_before_epoch_tasks(device)
        self.epoch_started, self.iterations_ended = time.perf_counter(), None

    def validation_step(self, batch, device):
        self.iterations_ended = self.iterations_ended or time.perf_counter()
        return super().validation_step(batch, device)

    def train_epoch_log(self, epoch, train, validation, seconds):
        self.iterations_seconds = (self.iterations_ended or time.perf_counter()) - self.epoch_started
        super().train_epoch_log(epoch, train, validation, seconds)


def timed(function, *arguments) -> tuple[float, object]:
    started = time.perf_counter()
    result = function(*arguments)
    return time.perf_counter() - started, result


def run_config(name: str, config_path: str, args, experiments_path: str) -> None:
    import torch

    from torchexp import checkpoints, loop
    from torchexp.precision import Precision, choose_precision
    from torchexp.training_state import collect_state

    common.create_experiment(experiments_path, name, args.data_path, config_path, args.seed)
    runner = common.make_runner(experiments_path, name, args.data_path, TimedRunner, common.subset_data_class(args.samples))
    try:
        loop.train(runner, torch.device("cpu"), 1, log_period=100)
    finally:
        common.close_runner(runner)
    samples_per_s = args.samples / runner.iterations_seconds
    train_size = round(MNIST_TRAIN_SIZE * (1 - runner.get_conf("data", "val_split")))
    epoch_seconds = train_size / samples_per_s

    folder = os.path.join(experiments_path, name, "bench")
    os.makedirs(folder)
    plain_path = os.path.join(folder, "plain.pt")
    times: dict[str, list[float]] = {"collect_state": [], "torchexp_save": [], "torchexp_load": [], "torch_save": [], "torch_load": []}
    for _ in range(args.repeats):
        seconds, state = timed(collect_state, runner, Precision(choose_precision("fp32", torch.device("cpu")), torch.device("cpu")), None)
        times["collect_state"].append(seconds)
        seconds, path = timed(checkpoints.save_checkpoint, folder, 1, "standard", state, {"iteration": 0, "metrics": {}})
        times["torchexp_save"].append(seconds)
        info = checkpoints.find_checkpoint(folder, 1, ("standard",))
        times["torchexp_load"].append(timed(info.load)[0])
        times["torch_save"].append(timed(torch.save, state, plain_path)[0])
        times["torch_load"].append(timed(lambda: torch.load(plain_path, map_location="cpu", weights_only=True))[0])
    medians = {key: round(common.median(values), 4) for key, values in times.items()}
    model_bytes = sum(tensor.numel() * tensor.element_size() for tensor in runner.model.state_dict().values())
    common.emit(
        {
            "benchmark": "checkpoint",
            "config": name,
            "model": runner.get_conf("model", "name"),
            "optimizer": runner.get_conf("training", "optimizer"),
            "checkpoint_bytes": os.path.getsize(path),
            "model_weights_bytes": model_bytes,
            "median_s": medians,
            "runs_s": {key: [round(value, 4) for value in values] for key, values in times.items()},
            "epoch_seconds_estimate": round(epoch_seconds, 2),
            "epoch_train_samples": train_size,
            "train_samples_per_s": round(samples_per_s, 1),
            "save_fraction_of_epoch": round((medians["collect_state"] + medians["torchexp_save"]) / epoch_seconds, 5),
            "load_fraction_of_epoch": round(medians["torchexp_load"] / epoch_seconds, 5),
            "torchexp_vs_torch": {
                "save": round(medians["torchexp_save"] / medians["torch_save"], 2),
                "load": round(medians["torchexp_load"] / medians["torch_load"], 2),
            },
            "load_avg_1": round(os.getloadavg()[0], 2),
        }
    )


def main() -> None:
    parser = common.make_parser(__doc__.split("\n\n")[0])
    common.add_configs_option(parser, default="default,fast")
    parser.add_argument("--repeats", type=int, default=7, help="saves and loads of each kind (default: %(default)s)")
    parser.add_argument(
        "--samples", type=int, default=3_200, help="images of the short epoch that sets the state and the rate (default: %(default)s)"
    )
    args = parser.parse_args()
    common.emit({"benchmark": "checkpoint", "machine": common.machine(), "repeats": args.repeats})
    common.run_each_config(run_config, args, prefix="torchexp-checkpoint-")


if __name__ == "__main__":
    main()
