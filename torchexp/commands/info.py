"""The `info` command: an experiment's configuration, seed and checkpoints."""

import json

import click

from torchexp import checkpoints
from torchexp.commands.context import App, pass_app
from torchexp.experiments import ExperimentView
from torchexp.logs import format_metrics
from torchexp.metrics import is_number


@click.command()
@pass_app
def info(app: App) -> None:
    """Show an experiment's configuration, seed, provenance, checkpoints, tests and verifications."""
    experiment = app.open_experiment()
    definition = experiment.read_definition()
    view = ExperimentView(experiment)
    click.echo(f"experiment: {experiment.name}\npath: {experiment.path}\nseed: {definition.get('seed')}")
    if definition.get("project_root"):
        click.echo(f"project: {definition['project_root']}")
    click.echo("versions: " + ", ".join(f"{k} {v}" for k, v in definition.get("versions", {}).items()))
    click.echo(f"disk: {view.disk_bytes / 1e6:.1f} MB")
    if view.provenance:
        click.echo("provenance:\n" + "\n".join(f"  {line}" for line in describe_provenance(view.provenance)))
    click.echo("config:\n" + json.dumps(definition.get("config"), indent=2))
    found = checkpoints.list_checkpoints(experiment.checkpoints_path)
    click.echo(f"checkpoints: {len(found) or 'none'}")
    for checkpoint in found:
        click.echo("  " + describe_checkpoint(checkpoint))
    click.echo(f"tests: {len(view.results) or 'none'}")
    unit = view.unit
    for (epoch, kind), values in view.results.items():
        numbers = {key: value for key, value in values.items() if is_number(value)}
        click.echo(f"  {unit} {epoch} {kind}: {format_metrics(numbers) or 'no numbers'}")
    click.echo(f"verifications: {len(view.verifications) or 'none'}")
    for entry in view.verifications:
        where = f"{unit} {entry.get('epoch')}" + (
            f", iteration {entry['iteration']}" if entry.get("iteration") and unit == "epoch" else ""
        )
        verdict = "bit-identical" if entry.get("identical") else f"differs: {entry.get('difference')}"
        click.echo(f"  {entry.get('time')} {where} on {entry.get('device')}: {verdict}")


def describe_provenance(provenance: dict) -> list[str]:
    """`info`'s lines about what produced the experiment's last run."""
    code = provenance.get("code") or {}
    if code.get("commit"):
        code_text = f"git commit {code['commit'][:12]}" + (" with uncommitted changes" if code.get("dirty") else "")
    else:
        code_text = f"sources {code['source_sha256'][:12]}" if code.get("source_sha256") else "unknown"
    data = provenance.get("data") or {}
    files = data.get("files") or {}
    environment = provenance.get("environment") or {}
    shown = ("python", "torch", "cuda", "cudnn", "numpy", "cpu", "cpu_flags", "gpu")
    return [
        f"recorded: {provenance.get('event')} at {provenance.get('time')}",
        f"code: {code_text}",
        f"data: {data.get('sha256', '')[:12]} over {len(files)} file{'s' if len(files) != 1 else ''}"
        + (f" ({', '.join(sorted(files))})" if 0 < len(files) <= 4 else ""),
        "environment: "
        + ", ".join(f"{key} {environment[key]}" for key in shown if environment.get(key) not in (None, "")),
        "settings: " + ", ".join(f"trainer.{key} {value}" for key, value in (provenance.get("settings") or {}).items()),
    ]


def describe_checkpoint(checkpoint: checkpoints.Checkpoint) -> str:
    """One line of `info`: epoch (or step), kind, size and key metrics."""
    if checkpoint.sidecar is None:
        return f"epoch {checkpoint.epoch} {checkpoint.kind}: no sidecar (unverifiable)"
    parts = [
        f"{checkpoint.unit} {checkpoint.epoch} {checkpoint.kind}",
        f"{checkpoint.sidecar.get('bytes', 0) / 1e6:.1f} MB",
    ]
    counters = checkpoint.sidecar.get("counters") or {}
    if checkpoint.unit == "step" and checkpoint.kind != "release":
        parts.append(f"epoch {counters.get('epoch', 0) + 1}, iteration {counters.get('iteration')}")
    elif checkpoint.kind == "interrupt":
        parts.append(f"iteration {checkpoint.sidecar.get('iteration')}")
    for split in ("train", "validation"):
        values = checkpoint.metrics.get(split) or {}
        if values:
            parts.append(split + " " + format_metrics({k: v for k, v in values.items() if isinstance(v, (int, float))}))
    return "; ".join(parts)
