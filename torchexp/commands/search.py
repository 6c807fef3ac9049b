"""The `search` command: a hyperparameter search on Optuna whose trials are experiments."""

import os
import sys

import click

from torchexp.commands.context import App, pass_app
from torchexp.commands.options import with_device, with_workers
from torchexp.errors import ConfigError


@click.command()
@click.option("--space", "space_path", help="Search space file (JSON): the config keys to search and their distributions.  [default: none; required to search]")
@click.option("--trials", type=click.IntRange(min=1), help="Trials the study is to have in all, counting earlier runs' (capped by a grid's size).  [default: none; required to search]")
@click.option("--max-epochs", type=click.IntRange(min=1), help="Epochs a trial trains at most.  [default: the space's trainer.max_epochs]")
@click.option("--timeout", type=click.FloatRange(min=0), help="Seconds after which no new work starts; the trial in progress finishes.  [default: none]")
@click.option("--sampler", type=click.Choice(["tpe", "random", "grid"]), default="tpe", show_default=True, help="How parameters are drawn; grid takes choices and int ranges.")
@click.option(
    "--pruner",
    type=click.Choice(["asha", "median", "none"]),
    default="asha",
    show_default=True,
    help="asha pauses trials at rungs and promotes the best to train on; median stops trials below the median; none trains every trial to --max-epochs.",
)
@click.option("--metric", default="validation.loss", show_default=True, help="What a trial is judged by: split.name of the epoch metrics.")
@click.option("--direction", type=click.Choice(["minimize", "maximize", "min", "max"]), default="minimize", show_default=True, help="Whether a lower or a higher metric is better.")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(min=0, max=2**63 - 1), help="Seed of every trial (one validation split for all) and of the sampler.")
@click.option("--storage", help="An Optuna database URL (postgresql://, mysql://, sqlite:///) shared by search processes on several machines.  [default: a journal file in the study folder]")
@click.option("--min-epochs", default=1, show_default=True, type=click.IntRange(min=1), help="asha: epochs of the first rung; median: epochs before a trial may be stopped.")
@click.option("--reduction-factor", default=3, show_default=True, type=click.IntRange(min=2), help="asha: rungs lie at min-epochs x factor^k, and each promotes its best 1/factor.")
@click.option("--startup-trials", default=5, show_default=True, type=click.IntRange(min=0), help="median: trials that complete before the pruner stops any.")
@click.option("--config-path", default="config.default.json", show_default=True, help="Base configuration when the space file names none.")
@click.option("--schema-path", default="config.schema.json", show_default=True, help="JSON schema of the configuration.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Fix a config value in every trial, e.g. model.name=mlp (repeatable).")
@click.option("--log-period", default=100, show_default=True, type=click.IntRange(min=1), help="Iterations between iteration logs.")
@with_device
@with_workers
@click.option("--status", is_flag=True, help="Print the study's trials and best trial, and train nothing.")
@click.option("--dashboard", is_flag=True, help="Serve optuna-dashboard on the study until Ctrl-C.")
@click.option("--host", default="127.0.0.1", show_default=True, help="--dashboard: address to listen on.")
@click.option("--port", default=8080, show_default=True, type=click.IntRange(1, 65535), help="--dashboard: port to listen on.")
@pass_app
def search(app: App, space_path: str | None, trials: int | None, status: bool, dashboard: bool, host: str, port: int, storage: str | None, **options) -> None:
    """Search hyperparameters: every trial is an experiment, STUDY/trial-NNNN.

    --experiment-name names the study, a folder under --experiments-path. Run the same
    command again, or on several machines at once with a shared --storage, to continue
    the study: an interrupted trial resumes from its checkpoint, and --trials counts the
    study's trials in all.
    """
    from torchexp.search.report import summarize
    from torchexp.search.run import SearchRequest, open_study, run_search

    if status or dashboard:
        folder, settings, optuna_storage, study = open_study(app.experiments_path, app.experiment_name, storage)
        if dashboard:
            from torchexp.search.dashboard import serve_dashboard

            serve_dashboard(optuna_storage, host, port, click.echo)
        else:
            click.echo(summarize(study, folder, settings, program_name()))
        return
    if space_path is None or trials is None:
        raise ConfigError("pass --space FILE and --trials N to run a search (or --status, --dashboard to look at one)")
    done = run_search(app.project, app.experiments_path, app.experiment_name, SearchRequest(space_path=space_path, trials=trials, storage=storage, **options))
    click.echo(summarize(done.study, done.folder, done.settings, program_name()))


def program_name() -> str:
    """How the user started this command line: `python -m mnist_classifier`, or its script's name."""
    name = click.get_current_context().find_root().info_name or "python -m your_project"
    return f"python -m {name}" if os.path.basename(sys.argv[0]) == "__main__.py" else name
