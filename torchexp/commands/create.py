"""The `create` command: a new project that trains, tests and passes its own tests at once."""

import os

import click

from torchexp.scaffold import TASKS, create_project


@click.command()
@click.option("--name", required=True, help="The project's name, also its package's: a Python identifier, e.g. digits.")
@click.option(
    "--path", "folder", default=".", show_default=True, help="Existing folder to create the project folder NAME in."
)
@click.option(
    "--task",
    type=click.Choice(list(TASKS)),
    default=next(iter(TASKS)),
    show_default=True,
    help="What the project predicts: a class (cross-entropy, accuracy) or numbers (squared error, MAE, RMSE, R²).",
)
def create(name: str, folder: str, task: str) -> None:
    """Write a new project: a package with its data, model, runner, configuration and tests,
    on a small synthetic data set, ready to init, train and test."""
    target, files = create_project(name, folder, task)
    click.echo(f"created {task} project {name} in {target}:")
    for path in files:
        click.echo(f"  {path}")
    relative = os.path.relpath(target)
    click.echo("next:")
    click.echo(f"  cd {os.path.abspath(target) if relative.startswith('..') else relative}")
    click.echo(
        "  make install    # pip install -e '.[test]': the project and its tests' needs, importable from anywhere"
    )
    click.echo(f"  python -m {name} --experiment-name first init")
    click.echo(f"  python -m {name} --experiment-name first train")
    click.echo(f"  python -m {name} --experiment-name first test")
    click.echo("  make test")
