"""The `export` command: a release in one of the formats of `torchexp.formats`."""

import click

from torchexp.commands.context import App, pass_app
from torchexp.commands.options import choose_point, with_point
from torchexp.export import DEFAULT_CHECK_SAMPLES
from torchexp.extras import require_extra
from torchexp.formats import FORMATS
from torchexp.logs import close_logger, make_logger

FORMAT_HELP = "; ".join(f"{fmt.name}: {fmt.help}" for fmt in FORMATS.values()) + "."


@click.command()
@click.option("--format", "fmt", type=click.Choice(list(FORMATS)), required=True, help=FORMAT_HELP)
@with_point("Export the release of this epoch.", "the latest release")
@click.option(
    "--check-samples",
    default=DEFAULT_CHECK_SAMPLES,
    show_default=True,
    type=click.IntRange(min=1),
    help="Test samples (from --data-path) on which an export that runs the model must reproduce torch's outputs.",
)
@pass_app
def export(app: App, fmt: str, epoch: int | None, step: int | None, check_samples: int) -> None:
    """Export a release to experiments/NAME/exports/, with a record of its SHA-256.

    An export that runs the model (onnx in onnxruntime, aoti compiled) is run against
    torch on the project's example and on test samples, and is not written unless their
    outputs agree; a safetensors export must load back equal to the release.
    """
    extra = FORMATS[fmt].extra
    if extra is not None:
        require_extra(extra, "export")
    from torchexp.export import export_experiment

    experiment = app.open_experiment()
    epoch = choose_point(experiment, epoch, step)
    logger = make_logger(experiment.name, experiment.log_path, app.verbosity)
    try:
        export_experiment(app.project, experiment, epoch, fmt, check_samples, logger)
    finally:
        close_logger(logger)
