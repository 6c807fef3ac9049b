"""Images from files (examples/image_folder): torchexp's training throughput against a plain
PyTorch loop and Lightning's Trainer, and the cost of resuming late in an epoch.

MNIST is written as PNG files in class folders (the example's `prepare`, the first
`--limit` images of each split) unless `--images-path` names such a folder. Every variant
trains the example's model (`image_folder.model.build_model`, Adam) on the same `Dataset`
class (`image_folder.data.ImageFiles`: a PNG decoded with Pillow and augmented with a
random affine transform in `__getitem__`), the same training files, through the same
`DataLoader` settings (`ImageFolderData.load_loaders`: batch 64, shuffled, `--workers`
persistent workers):

    torchexp   the example's `train` command, as a user runs it (`--max-steps`, `--quiet`):
               torchexp rebuilds the DataLoader around batches it draws from (seed, epoch)
               and seeds each sample's draws in the workers
    plain      pytorch/examples' loop: zero_grad, forward, cross-entropy, backward, step,
               loss.item() every 10 batches
    lightning  a LightningModule with the same training step (loss and accuracy, logged),
               `Trainer(max_steps=...)` with its default logger, no progress bar

Every training process has `--threads` torch threads (1 by default; each worker has one):
with two workers on two cores, torch's default of a thread a core oversubscribes them, and
every variant trains 4 to 8 times slower, unevenly from run to run (`--threads 0` shows it).

(a) `train`: each run is a whole `python` process, timed inside from the start of its first
training step to the start of the step after the last counted (`--steps` steps, within the
first epoch: process start, imports, worker start-up before the first batch, and the end of
training are not timed). The variants alternate over `--rounds` rounds, each round in
another order; figures are medians, and the ratios torchexp/plain and torchexp/lightning
(goal: at least 1.0 each) are also given as the median of each round's ratios.

(b) resume: seconds from the start of a `train` process to its first training step, when
it resumes from a checkpoint at 10 % of an epoch and at 90 % (a budget in steps ending
there; goal: the same, as torchexp starts an epoch at a batch by index and never replays
the batches before it). `replay_estimate_s` is what reading the batches in between would
cost a resume that replays them: the seconds the example's train loader takes to give them,
from its creation, without training.

    .venv/bin/python benchmarks/image_folder.py    # ~3 min on 2 cores
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

BENCHMARKS = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, BENCHMARKS)

import common  # after the path set-up above

# This script bears the example package's name: `import image_folder` must not find it.
sys.path[:] = [path for path in sys.path if os.path.abspath(path or os.curdir) != BENCHMARKS]

EXAMPLE = os.path.join(common.REPO, "examples", "image_folder")
VARIANTS = ("torchexp", "plain", "lightning")
GOALS = {"torchexp_vs_plain": 1.0, "torchexp_vs_lightning": 1.0}
LOG_INTERVAL = 10  # pytorch/examples' default: loss.item() every 10 batches
RESUME_EXTRA_STEPS = 3  # a resumed run trains a few steps past its checkpoint, then stops


def child_environment(threads: int = 0) -> dict[str, str]:
    """The children's environment: the example's folder on PYTHONPATH, in case it is not
    installed, and `threads` torch threads in the training process (0: as this process has it)."""
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [EXAMPLE, os.environ.get("PYTHONPATH")]))}
    if threads:
        environment["OMP_NUM_THREADS"] = str(threads)
    return environment


def run_child(spec: dict[str, Any]) -> dict[str, Any]:
    """Run this script as a child process on `spec`; return what it printed last (JSON),
    with `started_wall`, the wall time just before the process was started.

    Raises:
        RuntimeError: the child failed; carries its output.
    """
    started = time.time()
    environment = child_environment(spec.get("threads", 0))
    done = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True, env=environment)
    if done.returncode != 0:
        raise RuntimeError(f"{spec['variant']} failed ({done.returncode}):\n{done.stdout}{done.stderr}")
    return {**json.loads(done.stdout.strip().splitlines()[-1]), "started_wall": started}


class StepClock:
    """The wall and monotonic times at which training steps start."""

    def __init__(self) -> None:
        self.starts: list[float] = []
        self.first_wall: float | None = None

    def tick(self) -> None:
        if self.first_wall is None:
            self.first_wall = time.time()
        self.starts.append(time.perf_counter())

    def report(self, counted: int) -> dict[str, Any]:
        """The first step's wall time, and the seconds of the first `counted` steps (from
        the first step's start to the start of the one after them)."""
        report: dict[str, Any] = {"first_step_wall": self.first_wall, "steps_started": len(self.starts)}
        if counted and len(self.starts) > counted:
            report["seconds"] = self.starts[counted] - self.starts[0]
        return report


