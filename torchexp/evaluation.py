"""Evaluation: validation after each epoch, and `test` with the weights of an epoch.

Both switch the model to eval mode and turn gradients off themselves, and divide summed
metrics by the number of samples. A test's results are saved to results/, logged to
TensorBoard and metrics.jsonl, and a square `confusion_matrix` among them is drawn.
"""

import os
from typing import Any

import torch

from torchexp import checkpoints
from torchexp.folder import Experiment
from torchexp.hooks import project_errors
from torchexp.hparams import write_hparams
from torchexp.loaders import position_loader, prepare_loaders
from torchexp.logs import close_logger, format_metrics, progress_bar
from torchexp.memory import keep_freed_memory_when_configured
from torchexp.precision import Precision
from torchexp.project import Project
from torchexp.releases import find_weights
from torchexp.results import write_report
from torchexp.rng import preserving_globals, seed_everything
from torchexp.steps import MetricSums, as_metrics, batch_size_of, prepare_batch
from torchexp.trackers.base import RunInfo
from torchexp.train_loader import length_of, reading
from torchexp.training_state import load_weights


def validate(runner: Any, precision: Precision) -> dict[str, float]:
    """Average `validation_step`'s metrics over the validation set's samples (every rank's),
    or over the weights it returns; {} without a validation set.

    Whatever validation draws from the global generators (a DataLoader's workers draw their
    seed when they start, which persistent workers do once per process, not once per
    validation) is given back, so that training after it draws what it would have drawn
    without it, in a resumed run as in an uninterrupted one.
    """
    with preserving_globals():
        return average_validation(runner, precision)


def average_validation(runner: Any, precision: Precision) -> dict[str, float]:
    """The body of `validate`."""
    loader = runner.data.loaders.get("validation")
    total = length_of(loader)
    if loader is None or total == 0:
        return {}
    position_loader(loader, 1, 0)
    sums = MetricSums()
    channels_last = runner.get_conf("trainer", "channels_last")
    runner.model.eval()
    with torch.no_grad(), precision.autocast():
        for batch in progress_bar(reading(loader, "validation"), total, "validation", runner.quiet):
            output = runner.validation_step(prepare_batch(batch, channels_last), runner.device)
            metrics = as_metrics(output, runner, "validation_step")
            weight = metrics.pop("weight", None)
            sums.add(metrics, batch_size_of(batch) if weight is None else weight)
    runner.model.train()
    return sums.average(runner.world, runner.device)


def run_test(runner: Any, device: torch.device, epoch: int, release: bool) -> dict[str, Any]:
    """Load the weights of `epoch` (standard or release checkpoint), run the project's
    `test`, and save, log and return its results.

    Args:
        runner: the project's Runner, its Data loaded.
        device: where to evaluate.
        epoch: the epoch whose weights to test.
        release: use the release checkpoint even when a standard one exists.
    """
    kinds = ("release",) if release else ("standard", "release")
    checkpoint = checkpoints.find_checkpoint(runner.experiment.checkpoints_path, epoch, kinds)
    seed_everything(runner.seed)
    load_weights(runner, device, checkpoint.load(weights_only=True), checkpoint.name)
    prepare_loaders(runner.data.loaders, device, runner.world.rank, 1)
    keep_freed_memory_when_configured(
        runner.get_conf("trainer", "keep_freed_memory"), runner.logger, runner.get_conf("trainer", "strategy")
    )
    with torch.no_grad():
        results = runner.test(epoch, device)
    report = {"epoch": epoch, "checkpoint": checkpoint.name, "results": results}
    path = write_report(runner.experiment, epoch, checkpoint.kind, report)
    numbers = {key: value for key, value in results.items() if isinstance(value, (int, float))}
    runner.tracker.log_test(epoch, checkpoint.name, results)
    runner.tracker.log_artifact(path, f"results/{os.path.basename(path)}")
    if is_square(results.get("confusion_matrix")):
        log_confusion_matrix(runner, epoch, results["confusion_matrix"])
    runner.tracker.flush()
    runner.logger.info(f"test of {checkpoint.name}: {format_metrics(numbers)}")
    write_hparams(runner, test_metrics=tuple(numbers))
    return results


def is_square(matrix: Any) -> bool:
    """Whether `matrix` is a non-empty square list of lists of counts."""
    return (
        isinstance(matrix, list)
        and len(matrix) > 0
        and all(
            isinstance(row, list) and len(row) == len(matrix) and all(isinstance(count, int) for count in row)
            for row in matrix
        )
    )


def log_confusion_matrix(runner: Any, epoch: int, matrix: list[list[int]]) -> None:
    """Show a test's confusion matrix (rows: true class, columns: predicted) in the log, as a
    table in TensorBoard's text tab and, with matplotlib (`torchexp[plots]`), as an image."""
    classes = range(len(matrix))
    header = "| true \\ predicted | " + " | ".join(map(str, classes)) + " |"
    rows = [f"| {true} | " + " | ".join(map(str, row)) + " |" for true, row in enumerate(matrix)]
    runner.tracker.writer.add_text(
        "test/confusion_matrix", "\n".join([header, "|" + "---|" * (len(matrix) + 1), *rows]), epoch
    )
    runner.logger.info("confusion matrix (rows: true class, columns: predicted):")
    for true, row in enumerate(matrix):
        runner.logger.info(f"  {true}: " + " ".join(f"{count:5d}" for count in row))
    try:
        from torchexp.plots import confusion_matrix_figure

        figure = confusion_matrix_figure(matrix, [str(index) for index in classes])
    except ImportError:
        runner.logger.debug("no confusion-matrix image: matplotlib is not installed (pip install 'torchexp[plots]')")
        return
    runner.tracker.writer.add_figure("test/confusion_matrix_image", figure, epoch)


def evaluate_experiment(
    project: Project, experiment: Experiment, epoch: int | None, release: bool, device: str, num_workers: int
) -> dict:
    """Test the weights of `epoch` (default: the latest) on the test set; return the results."""
    from torchexp.devices import resolve_device

    epoch = epoch or find_weights(experiment, "release" if release else None).epoch
    torch_device = resolve_device(device)
    definition = experiment.read_definition()
    runner = project.make_runner(experiment, definition, num_workers)
    try:
        runner.tracker.open(project.trackers, RunInfo(experiment, definition, "test"), runner.logger)
        with project_errors(runner.logger):
            return run_test(runner, torch_device, epoch, release)
    finally:
        runner.tracker.close()
        close_logger(runner.logger)
