"""Hyperparameter search on real MNIST: the best accuracy within a time budget, and ASHA
against random search with the full budget.

Every search is one process of the MNIST classifier's command line, `search`, as a user
types it; the best trial (lowest validation loss, at its best epoch) is then tested with
`test` on the 10,000 test images.

- `--part budget`: configs/search.json (fast_cnn, 9-epoch one-cycle Adam; lr, batch size
  and augmentation searched) with TPE and ASHA (rungs at 1, 3 and 9 epochs), no new work
  started after --budget-minutes less --reserve-seconds (default 5 % of the budget; the
  trial slice in progress finishes), then the test. Goal: at least 99.4 % test accuracy
  within the budget, search and test included (the plain Optuna MNIST project we compare
  with reports 99.28 %).
- `--part compare`: the same space trained for --compare-epochs epochs (its one-cycle
  schedule set to match), --compare-trials trials from the random sampler with the
  same seed, so that both searches draw the same configurations: once with `--pruner none`
  (every trial trains every epoch) and once with ASHA (rungs 1, 3, 9 for 9 epochs, eta 3).
  Goal: ASHA's best test accuracy within 0.1 points of random search's, with at most a
  third of its epochs.
- `--part samplers`: TPE+ASHA against random+ASHA, each with --sampler-seeds seeds, on the
  same space and a fixed small budget (--sampler-trials trials, rungs at 1, 3 and 9 epochs);
  the best validation loss of each search (its best COMPLETE trial) and each sampler's
  mean. Goal: TPE's mean lower (better) than random search's.

Every line is JSON; the first and the summaries carry the machine (CPU model and flags).
`--train-size N` trains on the first N training images (a copy in the temporary folder),
for a short run that shows the script works.

    .venv/bin/python benchmarks/search.py --part budget --budget-minutes 20   # ~21 min
    .venv/bin/python benchmarks/search.py --part compare                      # ~13 min
    .venv/bin/python benchmarks/search.py --part samplers --train-size 10000  # ~15 min
    .venv/bin/python benchmarks/search.py --budget-minutes 1 --compare-trials 3 --compare-epochs 3 --train-size 2000
"""

import os
import shutil
import sys
import tempfile
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # after the path set-up above

SPACE = os.path.join(common.REPO, "configs", "search.json")
# Of the budget, what is kept for the trial slice in progress when the search stops
# starting work (at most the six epochs of a promotion from 3 to 9, ~45 s) and the test (~5 s).
RESERVE_FRACTION = 0.05
# MNIST's IDX files: (name's dimension tag, bytes of one item, bytes of the header).
IDX_FILES = {"images": ("idx3", 28 * 28, 16), "labels": ("idx1", 1, 8)}