def child_torchexp(spec: dict[str, Any]) -> dict[str, Any]:
    """The example's `train` command on an existing experiment, its Runner's steps timed."""
    import torchexp
    from image_folder.runner import ImageFolderRunner

    clock = StepClock()

    class TimedRunner(ImageFolderRunner):
        def train_step(self, batch: Any, device: Any) -> Any:
            clock.tick()
            return super().train_step(batch, device)

    cli = torchexp.make_cli("image_folder.data:ImageFolderData", TimedRunner)
    arguments = ["--experiments-path", spec["experiments"], "--data-path", spec["images"], "--experiment-name", spec["name"], "--quiet"]
    arguments += ["train", "--max-steps", str(spec["max_steps"]), "--num-workers", str(spec["workers"]), "--device", "cpu"]
    code = cli.main(arguments, prog_name="image_folder", standalone_mode=False)
    if code:  # torchexp printed its error's sentence
        raise SystemExit(code)
    return clock.report(spec.get("counted", 0))


def load_example_data(spec: dict[str, Any]) -> Any:
    """The example's Data of the reference experiment, its datasets and loaders loaded, as
    `train` loads them: the same files, Dataset class and DataLoader settings."""
    from image_folder.data import ImageFolderData
    from torchexp.config import Config

    folder = os.path.join(spec["experiments"], spec["name"])
    with open(os.path.join(folder, "config.json"), encoding="utf-8") as file:
        definition = json.load(file)
    with open(os.path.join(folder, "data.json"), encoding="utf-8") as file:
        state = json.load(file)
    data = ImageFolderData(Config(definition["config"]), definition["seed"])
    data.state = state
    data.load_datasets(spec["images"])
    data.load_loaders(spec["images"], spec["workers"])
    return data


def build_example_model(data: Any) -> Any:
    from image_folder.model import build_model

    height, width = data.state["image_size"]
    options = {name: data.get_conf("model", name) for name in ("channels", "hidden", "dropout")}
    return build_model(len(data.state["classes"]), height, width, **options)


def child_plain(spec: dict[str, Any]) -> dict[str, Any]:
    """pytorch/examples' training loop over the example's DataLoader."""
    import torch
    import torch.nn.functional as F

    torch.manual_seed(spec["seed"])
    data = load_example_data(spec)
    model = build_example_model(data)
    optimizer = torch.optim.Adam(model.parameters(), lr=data.get_conf("training", "lr"))
    clock = StepClock()
    model.train()
    for index, (images, labels) in enumerate(data.loaders["train"]):
        if index == spec["counted"] + 1:
            break
        clock.tick()
        optimizer.zero_grad()
        loss = F.cross_entropy(model(images), labels)
        loss.backward()
        optimizer.step()
        if index % LOG_INTERVAL == 0:
            loss.item()
    return clock.report(spec["counted"])


