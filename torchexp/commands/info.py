"""The `info` command: an experiment's configuration, seed and checkpoints."""

import json

import click

from torchexp import checkpoints
from torchexp.commands.context import App, pass_app
from torchexp.experiments import ExperimentView
from torchexp.metrics import is_number
from torchexp.tracking import format_metrics


@click.command()
@pass_app
def info(app: App) -> None:
    """Show an experiment's configuration, seed, checkpoints and test results."""
    experiment = app.open_experiment()
    definition = experiment.read_definition()
    click.echo(f"experiment: {experiment.name}\npath: {experiment.path}\nseed: {definition.get('seed')}")
    if definition.get("project_root"):
        click.echo(f"project: {definition['project_root']}")
    click.echo("versions: " + ", ".join(f"{k} {v}" for k, v in definition.get("versions", {}).items()))
    click.echo("config:\n" + json.dumps(definition.get("config"), indent=2))
    found = checkpoints.list_checkpoints(experiment.checkpoints_path)
    click.echo(f"checkpoints: {len(found) or 'none'}")
    for checkpoint in found:
        click.echo("  " + describe_checkpoint(checkpoint))
    results = ExperimentView(experiment).results
    click.echo(f"tests: {len(results) or 'none'}")
    for (epoch, kind), values in results.items():
        numbers = {key: value for key, value in values.items() if is_number(value)}
        click.echo(f"  epoch {epoch} {kind}: {format_metrics(numbers) or 'no numbers'}")


def describe_checkpoint(checkpoint: checkpoints.Checkpoint) -> str:
    """One line of `info`: epoch, kind, size and key metrics."""
    if checkpoint.sidecar is None:
        return f"epoch {checkpoint.epoch} {checkpoint.kind}: no sidecar (unverifiable)"
    parts = [f"epoch {checkpoint.epoch} {checkpoint.kind}", f"{checkpoint.sidecar.get('bytes', 0) / 1e6:.1f} MB"]
    if checkpoint.kind == "interrupt":
        parts.append(f"iteration {checkpoint.sidecar.get('iteration')}")
    for split in ("train", "validation"):
        values = checkpoint.metrics.get(split) or {}
        if values:
            parts.append(split + " " + format_metrics({k: v for k, v in values.items() if isinstance(v, (int, float))}))
    return "; ".join(parts)
