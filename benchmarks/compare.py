"""Seconds `compare` takes over 100 experiments, as a whole process and as a library call.

The experiments are real ones, as the framework writes them: one experiment is created by
`init` (the default config, `trainer.max_epochs=10`), trained 10 epochs by `torchexp.loop.train`
on the first --train-samples images (10 iteration lines per epoch in metrics.jsonl, where
a real default epoch of 48,000 images logs 7 at `train --log-period 100`), released at its
best epoch and tested. It is then copied 100 times as a learning-rate sweep would leave
them: each copy gets its own seed and training settings (optimizer, lr, gamma, batch size)
in config.json and its own metric values (the seed's, scaled) in metrics.jsonl and its test
results; one in ten stops after 4 to 8 epochs (interrupted: its later checkpoints and lines
removed), and one in ten more is not tested. Checkpoint files are hard links to the seed's,
with their records beside them: `compare` reads their names, never their contents.

Then, interleaved over --repeats rounds after one untimed run of each, fresh processes:

    torchexp compare                       the console script, text table
    torchexp compare --json                the console script, JSON
    python -m mnist_classifier compare     the project's command line
    python -c pass                         the interpreter's own start, for scale
    python -c 'import torch'               what compare does not pay, for scale

and, in one more process, the library call (`build_table` then `format_text` or
`format_json`) --repeats times after its imports. An untimed run of each command under
`python -X importtime` tells whether it imported torch. The goal (issue 9): the whole
`torchexp compare` process answers in under 0.5 s, without importing torch.

    .venv/bin/python benchmarks/compare.py [--experiments 100] [--repeats 7]
"""

import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # after the path set-up above

SEED_NAME = "seed"
EPOCHS = 10
GOAL_SECONDS = 0.5
OPTIMIZERS = (("adadelta", 1.0), ("adam", 1e-3), ("sgd", 0.05))  # with a typical lr of each


def make_seed_experiment(folder: str, args) -> str:
    """Create, train, release and test one real experiment; return its path."""
    import torch
    from torchexp import loop

    from mnist_classifier.runner import MNISTClassifierRunner
    from torchexp.releases import choose_release_epoch, create_release

    overrides = [f"trainer.max_epochs={EPOCHS}", "data.val_split=0.05"]
    common.create_experiment(folder, SEED_NAME, args.data_path, common.DEFAULT_CONFIG, args.seed, overrides)
    runner = common.make_runner(folder, SEED_NAME, args.data_path, MNISTClassifierRunner, common.subset_data_class(args.train_samples))
    try:
        loop.train(runner, torch.device("cpu"), EPOCHS, log_period=1)
    finally:
        common.close_runner(runner)
    epoch, _ = choose_release_epoch(runner.experiment)
    create_release(runner.experiment, epoch, runner.experiment.read_definition())
    common.time_process(common.cli_command(folder, SEED_NAME, args.data_path, "test"))
    return os.path.join(folder, SEED_NAME)


def copy_experiment(seed_path: str, path: str) -> None:
    """Copy an experiment, hard-linking its checkpoint files (and TensorBoard events)."""

    def link_or_copy(source: str, target: str) -> None:
        if source.endswith(".pt") or os.sep + "tensorboard" + os.sep in source:
            os.link(source, target)
        else:
            shutil.copy2(source, target)

    shutil.copytree(seed_path, path, copy_function=link_or_copy)


