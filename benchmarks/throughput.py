"""Training throughput (samples/s) of one epoch: torchexp against two plain PyTorch loops.

Variants, all with pytorch/examples' MNIST CNN, Adadelta (lr 1), StepLR (gamma 0.7),
batch 64, fp32, the same seed and the same first `--samples` training images:

    pytorch_examples  the loop of pytorch/examples mnist/main.py: torchvision's MNIST with
                      ToTensor + Normalize per image, a DataLoader (num_workers 0, as
                      that script uses on the CPU), loss.item() every 10 batches
    plain_in_memory   the same loop fed by slicing one normalized float tensor held in memory
    torchexp          `init` (config.default.json, data.val_split=0) then Runner.train for one
                      epoch, as `train` runs it: uint8 tensors normalized per batch, metrics,
                      logs, the epoch's checkpoint
    torchexp_bf16     torchexp with trainer.precision=bf16 and trainer.channels_last=true
                      (not the same arithmetic, so outside the ratios' goals)

The variants run interleaved in `--rounds` rounds after a short warm-up, each round in a
different order; figures are medians over rounds, and `median_of_round_ratios` compares
variants run back to back, which holds best when other work comes and goes. torchexp's epoch is timed from its first
iteration to the end of its checkpoint; `torchexp_iterations` counts the iterations only,
and `train_call` the whole Runner.train call (model build and checkpoint included).

    .venv/bin/python benchmarks/throughput.py
"""

import itertools
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402  (after the path set-up above)

from mnist_classifier.runner import MNISTClassifierRunner  # noqa: E402

BATCH_SIZE = 64  # pytorch/examples' default
LOG_INTERVAL = 10  # pytorch/examples' default: loss.item() every 10 batches
MEAN, STD = 0.1307, 0.3081
EXPERIMENT_NUMBERS = itertools.count(1)
LOADS: list[float] = []  # 1-minute load average after each timed run
GOALS = {"torchexp_vs_pytorch_examples": 1.4, "torchexp_vs_plain_in_memory": 0.97}


class TimedRunner(MNISTClassifierRunner):
    """The MNIST runner, recording when its epoch starts, when its iterations end and
    when its checkpoint is written."""

    def train_before_epoch_tasks(self, device):
        super().train_before_epoch_tasks(device)
        self.epoch_started = time.perf_counter()

    def train_epoch(self, epoch, log_period):
        metrics = super().train_epoch(epoch, log_period)
        self.iterations_seconds = time.perf_counter() - self.epoch_started
        return metrics

    def save_training_checkpoint(self, kind, epoch):
        started = time.perf_counter()
        super().save_training_checkpoint(kind, epoch)
        self.checkpoint_seconds = time.perf_counter() - started
        self.epoch_seconds = time.perf_counter() - self.epoch_started


def train_pytorch_examples(model, device, train_loader, optimizer, epoch):
    """pytorch/examples mnist/main.py's train(), without its print."""
    import torch.nn.functional as F

    model.train()
    for batch_idx, (data, target) in enumerate(train_loader):
        data, target = data.to(device), target.to(device)
        optimizer.zero_grad()
        output = model(data)
        loss = F.nll_loss(output, target)
        loss.backward()
        optimizer.step()
        if batch_idx % LOG_INTERVAL == 0:
            loss.item()


def run_pytorch_examples(args, samples: int) -> dict:
    import torch
    from torch.optim.lr_scheduler import StepLR
    from torchvision import datasets, transforms

    from mnist_classifier.model import CNN

    torch.manual_seed(args.seed)
    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((MEAN,), (STD,))])
    dataset = datasets.MNIST(args.data_path, train=True, download=False, transform=transform)
    train_loader = torch.utils.data.DataLoader(torch.utils.data.Subset(dataset, range(samples)), batch_size=BATCH_SIZE, shuffle=True)
    device = torch.device("cpu")
    model = CNN().to(device)
    optimizer = torch.optim.Adadelta(model.parameters(), lr=1.0)
    scheduler = StepLR(optimizer, step_size=1, gamma=0.7)
    started = time.perf_counter()
    train_pytorch_examples(model, device, train_loader, optimizer, 1)
    scheduler.step()
    return {"seconds": time.perf_counter() - started}


def run_plain_in_memory(args, samples: int) -> dict:
    import torch
    import torch.nn.functional as F
    from torch.optim.lr_scheduler import StepLR

    from mnist_classifier.data import read_mnist
    from mnist_classifier.model import CNN

    torch.manual_seed(args.seed)
    images, labels = read_mnist(args.data_path, train=True)
    images = images[:samples].unsqueeze(1).float().div(255).sub(MEAN).div(STD)
    labels = labels[:samples]
    model = CNN()
    optimizer = torch.optim.Adadelta(model.parameters(), lr=1.0)
    scheduler = StepLR(optimizer, step_size=1, gamma=0.7)
    started = time.perf_counter()
    model.train()
    order = torch.randperm(samples)
    for batch_idx, first in enumerate(range(0, samples, BATCH_SIZE)):
        indexes = order[first : first + BATCH_SIZE]
        data, target = images[indexes], labels[indexes]
        optimizer.zero_grad()
        output = model(data)
        loss = F.nll_loss(output, target)
        loss.backward()
        optimizer.step()
        if batch_idx % LOG_INTERVAL == 0:
            loss.item()
    scheduler.step()
    return {"seconds": time.perf_counter() - started}