def write_subset(data_path: str, folder: str, train_size: int) -> str:
    """Write MNIST with its first `train_size` training images (and the whole test set)
    under folder/MNIST/raw; return folder, a --data-path."""
    source = os.path.join(data_path, "MNIST", "raw")
    target = os.path.join(folder, "MNIST", "raw")
    os.makedirs(target)
    for kind, (tag, item_bytes, header_bytes) in IDX_FILES.items():
        shutil.copy(os.path.join(source, f"t10k-{kind}-{tag}-ubyte"), target)
        with open(os.path.join(source, f"train-{kind}-{tag}-ubyte"), "rb") as file:
            header = bytearray(file.read(header_bytes))
            body = file.read(train_size * item_bytes)
        header[4:8] = (len(body) // item_bytes).to_bytes(4, "big")  # the number of items
        with open(os.path.join(target, f"train-{kind}-{tag}-ubyte"), "wb") as file:
            file.write(bytes(header) + body)
    return folder


def run_search(experiments: str, study: str, data_path: str, options: list[str], test: bool = True) -> dict[str, Any]:
    """Run one `search` process on a new study, test its best trial at its best epoch
    (unless not `test`), and return the figures: trials by state, epochs trained, seconds,
    the best trial's validation loss and test accuracy."""
    import optuna

    from torchexp.search.asha import is_paused
    from torchexp.search.storage import open_journal
    from torchexp.search.study import StudyFolder
    from torchexp.search.trial import best_epoch, trained_epochs

    search_seconds, _ = common.time_process(common.cli_command(experiments, study, data_path, "search", "--device", "cpu", *options))
    folder = StudyFolder(experiments, study)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    loaded = optuna.load_study(study_name=study, storage=open_journal(folder.path))
    trials = loaded.get_trials()
    states: dict[str, int] = {}
    for trial in trials:
        state = "paused" if is_paused(trial) else trial.state.name.lower()
        states[state] = states.get(state, 0) + 1
    figures = {
        "trials": len(trials),
        "states": states,
        "epochs_trained": sum(trained_epochs(folder.trial_experiment(trial.number)) for trial in trials),
        "search_seconds": round(search_seconds, 1),
    }
    if not any(trial.state.name == "COMPLETE" for trial in trials):
        return {**figures, "best": None, "seconds": figures["search_seconds"]}
    best = loaded.best_trial
    epoch = best_epoch(best.intermediate_values, loaded.direction.name.lower())
    figures["best"] = {"trial": best.number, "parameters": best.params, "epoch": epoch, "validation_loss": round(best.value, 5)}
    figures["seconds"] = search_seconds
    if test:
        name = folder.trial_name(best.number)
        test_seconds, _ = common.time_process(common.cli_command(folder.path, name, data_path, "test", "--epoch", str(epoch), "--device", "cpu"))
        figures["best"]["test_accuracy"] = common.read_test_accuracy(folder.path, name)
        figures["seconds"] += test_seconds
    figures["seconds"] = round(figures["seconds"], 1)
    return figures


def best_accuracy(figures: dict[str, Any]) -> float | None:
    return figures["best"]["test_accuracy"] if figures["best"] else None


def run_budget(args, experiments: str, data_path: str) -> None:
    """(a) One ASHA search stopped by the budget, then its best trial's test."""
    budget = args.budget_minutes * 60
    reserve = budget * RESERVE_FRACTION if args.reserve_seconds is None else args.reserve_seconds
    timeout = max(budget - reserve, 0)
    options = ["--space", args.space, "--trials", str(args.trials), "--seed", str(args.seed), "--timeout", f"{timeout:g}"]
    options += ["--sampler", "tpe", "--pruner", "asha", "--min-epochs", "1", "--reduction-factor", "3"]
    figures = run_search(experiments, "budget", data_path, options)
    accuracy = best_accuracy(figures)
    common.emit(
        {
            "benchmark": "search", "part": "budget", "summary": True, "space": os.path.relpath(args.space, common.REPO),
            "budget_seconds": budget, "timeout_seconds": timeout, "train_size": args.train_size, **figures,
            "best_test_accuracy": accuracy,
            "goal": {"accuracy_at_least": args.goal_accuracy, "within_seconds": budget,
                     "met": accuracy is not None and accuracy >= args.goal_accuracy and figures["seconds"] <= budget},
            "machine": common.machine(),
        }  # fmt: skip
    )


def run_compare(args, experiments: str, data_path: str) -> None:
    """(b) The same random configurations, trained fully and under ASHA."""
    epochs = str(args.compare_epochs)
    options = ["--space", args.space, "--trials", str(args.compare_trials), "--seed", str(args.seed), "--sampler", "random"]
    options += ["--max-epochs", epochs, "--set", f"trainer.max_epochs={epochs}", "--set", f"training.schedule_epochs={epochs}"]
    arms = {}
    for arm, pruner in (("random", ["--pruner", "none"]), ("asha", ["--pruner", "asha", "--min-epochs", "1", "--reduction-factor", str(args.reduction_factor)])):
        arms[arm] = run_search(experiments, f"compare-{arm}", data_path, [*options, *pruner])
        common.emit({"benchmark": "search", "part": "compare", "arm": arm, **arms[arm], "load_avg_1": round(os.getloadavg()[0], 2)})
    random_accuracy, asha_accuracy = best_accuracy(arms["random"]), best_accuracy(arms["asha"])
    epoch_ratio = arms["asha"]["epochs_trained"] / arms["random"]["epochs_trained"]
    gap = None if random_accuracy is None or asha_accuracy is None else round(100 * (random_accuracy - asha_accuracy), 3)
    same = bool(arms["random"]["best"] and arms["asha"]["best"] and arms["random"]["best"]["parameters"] == arms["asha"]["best"]["parameters"])
    common.emit(
        {
            "benchmark": "search", "part": "compare", "summary": True, "space": os.path.relpath(args.space, common.REPO),
            "trials": args.compare_trials, "epochs_per_trial": args.compare_epochs, "train_size": args.train_size,
            "random_best_test_accuracy": random_accuracy, "asha_best_test_accuracy": asha_accuracy,
            "accuracy_gap_points": gap, "same_best_configuration": same,
            "random_epochs": arms["random"]["epochs_trained"], "asha_epochs": arms["asha"]["epochs_trained"],
            "epoch_ratio": round(epoch_ratio, 3),
            "random_seconds": arms["random"]["seconds"], "asha_seconds": arms["asha"]["seconds"],
            "goal": {"gap_points_at_most": 0.1, "epoch_ratio_at_most": round(1 / 3, 3),
                     "met": gap is not None and gap <= 0.1 and epoch_ratio <= 1 / 3},
            "machine": common.machine(),
        }  # fmt: skip
    )


def run_samplers(args, experiments: str, data_path: str) -> None:
    """(c) TPE and random search under ASHA, the same budget, several seeds each."""
    options = ["--space", args.space, "--trials", str(args.sampler_trials), "--pruner", "asha", "--min-epochs", "1", "--reduction-factor", "3"]
    losses: dict[str, list[float | None]] = {"tpe": [], "random": []}
    for seed in range(args.seed, args.seed + args.sampler_seeds):
        for sampler in losses:
            figures = run_search(experiments, f"samplers-{sampler}-{seed}", data_path, [*options, "--sampler", sampler, "--seed", str(seed)], test=False)
            losses[sampler].append(figures["best"]["validation_loss"] if figures["best"] else None)
            common.emit({"benchmark": "search", "part": "samplers", "sampler": sampler, "seed": seed, **figures, "load_avg_1": round(os.getloadavg()[0], 2)})
    means = {sampler: round(sum(values) / len(values), 5) if None not in values else None for sampler, values in losses.items()}
    common.emit(
        {
            "benchmark": "search", "part": "samplers", "summary": True, "space": os.path.relpath(args.space, common.REPO),
            "trials": args.sampler_trials, "train_size": args.train_size, "best_validation_loss": losses,
            "mean_best_validation_loss": means,
            "goal": {"tpe_mean_lower": True, "met": None not in means.values() and means["tpe"] < means["random"]},
            "machine": common.machine(),
        }  # fmt: skip
    )


def main() -> None:
    parser = common.make_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=("budget", "compare", "samplers", "both"), default="both", help="which benchmark to run; both is budget and compare (default: %(default)s)")
    parser.add_argument("--space", default=SPACE, help="search space file (default: configs/search.json)")
    parser.add_argument("--budget-minutes", type=float, default=20, help="budget: minutes of search and test (default: %(default)s)")
    parser.add_argument("--reserve-seconds", type=float, help="budget: seconds kept for the last trial slice and the test (default: 5 %% of the budget, 60 s of 20 min)")
    parser.add_argument("--trials", type=int, default=1000, help="budget: trials at most; the budget ends the search first (default: %(default)s)")
    parser.add_argument("--goal-accuracy", type=float, default=0.994, help="budget: test accuracy to reach (default: %(default)s)")
    parser.add_argument("--compare-trials", type=int, default=9, help="compare: trials of each search (default: %(default)s)")
    parser.add_argument("--compare-epochs", type=int, default=9, help="compare: epochs of a fully trained trial (default: %(default)s)")
    parser.add_argument("--reduction-factor", type=int, default=3, help="compare: ASHA's eta (default: %(default)s)")
    parser.add_argument("--sampler-trials", type=int, default=20, help="samplers: trials of each search (default: %(default)s)")
    parser.add_argument("--sampler-seeds", type=int, default=3, help="samplers: searches per sampler, seeds --seed, --seed + 1, ... (default: %(default)s)")
    parser.add_argument("--train-size", type=int, help="train on the first N training images (default: all 60,000)")
    args = parser.parse_args()
    args.space = os.path.abspath(args.space)
    common.emit({"benchmark": "search", "part": args.part, "machine": common.machine()})
    with tempfile.TemporaryDirectory(prefix="torchexp-search-") as folder:
        data_path = write_subset(args.data_path, os.path.join(folder, "data"), args.train_size) if args.train_size else args.data_path
        experiments = os.path.join(folder, "experiments")
        started = time.perf_counter()
        if args.part in ("budget", "both"):
            run_budget(args, experiments, data_path)
        if args.part in ("compare", "both"):
            run_compare(args, experiments, data_path)
        if args.part == "samplers":
            run_samplers(args, experiments, data_path)
        common.emit({"benchmark": "search", "part": args.part, "wall_seconds": round(time.perf_counter() - started, 1)})


if __name__ == "__main__":
    main()
