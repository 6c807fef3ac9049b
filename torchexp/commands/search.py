"""The `search` command: a hyperparameter search on Optuna whose trials are experiments.

Its options are declared in `torchexp.search.options`; this module turns each declared
field into a click option, and adds the options that look at a study (--status,
--dashboard) instead of running one.
"""

import dataclasses
import os
import sys
from collections.abc import Callable
from typing import Any

import click

from torchexp.commands.context import App, pass_app
from torchexp.commands.options import with_device, with_workers
from torchexp.extras import require_extra
from torchexp.search.options import OPTION, Option, RunOptions, StudyOptions, declared_fields, split_options, value_type

# Options that other commands share carry their click declaration from there.
SHARED_OPTIONS = {"device": with_device, "num_workers": with_workers}


def make_option(field: dataclasses.Field) -> Callable:
    """The click option of a declared field: its flag, type, range or choices, default and help."""
    if field.name in SHARED_OPTIONS:
        return SHARED_OPTIONS[field.name]
    spec: Option = field.metadata[OPTION]
    kind = value_type(field)
    details: dict[str, Any] = {"default": field.default, "help": spec.help, "metavar": spec.metavar}
    if spec.choices:
        details["type"] = click.Choice(spec.choices)
    elif kind in (int, float) and (spec.minimum is not None or spec.maximum is not None):
        # An int option declares int bounds; Option's one annotation says int | float for both kinds.
        details["type"] = (click.IntRange if kind is int else click.FloatRange)(spec.minimum, spec.maximum)  # type: ignore[arg-type]
    elif kind is not tuple:
        details["type"] = kind
    if kind is tuple:
        details["multiple"] = True
    else:
        # A default that is not a value is said in words; a repeatable option has none.
        details["show_default"] = spec.default_text or True
    return click.option(spec.flag, field.name, **details)


def with_search_options(command: Callable) -> Callable:
    """Add every declared option of a search run and of a study, in declaration order."""
    for field in reversed([*declared_fields(RunOptions), *declared_fields(StudyOptions)]):
        command = make_option(field)(command)
    return command


@click.command()
@with_search_options
@click.option("--status", is_flag=True, help="Print the study's trials and best trial, and train nothing.")
@click.option("--dashboard", is_flag=True, help="Serve optuna-dashboard on the study until Ctrl-C.")
@click.option("--host", default="127.0.0.1", show_default=True, help="--dashboard: address to listen on.")
@click.option(
    "--port", default=8080, show_default=True, type=click.IntRange(1, 65535), help="--dashboard: port to listen on."
)
@pass_app
def search(app: App, status: bool, dashboard: bool, host: str, port: int, **values: Any) -> None:
    """Search hyperparameters: every trial is an experiment, STUDY/trial-NNNN.

    --experiment-name names the study, a folder under --experiments-path. Run the same
    command again, or on several machines at once with a shared --storage, to continue
    the study: an interrupted trial resumes from its checkpoint, and --trials counts the
    study's trials in all. The options from --metric on define the study: its first run
    records them, and a later run must give the same; it checks --metric on one batch of
    the project's step before it writes anything. When every trial of the study failed,
    search exits with code 11 after printing the table.
    """
    require_extra("search", "search")
    from torchexp.search.report import check_some_trial_succeeded, summarize
    from torchexp.search.run import open_study, run_search

    options, run = split_options(values)
    if status or dashboard:
        folder, settings, optuna_storage, study = open_study(app.experiments_path, app.experiment_name, run.storage)
        if dashboard:
            from torchexp.search.dashboard import serve_dashboard

            serve_dashboard(optuna_storage, host, port, click.echo)
        else:
            click.echo(summarize(study, folder, settings, program_name()))
        return
    done = run_search(app.project, app.experiments_path, app.experiment_name, options, run)
    click.echo(summarize(done.study, done.folder, done.settings, program_name()))
    check_some_trial_succeeded(done.study, done.settings)


def program_name() -> str:
    """How the user started this command line: `python -m mnist_classifier`, or its script's name."""
    name = click.get_current_context().find_root().info_name or "python -m your_project"
    return f"python -m {name}" if os.path.basename(sys.argv[0]) == "__main__.py" else name
