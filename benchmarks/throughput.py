"""Training throughput (samples/s) of one epoch: torchexp against two plain PyTorch loops.

Variants, all with pytorch/examples' MNIST CNN, Adadelta (lr 1), StepLR (gamma 0.7),
batch 64, fp32, the same seed and the same first `--samples` training images:

    pytorch_examples  the loop of pytorch/examples mnist/main.py: torchvision's MNIST with
                      ToTensor + Normalize per image, a DataLoader (num_workers 0, as
                      that script uses on the CPU), loss.item() every 10 batches
    plain_in_memory   the same loop fed by slicing one normalized float tensor held in memory
    torchexp          `init` (config.default.json, data.val_split=0) then torchexp.loop.train for one
                      epoch, as `train` runs it: uint8 tensors normalized per batch, metrics,
                      logs, the epoch's checkpoint
    torchexp_returning_memory
                      torchexp with trainer.keep_freed_memory=false: glibc returns freed
                      activations to the kernel and faults them back in every step
    torchexp_channels_last
                      torchexp with trainer.channels_last=true (same arithmetic)
    torchexp_compile  torchexp with trainer.compile=true, two epochs: figures of the second,
                      and the first epoch's extra seconds as the compile cost; the summary
                      projects a 10-epoch run of 60,000 images with and without compiling
    torchexp_bf16     torchexp with trainer.precision=bf16 and trainer.channels_last=true
                      (not the same arithmetic, so outside the ratios' goals)

Each run is a fresh Python process, as a user's run would be: no variant inherits another's
imports, caches or memory allocator state (which, with glibc, changes epoch times by up to
15 %). The variants run interleaved in `--rounds` rounds, each round in a different order;
figures are medians over rounds, and `median_of_round_ratios` compares variants run back
to back, which holds best when other work comes and goes. Process start, imports and data
loading are not timed. torchexp's epoch is timed from its first
iteration to the end of its checkpoint; `torchexp_iterations` counts the iterations only,
and `train_call` the whole torchexp.loop.train call (model build and checkpoint included).

    .venv/bin/python benchmarks/throughput.py
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # after the path set-up above

from mnist_classifier.runner import MNISTClassifierRunner

BATCH_SIZE = 64  # pytorch/examples' default
LOG_INTERVAL = 10  # pytorch/examples' default: loss.item() every 10 batches
MEAN, STD = 0.1307, 0.3081
LOADS: list[float] = []  # 1-minute load average after each timed run
FULL_EPOCH = 60_000  # MNIST's training images
TORCHEXP_VARIANTS = ("torchexp", "torchexp_returning_memory", "torchexp_channels_last", "torchexp_compile", "torchexp_bf16")
RUN_EPOCHS = 10  # torch.compile is judged over a default run's length
GOALS = {"torchexp_vs_pytorch_examples": 1.4, "torchexp_vs_plain_in_memory": 0.97}


class TimedRunner(MNISTClassifierRunner):
    """The MNIST runner, recording for each epoch (in `epochs`) when it starts, when its
    iterations end, and when its checkpoint starts and ends, from the hooks around them:
    the variants train without a validation set, so the epoch's log follows its last
    iteration; the checkpoint is written between train_after_epoch_tasks (and the
    scheduler's step) and train_early_stopping."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.epochs: list[dict[str, float]] = []

    def train_before_epoch_tasks(self, device):
        super().train_before_epoch_tasks(device)
        self.epoch_started = time.perf_counter()

    def train_epoch_log(self, epoch, train, validation, seconds):
        self.iterations_ended = time.perf_counter()
        super().train_epoch_log(epoch, train, validation, seconds)

    def train_after_epoch_tasks(self, device):
        super().train_after_epoch_tasks(device)
        self.checkpoint_started = time.perf_counter()

    def train_early_stopping(self):
        ended = time.perf_counter()
        self.epochs.append({
            "seconds": ended - self.epoch_started,
            "iterations_seconds": self.iterations_ended - self.epoch_started,
            "epoch_end_seconds": self.checkpoint_started - self.iterations_ended,
            "checkpoint_seconds": ended - self.checkpoint_started,
        })
        return super().train_early_stopping()


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


def make_torchexp(overrides: list[str], epochs: int = 1):
    """A torchexp variant; the figures are its last epoch's, `first_epoch_seconds` holds the
    first's (with epochs=2, a one-off cost such as compiling shows as their difference),
    and `train_call_seconds` the whole torchexp.loop.train call over every epoch."""

    def run_torchexp(args, samples: int) -> dict:
        import torch
        from torchexp import loop

        name = f"throughput-{os.getpid()}"
        settings = ["data.val_split=0", f"data.batch_size={BATCH_SIZE}", *overrides]
        common.create_experiment(args.experiments_path, name, args.data_path, common.DEFAULT_CONFIG, args.seed, settings)
        runner = common.make_runner(args.experiments_path, name, args.data_path, TimedRunner, common.subset_data_class(samples))
        try:
            started = time.perf_counter()
            loop.train(runner, torch.device("cpu"), epochs, log_period=100)
            call_seconds = time.perf_counter() - started
        finally:
            common.close_runner(runner)
        return {**runner.epochs[-1], "first_epoch_seconds": runner.epochs[0]["seconds"], "train_call_seconds": call_seconds, "epochs": epochs}

    return run_torchexp


VARIANTS = {
    "pytorch_examples": run_pytorch_examples,
    "plain_in_memory": run_plain_in_memory,
    "torchexp": make_torchexp([]),
    "torchexp_returning_memory": make_torchexp(["trainer.keep_freed_memory=false"]),
    "torchexp_channels_last": make_torchexp(["trainer.channels_last=true"]),
    "torchexp_compile": make_torchexp(["trainer.compile=true"], epochs=2),
    "torchexp_bf16": make_torchexp(["trainer.precision=bf16", "trainer.channels_last=true"]),
}


def rate(samples: int, seconds: float) -> float:
    return round(samples / seconds, 1)


def run_child(name: str, args) -> dict:
    """Run one variant in a fresh interpreter; return its figures."""
    command = [sys.executable, os.path.abspath(__file__), "--child", name, "--samples", str(args.samples)]
    command += ["--data-path", args.data_path, "--seed", str(args.seed), "--experiments-path", args.experiments_path]
    result = subprocess.run(command, check=False, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"variant {name} failed ({result.returncode}):\n{result.stderr}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def child_main(name: str, args) -> None:
    """Time one variant in this process and print its figures as the last line."""
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    figures = VARIANTS[name](args, args.samples)
    figures["minor_page_faults"] = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
    print(json.dumps(figures))


def summarize(results: dict[str, list[dict]], args) -> dict:
    """Medians over rounds, torchexp's parts, and the ratios against both plain loops.

    Three bases: the timed epoch of `--samples` images; the iterations alone; and a full
    epoch of MNIST's 60,000 images, projected from the iterations' rate plus torchexp's
    fixed end-of-epoch costs (logs, checkpoint), which a short epoch overweights.
    """
    summary = {"benchmark": "throughput", "summary": True, "samples": args.samples, "rounds": args.rounds}

    def median_of(name: str, key: str) -> float:
        return common.median([figures[key] for figures in results[name]])

    seconds = {name: median_of(name, "seconds") for name in results}
    iterations, fixed = dict(seconds), dict.fromkeys(results, 0.0)  # the plain loops have no parts
    for name in TORCHEXP_VARIANTS:
        if name in results:
            iterations[name] = median_of(name, "iterations_seconds")
            fixed[name] = median_of(name, "epoch_end_seconds") + median_of(name, "checkpoint_seconds")
    full = {name: iterations[name] * FULL_EPOCH / args.samples + fixed[name] for name in results}
    summary["samples_per_s"] = {name: rate(args.samples, value) for name, value in seconds.items()}
    summary["iterations_samples_per_s"] = {name: rate(args.samples, value) for name, value in iterations.items()}
    summary["projected_60000_epoch_samples_per_s"] = {name: rate(FULL_EPOCH, value) for name, value in full.items()}
    for name in TORCHEXP_VARIANTS:
        if name in results:
            summary[f"{name}_fixed_seconds"] = {key: round(median_of(name, key), 3) for key in ("epoch_end_seconds", "checkpoint_seconds")}
            summary[f"{name}_train_call_samples_per_s"] = rate(args.samples * median_of(name, "epochs"), median_of(name, "train_call_seconds"))
    if "torchexp_compile" in results and "torchexp" in results:
        # One-off compile cost (first epoch minus the second) plus RUN_EPOCHS full epochs at each rate.
        compile_cost = median_of("torchexp_compile", "first_epoch_seconds") - seconds["torchexp_compile"]
        run = {"torchexp": RUN_EPOCHS * full["torchexp"], "torchexp_compile": compile_cost + RUN_EPOCHS * full["torchexp_compile"]}
        summary["compile"] = {
            "compile_seconds": round(compile_cost, 1),
            f"projected_{RUN_EPOCHS}_epoch_run_seconds": {name: round(value, 1) for name, value in run.items()},
            "speedup": round(run["torchexp"] / run["torchexp_compile"], 3),
        }
    summary["minor_page_faults"] = {name: int(median_of(name, "minor_page_faults")) for name in results}
    ratios: dict[str, dict[str, float]] = {"epoch": {}, "iterations": {}, "projected_60000_epoch": {}, "median_of_round_ratios": {}}
    for name in TORCHEXP_VARIANTS:
        for reference in ("pytorch_examples", "plain_in_memory"):
            if name in results and reference in results:
                key = f"{name}_vs_{reference}"
                ratios["epoch"][key] = round(seconds[reference] / seconds[name], 3)
                ratios["iterations"][key] = round(iterations[reference] / iterations[name], 3)
                ratios["projected_60000_epoch"][key] = round(full[reference] / full[name], 3)
                pairs = zip(results[reference], results[name])
                ratios["median_of_round_ratios"][key] = round(common.median([ref["seconds"] / run["seconds"] for ref, run in pairs]), 3)
    summary["ratios"] = ratios
    summary["goals"] = {
        key: {"goal": goal, **{basis: ratios[basis][key] >= goal for basis in ("epoch", "projected_60000_epoch")}}
        for key, goal in GOALS.items()
        if key in ratios["epoch"]
    }
    summary["load_avg_1_range"] = [min(LOADS), max(LOADS)] if LOADS else None
    summary["machine"] = common.machine()
    return summary


def main() -> None:
    parser = common.make_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=12_800, help="training images per epoch (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; figures are medians (default: %(default)s)")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated (default: %(default)s)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--experiments-path", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child_main(args.child, args)
        return
    names = args.variants.split(",")
    unknown = sorted(set(names) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown variants {unknown}: choose among {list(VARIANTS)}")
    header = {"benchmark": "throughput", "machine": common.machine(), "samples": args.samples, "batch_size": BATCH_SIZE}
    common.emit({**header, "rounds": args.rounds})
    results: dict[str, list[dict]] = {name: [] for name in names}
    with tempfile.TemporaryDirectory(prefix="torchexp-throughput-") as args.experiments_path:
        for round_index in range(args.rounds):
            shift = round_index % len(names)
            for name in names[shift:] + names[:shift]:
                figures = run_child(name, args)
                results[name].append(figures)
                record = {"benchmark": "throughput", "round": round_index + 1, "variant": name}
                record["samples_per_s"] = rate(args.samples, figures["seconds"])
                record.update({key: round(value, 3) for key, value in figures.items()})
                record["load_avg_1"] = round(os.getloadavg()[0], 2)
                LOADS.append(record["load_avg_1"])
                common.emit(record)
    common.emit(summarize(results, args))


if __name__ == "__main__":
    main()
