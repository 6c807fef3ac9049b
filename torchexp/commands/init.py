"""The `init` command: create an experiment from a validated configuration."""

import click

from torchexp.commands.context import App, pass_app
from torchexp.config import build_config
from torchexp.creation import init_experiment


@click.command()
@click.option("--config-path", show_default=True, help="Configuration file (JSON).")
@click.option("--schema-path", show_default=True, help="JSON schema of the configuration.")
@click.option(
    "--seed",
    default=0,
    show_default=True,
    type=click.IntRange(min=0, max=2**63 - 1),
    help="Seed of every random generator.",
)
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a config value, e.g. training.lr=0.5 (repeatable).",
)
@pass_app
def init(app: App, config_path: str, schema_path: str, seed: int, overrides: tuple[str, ...]) -> None:
    """Create an experiment from a validated configuration."""
    experiment = app.experiment()
    experiment.check_free()
    init_experiment(app.project, experiment, build_config(config_path, schema_path, list(overrides)), seed)
