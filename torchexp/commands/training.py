"""Commands that compute with torch: `train`, `test` and `create_release`."""

import click

from torchexp.commands.context import App, pass_app
from torchexp.commands.options import with_device, with_workers
from torchexp.mirror.hooks import check_registered_model, register_release_now
from torchexp.tracking import close_logger, make_logger
from torchexp.releases import choose_release_epoch, create_release as write_release
from torchexp.training import train_experiment


@click.command()
@click.option("--epoch", type=click.IntRange(min=1), help="Resume from this epoch's checkpoint.  [default: the furthest]")
@click.option(
    "--max-epochs",
    type=click.IntRange(min=1),
    help="Train until this many epochs are done.  [default: the config's trainer.max_epochs, 10 unless set]",
)
@click.option("--log-period", default=100, show_default=True, type=click.IntRange(min=1), help="Iterations between iteration logs.")
@click.option("--overwrite", is_flag=True, help="Allow --epoch to train over later checkpoints, deleting them (releases stay).")
@with_device
@with_workers
@pass_app
def train(app: App, epoch: int | None, max_epochs: int | None, log_period: int, overwrite: bool, device: str, num_workers: int) -> None:
    """Train, resuming from the furthest checkpoint (or --epoch).

    Under torchrun, each process trains one shard with DistributedDataParallel.
    """
    train_experiment(app.project, app.open_experiment(), device, num_workers, max_epochs, log_period, epoch, overwrite)


@click.command()
@click.option("--epoch", type=click.IntRange(min=1), help="Epoch whose weights to test.  [default: the latest]")
@click.option("--release", is_flag=True, help="Test the release checkpoint even when a standard one exists.")
@with_device
@with_workers
@pass_app
def test(app: App, epoch: int | None, release: bool, device: str, num_workers: int) -> None:
    """Test the weights of an epoch on the test set."""
    from torchexp.evaluation import evaluate_experiment

    evaluate_experiment(app.project, app.open_experiment(), epoch, release, device, num_workers)


@click.command("create_release")
@click.option(
    "--epoch",
    type=click.IntRange(min=1),
    help="Epoch to release.  [default: the lowest validation loss, or the latest without validation]",
)
@click.option(
    "--registered-model",
    help="With MLflow tracking on, register the release as a version of this model.  [default: PROJECT-EXPERIMENT, e.g. mnist_classifier-fast]",
)
@pass_app
def create_release(app: App, epoch: int | None, registered_model: str | None) -> None:
    """Write a release checkpoint: an epoch's weights and the metadata to use them.

    With MLflow tracking on, the release is also registered in MLflow's Model Registry from
    its ONNX export.
    """
    experiment = app.open_experiment()
    reason = "asked for"
    if epoch is None:
        epoch, reason = choose_release_epoch(experiment)
    tracking = app.project.tracking
    model_name = check_registered_model(tracking, experiment, epoch, registered_model)
    path = write_release(experiment, epoch, experiment.read_definition())
    logger = make_logger(experiment.name, experiment.log_path, app.verbosity)
    try:
        logger.info(f"released epoch {epoch} ({reason}) as {path}")
        if model_name is not None:
            register_release_now(tracking, app.project, experiment, epoch, model_name, logger)
    finally:
        close_logger(logger)
