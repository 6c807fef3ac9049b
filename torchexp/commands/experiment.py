"""Commands that create an experiment and describe it: `init` and `info`."""

import json

import click

from torchexp import checkpoints
from torchexp.app import App, pass_app
from torchexp.config import build_config
from torchexp.tracking import format_metrics
from torchexp.training import init_experiment


@click.command()
@click.option("--config-path", show_default=True, help="Configuration file (JSON).")
@click.option("--schema-path", show_default=True, help="JSON schema of the configuration.")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(min=0, max=2**63 - 1), help="Seed of every random generator.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a config value, e.g. training.lr=0.5 (repeatable).")
@pass_app
def init(app: App, config_path: str, schema_path: str, seed: int, overrides: tuple[str, ...]) -> None:
    """Create an experiment from a validated configuration."""
    experiment = app.experiment()
    experiment.check_free()
    init_experiment(app, experiment, build_config(config_path, schema_path, list(overrides)), seed)


@click.command()
@pass_app
def info(app: App) -> None:
    """Show an experiment's configuration, seed and checkpoints."""
    experiment = app.open_experiment()
    record = experiment.read_record()
    click.echo(f"experiment: {experiment.name}\npath: {experiment.path}\nseed: {record.get('seed')}")
    click.echo("versions: " + ", ".join(f"{k} {v}" for k, v in record.get("versions", {}).items()))
    click.echo("config:\n" + json.dumps(record.get("config"), indent=2))
    found = checkpoints.list_checkpoints(experiment.checkpoints_path)
    click.echo(f"checkpoints: {len(found) or 'none'}")
    for found_info in found:
        click.echo("  " + describe_checkpoint(found_info))


def describe_checkpoint(info: checkpoints.CheckpointInfo) -> str:
    """One line of `info`: epoch, kind, size and key metrics."""
    if info.record is None:
        return f"epoch {info.epoch} {info.kind}: no record (unverifiable)"
    metrics = info.record.get("metrics", {})
    parts = [f"epoch {info.epoch} {info.kind}", f"{info.record.get('bytes', 0) / 1e6:.1f} MB"]
    if info.kind == "interrupt":
        parts.append(f"iteration {info.record.get('iteration')}")
    for split in ("train", "validation"):
        values = metrics.get(split) or {}
        if values:
            parts.append(split + " " + format_metrics({k: v for k, v in values.items() if isinstance(v, (int, float))}))
    return "; ".join(parts)