def child_lightning(spec: dict[str, Any]) -> dict[str, Any]:
    """A LightningModule with the example's step, trained by Lightning's Trainer over the
    example's DataLoader."""
    import lightning
    import torch
    import torch.nn.functional as F

    torch.manual_seed(spec["seed"])
    data = load_example_data(spec)
    clock = StepClock()

    class ImageModule(lightning.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.model = build_example_model(data)

        def training_step(self, batch: Any, index: int) -> Any:
            clock.tick()
            images, labels = batch
            logits = self.model(images)
            loss = F.cross_entropy(logits, labels)
            self.log_dict({"loss": loss, "accuracy": (logits.argmax(1) == labels).float().mean()})
            return loss

        def configure_optimizers(self) -> Any:
            return torch.optim.Adam(self.parameters(), lr=data.get_conf("training", "lr"))

    trainer = lightning.Trainer(
        max_steps=spec["counted"] + 1, accelerator="cpu", devices=1, default_root_dir=spec["lightning_root"],
        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False, num_sanity_val_steps=0,
    )  # fmt: skip
    trainer.fit(ImageModule(), train_dataloaders=data.loaders["train"])
    return clock.report(spec["counted"])


def child_replay(spec: dict[str, Any]) -> dict[str, Any]:
    """What resuming by replaying would cost: reading `spec["batches"]` batches of the
    example's train loader, from its creation, without training on them."""
    data = load_example_data(spec)
    started = time.perf_counter()
    for index, _ in enumerate(data.loaders["train"], start=1):
        if index == spec["batches"]:
            break
    return {"seconds": time.perf_counter() - started}


CHILDREN = {"torchexp": child_torchexp, "plain": child_plain, "lightning": child_lightning, "replay": child_replay}


def run_as_child(argument: str) -> None:
    """The body of a child process: run one variant, print its report as one JSON line."""
    spec = json.loads(argument)
    report = CHILDREN[spec["variant"]](spec)
    print(json.dumps(report), flush=True)


def prepare_images(data_path: str, images: str, limit: int) -> None:
    """Write the first `limit` images of each split of MNIST as PNG files under `images`."""
    common.time_process([sys.executable, "-m", "image_folder", "--data-path", images, "prepare", "--mnist", data_path, "--limit", str(limit)], child_environment())


def init_experiment(experiments: str, images: str, name: str, seed: int, *overrides: str) -> None:
    """Create an experiment of the example with the real `init` command (in this process)."""
    from click.testing import CliRunner

    from image_folder.__main__ import cli

    arguments = ["--experiments-path", experiments, "--data-path", images, "--experiment-name", name, "--quiet", "init", "--seed", str(seed)]
    for override in overrides:
        arguments += ["--set", override]
    result = CliRunner().invoke(cli, arguments)
    if result.exit_code != 0:
        raise RuntimeError(f"init of {name} failed ({result.exit_code}): {result.output}")


def read_batching(experiments: str, name: str) -> tuple[int, int]:
    """The experiment's training batch size and number of training batches an epoch."""
    with open(os.path.join(experiments, name, "data.json"), encoding="utf-8") as file:
        state = json.load(file)
    with open(os.path.join(experiments, name, "config.json"), encoding="utf-8") as file:
        batch_size = json.load(file)["config"]["data"]["batch_size"]
    return batch_size, -(-(state["train_images"] - len(state["validation_files"])) // batch_size)


def measure_throughput(args: Any, experiments: str, images: str) -> dict[str, Any]:
    """(a): every variant's samples/s, alternated over rounds; emit one line a run."""
    init_experiment(experiments, images, "reference", args.seed)
    batch_size, steps_per_epoch = read_batching(experiments, "reference")
    if args.steps + 1 > steps_per_epoch:
        raise SystemExit(f"--steps {args.steps} does not fit in the first epoch ({steps_per_epoch} batches): raise --limit or lower --steps")
    rounds = [run_round(args, experiments, images, batch_size, index) for index in range(args.rounds)]
    return {**summarize_rounds(rounds), "steps_per_epoch": steps_per_epoch}


def run_round(args: Any, experiments: str, images: str, batch_size: int, index: int) -> dict[str, float]:
    """Run every variant once, in the round's own order; return their samples/s."""
    base = {"experiments": experiments, "images": images, "workers": args.workers, "threads": args.threads, "seed": args.seed, "counted": args.steps}
    rates = {}
    for variant in VARIANTS[index % 3 :] + VARIANTS[: index % 3]:
        spec = {**base, "variant": variant, "name": "reference", "lightning_root": os.path.join(experiments, "lightning")}
        if variant == "torchexp":  # a fresh experiment each round, trained to the step after the counted ones
            spec.update(name=f"torchexp-{index}", max_steps=args.steps + 1)
            init_experiment(experiments, images, spec["name"], args.seed, f"trainer.max_steps={args.steps + 1}")
        seconds = run_child(spec)["seconds"]
        rates[variant] = args.steps * batch_size / seconds
        line = {"variant": variant, "round": index, "samples_per_s": round(rates[variant], 1), "seconds": round(seconds, 3), "steps": args.steps}
        common.emit({"benchmark": "image_folder", "part": "train", **line, "load_avg_1": round(os.getloadavg()[0], 2)})
    return rates


def summarize_rounds(rounds: list[dict[str, float]]) -> dict[str, Any]:
    """Medians of each variant's samples/s, torchexp's ratios to the others (of the medians,
    and the median of each round's), and whether they reach the goals."""
    medians = {variant: statistics.median(rates[variant] for rates in rounds) for variant in VARIANTS}
    ratios = {f"torchexp_vs_{other}": medians["torchexp"] / medians[other] for other in ("plain", "lightning")}
    by_round = {f"torchexp_vs_{other}": statistics.median(rates["torchexp"] / rates[other] for rates in rounds) for other in ("plain", "lightning")}
    return {
        "samples_per_s": {variant: round(value, 1) for variant, value in medians.items()},
        "ratios": {name: round(value, 3) for name, value in ratios.items()},
        "median_of_round_ratios": {name: round(value, 3) for name, value in by_round.items()},
        "goals": {name: ratios[name] >= goal for name, goal in GOALS.items()},
    }


def measure_resume(args: Any, experiments: str, images: str) -> dict[str, Any]:
    """(b): seconds from a train process's start to its first step, resuming at 10 % and at
    90 % of an epoch, alternated over rounds; emit one line a run."""
    _, steps_per_epoch = read_batching(experiments, "reference")
    points = {"10%": max(1, round(steps_per_epoch * 0.1)), "90%": round(steps_per_epoch * 0.9)}
    spec = {"variant": "torchexp", "experiments": experiments, "images": images, "workers": args.workers, "threads": args.threads}
    for label, step in points.items():  # the experiments every resume copies, trained to their point
        init_experiment(experiments, images, f"resume-{label[:-1]}", args.seed, f"trainer.max_steps={step}")
        run_child({**spec, "name": f"resume-{label[:-1]}", "max_steps": step})
    seconds: dict[str, list[float]] = {label: [] for label in points}
    for index in range(args.rounds):
        for label in (("10%", "90%") if index % 2 == 0 else ("90%", "10%")):
            seconds[label].append(time_resume(spec, f"resume-{label[:-1]}", points[label], index))
            common.emit({"benchmark": "image_folder", "part": "resume", "at": label, "step": points[label], "round": index, "seconds_to_first_step": round(seconds[label][-1], 3)})
    medians = {label: statistics.median(values) for label, values in seconds.items()}
    replay = run_child({**spec, "variant": "replay", "name": "reference", "batches": points["90%"] - points["10%"]})
    return {
        "resume_steps": points,
        "seconds_to_first_step": {label: round(value, 3) for label, value in medians.items()},
        "ratio_90_vs_10": round(medians["90%"] / medians["10%"], 3),
        "replay_estimate_s": round(replay["seconds"], 3),
    }


def time_resume(spec: dict[str, Any], template: str, step: int, index: int) -> float:
    """Seconds from the start of a `train` process resuming from a fresh copy of experiment
    `template` (its checkpoint at `step`) to its first training step."""
    copy = f"{template}-run{index}"  # each run resumes from the same checkpoint
    shutil.copytree(os.path.join(spec["experiments"], template), os.path.join(spec["experiments"], copy))
    report = run_child({**spec, "name": copy, "max_steps": step + RESUME_EXTRA_STEPS})
    return report["first_step_wall"] - report["started_wall"]


def main() -> None:
    parser = common.make_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--images-path", help="an image folder (train/<class>/*.png, test/<class>/*.png) to use as it is (default: MNIST written as PNG files from --data-path into a temporary folder)")
    parser.add_argument("--limit", type=int, default=12000, help="images of each split written from MNIST (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=150, help="training steps timed in each run, within the first epoch (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of every variant (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader worker processes (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of every training process, 0 for torch's default of one a core (default: %(default)s)")
    parser.add_argument("--child", help=argparse.SUPPRESS)  # a variant's process: its spec as JSON
    args = parser.parse_args()
    if args.child:
        run_as_child(args.child)
        return
    if EXAMPLE not in sys.path:
        sys.path.append(EXAMPLE)
    common.emit({"benchmark": "image_folder", "machine": common.machine(), "limit": args.limit, "steps": args.steps, "rounds": args.rounds, "workers": args.workers, "threads": args.threads})
    with tempfile.TemporaryDirectory(prefix="torchexp-image-folder-") as folder:
        images = args.images_path or os.path.join(folder, "images")
        if not args.images_path:
            prepare_images(args.data_path, images, args.limit)
        experiments = os.path.join(folder, "experiments")
        train = measure_throughput(args, experiments, images)
        resume = measure_resume(args, experiments, images)
    common.emit({"benchmark": "image_folder", "summary": True, "train": train, "resume": resume, "machine": common.machine()})


if __name__ == "__main__":
    main()
