"""Start-up time of the command line, against `import torch` for scale.

Each command runs as a fresh process (this Python, the repository as working folder),
interleaved with the others, `--repeats` times; the figures are the median and the minimum
wall seconds. `info` runs on an experiment with one checkpoint, made before timing.

    .venv/bin/python benchmarks/startup.py
"""

import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # after the path set-up above


def make_experiment(experiments_path: str, data_path: str, seed: int) -> str:
    """Create an experiment with one (small) trained epoch, so `info` lists a checkpoint."""
    import torch
    from torchexp import loop

    from mnist_classifier.runner import MNISTClassifierRunner

    name = "startup"
    common.create_experiment(experiments_path, name, data_path, common.DEFAULT_CONFIG, seed, ["data.val_split=0"])
    runner = common.make_runner(experiments_path, name, data_path, MNISTClassifierRunner, common.subset_data_class(640))
    try:
        loop.train(runner, torch.device("cpu"), 1, log_period=100)
    finally:
        common.close_runner(runner)
    return name


def time_command(command: list[str]) -> float:
    """Wall seconds of one run; the command must succeed."""
    started = time.perf_counter()
    subprocess.run(command, cwd=common.REPO, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return time.perf_counter() - started


def main() -> None:
    parser = common.make_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=7, help="runs of each command (default: %(default)s)")
    args = parser.parse_args()
    python = sys.executable
    common.emit({"benchmark": "startup", "machine": common.machine(), "repeats": args.repeats})
    with tempfile.TemporaryDirectory(prefix="torchexp-startup-") as experiments_path:
        name = make_experiment(experiments_path, args.data_path, args.seed)
        cli = [python, "-m", "mnist_classifier", "--experiments-path", experiments_path]
        commands = {
            "python -c pass": [python, "-c", "pass"],
            "python -c 'import torch'": [python, "-c", "import torch"],
            "python -m mnist_classifier --help": [python, "-m", "mnist_classifier", "--help"],
            "python -m mnist_classifier info": cli + ["--experiment-name", name, "info"],
        }
        times: dict[str, list[float]] = {label: [] for label in commands}
        for label, command in commands.items():  # warm the file cache
            time_command(command)
        for _ in range(args.repeats):
            for label, command in commands.items():
                times[label].append(time_command(command))
    for label, values in times.items():
        common.emit(
            {
                "benchmark": "startup",
                "command": label,
                "median_s": round(common.median(values), 3),
                "min_s": round(min(values), 3),
                "runs_s": [round(value, 3) for value in values],
            }
        )
    torch_median = common.median(times["python -c 'import torch'"])
    common.emit(
        {
            "benchmark": "startup",
            "summary": True,
            "vs_import_torch": {label: round(common.median(values) / torch_median, 3) for label, values in times.items()},
            "machine": common.machine(),
        }
    )


if __name__ == "__main__":
    main()