def vary_experiment(path: str, index: int) -> None:
    """Give a copy its own seed, settings and metric values; cut or untest some copies."""
    # Imported here, not at the top: the --library child of this file times torchexp's imports.
    from torchexp.files import write_json_atomic

    rng = random.Random(index)
    config_path = os.path.join(path, "config.json")
    with open(config_path, encoding="utf-8") as file:
        record = json.load(file)
    optimizer, lr = OPTIMIZERS[index % len(OPTIMIZERS)]
    record["seed"] = index
    record["config"]["training"].update(optimizer=optimizer, lr=round(lr * rng.choice((0.3, 0.5, 1, 2, 3)), 6), gamma=rng.choice((0.5, 0.7, 0.9)))
    record["config"]["data"]["batch_size"] = rng.choice((32, 64, 128))
    write_json_atomic(config_path, record)
    scale = rng.uniform(0.8, 1.3)  # losses and error rates of this copy, relative to the seed's
    interrupted = index % 10 == 3
    last_epoch = 4 + (index // 10) % 5 if interrupted else EPOCHS  # interrupted copies stop at epochs 4 to 8
    rewrite_metrics(os.path.join(path, "metrics.jsonl"), scale, last_epoch)
    results = os.path.join(path, "results")
    if interrupted or index % 10 == 6:
        shutil.rmtree(results)
    else:
        for name in os.listdir(results):
            report_path = os.path.join(results, name)
            with open(report_path, encoding="utf-8") as file:
                report = json.load(file)
            report["results"] = scale_metrics(report["results"], scale)
            write_json_atomic(report_path, report)
    if interrupted:
        remove_checkpoints_after(os.path.join(path, "checkpoints"), last_epoch)


def rewrite_metrics(path: str, scale: float, last_epoch: int) -> None:
    """Scale the metric values of metrics.jsonl and drop the lines after `last_epoch`,
    keeping the lines' format (Tracker.log_scalars': `json.dumps`, "kind" first)."""
    with open(path, encoding="utf-8") as file:
        entries = [json.loads(line) for line in file]
    lines = [
        json.dumps({**entry, "metrics": scale_metrics(entry["metrics"], scale)}) + "\n"
        for entry in entries
        if entry.get("epoch", 0) <= last_epoch
    ]
    with open(path, "w", encoding="utf-8") as file:
        file.writelines(lines)


def scale_metrics(metrics: dict, scale: float) -> dict:
    """Losses times `scale`; accuracies with their error rate times `scale`; the rest as is."""
    scaled = {}
    for name, value in metrics.items():
        if isinstance(value, float) and "loss" in name:
            value *= scale
        elif isinstance(value, float) and "accuracy" in name:
            value = max(0.0, 1 - (1 - value) * scale)
        scaled[name] = value
    return scaled


def remove_checkpoints_after(folder: str, epoch: int) -> None:
    """Remove the checkpoints (and records) of later epochs, of every kind."""
    from torchexp.checkpoints import parse_filename

    for name in os.listdir(folder):
        parsed = parse_filename(name.removesuffix(".json"))
        if parsed is not None and parsed[0] > epoch:
            os.remove(os.path.join(folder, name))


def make_experiments(folder: str, args) -> str:
    """Write `args.experiments` experiments into `folder/experiments`; return its path."""
    seed_path = make_seed_experiment(os.path.join(folder, "seed"), args)
    experiments = os.path.join(folder, "experiments")
    os.makedirs(experiments)
    for index in range(args.experiments):
        path = os.path.join(experiments, f"sweep-{index:03d}")
        copy_experiment(seed_path, path)
        vary_experiment(path, index)
    return experiments


def console_script() -> list[str]:
    """The `torchexp` console script, run by this Python (as its shebang would)."""
    script = os.path.join(os.path.dirname(sys.executable), "torchexp")
    if os.path.isfile(script):
        return [sys.executable, script]
    return [sys.executable, "-c", "from torchexp.cli import main; main()"]


def imports_torch(command: list[str]) -> bool:
    """Whether a Python command imports torch, from an untimed run under -X importtime."""
    done = subprocess.run([command[0], "-X", "importtime", *command[1:]], capture_output=True, text=True, check=True, cwd=common.REPO)
    modules = [line.rpartition("|")[2].strip() for line in done.stderr.splitlines() if line.startswith("import time:")]
    return any(module == "torch" or module.startswith("torch.") for module in modules)


def time_library(experiments: str, repeats: int) -> None:
    """In this (fresh) process: time the imports, then `build_table` with each format."""
    started = time.perf_counter()
    from torchexp.compare import build_table
    from torchexp.tables import format_json, format_text
    from torchexp.experiments import Experiments

    import_seconds = time.perf_counter() - started
    times: dict[str, list[float]] = {"build_table+format_text": [], "build_table+format_json": []}
    for _ in range(repeats):
        for label, formatter in (("build_table+format_text", format_text), ("build_table+format_json", format_json)):
            began = time.perf_counter()
            table = build_table(Experiments(experiments))
            formatter(table)
            times[label].append(time.perf_counter() - began)
    rows = len(table.summaries)
    print(json.dumps({"import_s": import_seconds, "times": times, "rows": rows, "torch_imported": "torch" in sys.modules}), flush=True)


def main() -> None:
    parser = common.make_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--experiments", type=int, default=100, help="experiments to compare (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=7, help="timed runs of each command (default: %(default)s)")
    parser.add_argument("--train-samples", type=int, default=640, help="images of each epoch of the seed experiment (default: %(default)s)")
    args = parser.parse_args()
    common.emit({"benchmark": "compare", "machine": common.machine(), "experiments": args.experiments, "repeats": args.repeats})
    with tempfile.TemporaryDirectory(prefix="torchexp-compare-") as folder:
        experiments = make_experiments(folder, args)
        torchexp = console_script()
        commands = {
            "torchexp compare": [*torchexp, "compare", "--experiments-path", experiments],
            "torchexp compare --json": [*torchexp, "compare", "--experiments-path", experiments, "--json"],
            "python -m mnist_classifier compare": [sys.executable, "-m", "mnist_classifier", "--experiments-path", experiments, "compare"],
            "python -c pass": [sys.executable, "-c", "pass"],
            "python -c 'import torch'": [sys.executable, "-c", "import torch"],
        }
        for command in commands.values():  # untimed: file caches warm for every command alike
            common.time_process(command)
        torch_imported = {label: imports_torch(command) for label, command in commands.items() if "compare" in label}
        times: dict[str, list[float]] = {label: [] for label in commands}
        for _ in range(args.repeats):
            for label, command in commands.items():
                times[label].append(common.time_process(command)[0])
        library_command = [sys.executable, os.path.abspath(__file__), "--library", experiments, "--repeats", str(args.repeats)]
        library = json.loads(common.time_process(library_command)[1].strip().splitlines()[-1])
    medians = {label: round(common.median(values), 3) for label, values in times.items()}
    for label, values in times.items():
        line = {"benchmark": "compare", "command": label, "median_s": medians[label], "min_s": round(min(values), 3)}
        line["runs_s"] = [round(value, 3) for value in values]
        if label in torch_imported:
            line["imports_torch"] = torch_imported[label]
        common.emit(line)
    for label, values in library["times"].items():
        common.emit({"benchmark": "compare", "library": label, "median_s": round(common.median(values), 4), "min_s": round(min(values), 4)})
    whole = medians["torchexp compare"]
    common.emit(
        {
            "benchmark": "compare",
            "summary": True,
            "rows": library["rows"],
            "goal": f"torchexp compare over {args.experiments} experiments < {GOAL_SECONDS} s, without importing torch",
            "torchexp_compare_median_s": whole,
            "met": whole < GOAL_SECONDS and not any(torch_imported.values()),
            "imports_torch": torch_imported,
            "library_imports_s": round(library["import_s"], 3),
            "library_torch_imported": library["torch_imported"],
            "vs_python_start": round(whole / medians["python -c pass"], 2),
            "vs_import_torch": round(whole / medians["python -c 'import torch'"], 3),
            "load_avg_1_5_15": [round(value, 2) for value in os.getloadavg()],
        }
    )


def dispatch() -> None:
    """The same file is the benchmark and the process that times the library call."""
    if "--library" in sys.argv:
        time_library(sys.argv[sys.argv.index("--library") + 1], int(sys.argv[sys.argv.index("--repeats") + 1]))
    else:
        main()


if __name__ == "__main__":
    dispatch()