def make_torchexp(overrides: list[str]):
    def run_torchexp(args, samples: int) -> dict:
        import torch

        name = f"throughput-{next(EXPERIMENT_NUMBERS)}"
        settings = ["data.val_split=0", f"data.batch_size={BATCH_SIZE}", *overrides]
        common.create_experiment(args.experiments_path, name, args.data_path, common.DEFAULT_CONFIG, args.seed, settings)
        runner = common.make_runner(args.experiments_path, name, args.data_path, TimedRunner, common.subset_data_class(samples))
        try:
            started = time.perf_counter()
            runner.train(torch.device("cpu"), max_epochs=1, log_period=100)
            call_seconds = time.perf_counter() - started
        finally:
            common.close_runner(runner)
        return {
            "seconds": runner.epoch_seconds,
            "iterations_seconds": runner.iterations_seconds,
            "checkpoint_seconds": runner.checkpoint_seconds,
            "train_call_seconds": call_seconds,
        }

    return run_torchexp


VARIANTS = {
    "pytorch_examples": run_pytorch_examples,
    "plain_in_memory": run_plain_in_memory,
    "torchexp": make_torchexp([]),
    "torchexp_bf16": make_torchexp(["trainer.precision=bf16", "trainer.channels_last=true"]),
}


def rate(samples: int, seconds: float) -> float:
    return round(samples / seconds, 1)


def main() -> None:
    parser = common.make_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=6_400, help="training images per epoch (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds; figures are medians (default: %(default)s)")
    parser.add_argument("--warmup-samples", type=int, default=1_280, help="images of the untimed warm-up epoch of each variant (default: %(default)s)")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated (default: %(default)s)")
    args = parser.parse_args()
    names = args.variants.split(",")
    unknown = sorted(set(names) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown variants {unknown}: choose among {list(VARIANTS)}")
    common.emit({"benchmark": "throughput", "machine": common.machine(), "samples": args.samples, "batch_size": BATCH_SIZE, "rounds": args.rounds})
    results: dict[str, list[dict]] = {name: [] for name in names}
    with tempfile.TemporaryDirectory(prefix="torchexp-throughput-") as args.experiments_path:
        for name in names:  # warm-up: imports, file caches, oneDNN kernels
            VARIANTS[name](args, args.warmup_samples)
        for round_index in range(args.rounds):
            shift = round_index % len(names)
            for name in names[shift:] + names[:shift]:
                figures = VARIANTS[name](args, args.samples)
                results[name].append(figures)
                record = {"benchmark": "throughput", "round": round_index + 1, "variant": name, "samples_per_s": rate(args.samples, figures["seconds"])}
                record.update({key: round(value, 3) for key, value in figures.items()})
                record["load_avg_1"] = round(os.getloadavg()[0], 2)
                LOADS.append(record["load_avg_1"])
                common.emit(record)
    summary = {"benchmark": "throughput", "summary": True, "samples": args.samples, "rounds": args.rounds}
    medians = {name: common.median([figures["seconds"] for figures in runs]) for name, runs in results.items()}
    summary["samples_per_s"] = {name: rate(args.samples, seconds) for name, seconds in medians.items()}
    for name in ("torchexp", "torchexp_bf16"):
        if name in results:
            runs = results[name]
            summary[f"{name}_iterations_samples_per_s"] = rate(args.samples, common.median([r["iterations_seconds"] for r in runs]))
            summary[f"{name}_checkpoint_seconds"] = round(common.median([r["checkpoint_seconds"] for r in runs]), 3)
            summary[f"{name}_train_call_samples_per_s"] = rate(args.samples, common.median([r["train_call_seconds"] for r in runs]))
    ratios, round_ratios = {}, {}
    for name in ("torchexp", "torchexp_bf16"):
        for reference in ("pytorch_examples", "plain_in_memory"):
            if name in medians and reference in medians:
                key = f"{name}_vs_{reference}"
                ratios[key] = round(medians[reference] / medians[name], 3)
                pairs = zip(results[reference], results[name])
                round_ratios[key] = round(common.median([ref["seconds"] / run["seconds"] for ref, run in pairs]), 3)
    summary["ratios"] = ratios
    summary["median_of_round_ratios"] = round_ratios
    summary["goals"] = {key: {"goal": goal, "met": ratios[key] >= goal} for key, goal in GOALS.items() if key in ratios}
    summary["load_avg_1_range"] = [min(LOADS), max(LOADS)] if LOADS else None
    summary["machine"] = common.machine()
    common.emit(summary)


if __name__ == "__main__":
    main()
