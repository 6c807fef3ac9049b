"""Commands that compute with torch: `train`, `test` and `create_release`."""

import click

from torchexp.budget import unit_of
from torchexp.commands.context import App, pass_app
from torchexp.commands.options import (
    choose_point,
    with_device,
    with_point,
    with_workers,
)
from torchexp.errors import ConfigError
from torchexp.logs import close_logger, make_logger
from torchexp.mirror.hooks import check_registered_model
from torchexp.mirror.registry import remember_model_name
from torchexp.releases import choose_release_epoch
from torchexp.releases import create_release as write_release
from torchexp.trackers.base import RunInfo
from torchexp.trackers.fanout import Trackers
from torchexp.training import train_experiment


@click.command()
@with_point("Resume from this epoch's checkpoint.", "the furthest")
@click.option(
    "--max-epochs",
    type=click.IntRange(min=1),
    help="Train until this many epochs are done.  [default: the config's trainer.max_epochs, 10 unless set]",
)
@click.option(
    "--max-steps",
    type=click.IntRange(min=1),
    help="Train until this many optimizer steps are done, for an experiment trained by steps.  "
    "[default: the config's trainer.max_steps]",
)
@click.option(
    "--log-period",
    default=100,
    show_default=True,
    type=click.IntRange(min=1),
    help="Optimizer steps between iteration logs.",
)
@click.option(
    "--overwrite",
    is_flag=True,
    help="Allow --epoch (--step) to train over later checkpoints, deleting them (releases stay).",
)
@with_device
@with_workers
@pass_app
def train(
    app: App,
    epoch: int | None,
    step: int | None,
    max_epochs: int | None,
    max_steps: int | None,
    log_period: int,
    overwrite: bool,
    device: str,
    num_workers: int,
) -> None:
    """Train, resuming from the furthest checkpoint (or --epoch, or --step).

    Under torchrun, each process trains one shard with DistributedDataParallel.
    """
    if max_epochs is not None and max_steps is not None:
        raise ConfigError("--max-epochs and --max-steps cannot be combined: an experiment trains by one or the other")
    experiment = app.open_experiment()
    point = choose_point(experiment, epoch, step)
    train_experiment(
        app.project, experiment, device, num_workers, max_epochs, log_period, point, overwrite, max_steps=max_steps
    )


@click.command()
@with_point("Epoch whose weights to test.", "the latest")
@click.option("--release", is_flag=True, help="Test the release checkpoint even when a standard one exists.")
@with_device
@with_workers
@pass_app
def test(app: App, epoch: int | None, step: int | None, release: bool, device: str, num_workers: int) -> None:
    """Test the weights of an epoch (or a step) on the test set."""
    from torchexp.evaluation import evaluate_experiment

    experiment = app.open_experiment()
    evaluate_experiment(app.project, experiment, choose_point(experiment, epoch, step), release, device, num_workers)


@click.command("create_release")
@with_point("Epoch to release.", "the best by trainer.monitor (the lowest validation loss by default), else the latest")
@click.option(
    "--registered-model",
    help="With MLflow tracking on, register the release as a version of this model.  "
    "[default: PROJECT-EXPERIMENT, e.g. mnist_classifier-fast]",
)
@pass_app
def create_release(app: App, epoch: int | None, step: int | None, registered_model: str | None) -> None:
    """Write a release checkpoint: an epoch's (or a step's) weights and the metadata to use them.

    With MLflow tracking on, the release is also registered in MLflow's Model Registry, as a
    model that answers a client's instances as `serve` does.
    """
    experiment = app.open_experiment()
    epoch = choose_point(experiment, epoch, step)
    reason = "asked for"
    if epoch is None:
        epoch, reason = choose_release_epoch(experiment)
    model_name = check_registered_model(app.tracking, experiment, epoch, registered_model)
    definition = experiment.read_definition()
    path = write_release(experiment, epoch, definition)
    logger = make_logger(experiment.name, experiment.log_path, app.verbosity)
    trackers = Trackers()
    try:
        logger.info(f"released {unit_of(definition['config'])} {epoch} ({reason}) as {path}")
        if model_name is not None:
            remember_model_name(experiment, epoch, model_name)
        trackers = Trackers.open(app.project.trackers, RunInfo(experiment, definition, "create_release"), logger)
        trackers.send("log_release", epoch, path)
    finally:
        trackers.close()
        close_logger(logger)
