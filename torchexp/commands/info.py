"""The `info` command: an experiment's configuration, seed and checkpoints."""

import json

import click

from torchexp import checkpoints
from torchexp.commands.context import App, pass_app
from torchexp.tracking import format_metrics


@click.command()
@pass_app
def info(app: App) -> None:
    """Show an experiment's configuration, seed and checkpoints."""
    experiment = app.open_experiment()
    definition = experiment.read_definition()
    click.echo(f"experiment: {experiment.name}\npath: {experiment.path}\nseed: {definition.get('seed')}")
    click.echo("versions: " + ", ".join(f"{k} {v}" for k, v in definition.get("versions", {}).items()))
    click.echo("config:\n" + json.dumps(definition.get("config"), indent=2))
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
