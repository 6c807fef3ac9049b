"""The default configuration's first epoch, as a whole process, against pytorch/examples.

Each round runs, in alternating order, the reference (a whole process of pytorch/examples'
mnist/main.py: one epoch over 48,000 training images with its per-image transforms and
DataLoader, then its 10,000-image test pass; benchmarks/reference_mnist.py) and, for each
variant, `init` of config.default.json (not timed) then `train --max-epochs 1` timed from
`python` to exit: the same 48,000 images, then validation on the 12,000 held out, the
checkpoint, the logs. The ratio is reference seconds / train seconds; the goal for the
default is at least 1.4.

Variants change what the default's arithmetic leaves free to change: the memory format
(channels-last), torch.compile, OpenMP's thread settings and glibc's allocator settings.

    .venv/bin/python benchmarks/default_epoch.py --rounds 3
    .venv/bin/python benchmarks/default_epoch.py --variants default,channels_last,compile
"""

import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # after the path set-up above

from torchexp.memory import TRIM_THRESHOLD_BYTES

# name: (config overrides, environment variables)
VARIANTS = {
    "default": ([], {}),
    "channels_last": (["trainer.channels_last=true"], {}),
    "fp32_channels_first": (["trainer.channels_last=false"], {}),
    "compile": (["trainer.compile=true"], {}),
    "omp_passive": ([], {"OMP_WAIT_POLICY": "PASSIVE"}),
    # glibc's thresholds as keep_freed_memory set them before it turned mmap off: blocks
    # above 32 MiB (a validation batch of 1,000 images) are mapped afresh every time.
    "mmap_above_32mib": ([], {"MALLOC_MMAP_THRESHOLD_": str(32 * 2**20), "MALLOC_TRIM_THRESHOLD_": str(TRIM_THRESHOLD_BYTES)}),
}
GOAL = 1.4


def run_variant(name: str, round_index: int, args, experiments_path: str) -> float:
    """init (not timed) then `train --max-epochs 1` timed; return its wall seconds."""
    overrides, env = VARIANTS[name]
    experiment = f"{name}-{round_index}"
    settings = [value for override in overrides for value in ("--set", override)]
    init = ["init", "--config-path", common.DEFAULT_CONFIG, "--schema-path", common.SCHEMA, "--seed", str(args.seed), *settings]
    common.time_process(common.cli_command(experiments_path, experiment, args.data_path, *init))
    command = common.cli_command(experiments_path, experiment, args.data_path, "train", "--max-epochs", "1", "--device", "cpu")
    seconds, _ = common.time_process(command, env={**os.environ, **env})
    return round(seconds, 3)


def main() -> None:
    parser = common.make_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="rounds, alternating the order (default: %(default)s)")
    parser.add_argument("--variants", default="default", help=f"comma-separated, among {', '.join(VARIANTS)} (default: %(default)s)")
    args = parser.parse_args()
    names = args.variants.split(",")
    unknown = sorted(set(names) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown variants {unknown}: choose among {list(VARIANTS)}")
    common.emit({"benchmark": "default_epoch", "machine": common.machine(), "variants": names})
    seconds: dict[str, list[float]] = {name: [] for name in ["reference", *names]}
    ratios: dict[str, list[float]] = {name: [] for name in names}
    with tempfile.TemporaryDirectory(prefix="torchexp-default-epoch-") as experiments_path:
        for round_index in range(args.rounds):
            order = ["reference", *names]
            order = order if round_index % 2 == 0 else order[::-1]
            timed = {}
            for name in order:
                timed[name] = common.run_reference(args.data_path)["seconds"] if name == "reference" else run_variant(name, round_index, args, experiments_path)
                seconds[name].append(timed[name])
            for name in names:
                ratios[name].append(round(timed["reference"] / timed[name], 3))
            common.emit({"benchmark": "default_epoch", "round": round_index + 1, "seconds": timed,
                         "ratios": {name: ratios[name][-1] for name in names}, "load_avg_1": round(os.getloadavg()[0], 2)})  # fmt: skip
    median_ratios = {name: common.median(values) for name, values in ratios.items()}
    common.emit(
        {
            "benchmark": "default_epoch", "summary": True, "rounds": args.rounds,
            "median_seconds": {name: common.median(values) for name, values in seconds.items()},
            "median_of_round_ratios": median_ratios,
            "goal": {"ratio_at_least": GOAL, "met": {name: ratio >= GOAL for name, ratio in median_ratios.items()}},
            "machine": common.machine(),
        }  # fmt: skip
    )


if __name__ == "__main__":
    main()
