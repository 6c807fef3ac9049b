"""`sync`: send the MLflow server what the experiment folders hold and it lacks."""

import click

from torchexp.commands.context import App, pass_app
from torchexp.logs import close_logger, make_logger


@click.command()
@click.option(
    "--storage",
    help="Database URL of a study kept in a database, as given to search --storage.  [default: the study's journal]",
)
@pass_app
def sync(app: App, storage: str | None) -> None:
    """Send MLflow what it lacks: runs trained while no server was reachable, epochs logged
    while it was down, tests, studies and releases.

    Syncs --experiment-name (an experiment or a study), or without it every experiment and
    study under --experiments-path. Running it twice sends nothing the second time.
    """
    from torchexp.mirror.sync import sync_folders

    logger = make_logger("sync", None, app.verbosity)
    try:
        for line in sync_folders(app.tracking, app.project, app.experiments_path, app.experiment_name, storage, logger):
            click.echo(line)
    finally:
        close_logger(logger)
