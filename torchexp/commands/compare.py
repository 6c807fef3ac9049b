"""The `compare` command: experiments side by side, as a table, JSON, CSV, Markdown or a plot."""

import shutil
import sys

import click

from torchexp.commands.context import App
from torchexp.compare import build_table, plot_table, sort_table
from torchexp.directions import parse_direction_overrides
from torchexp.errors import ConfigError
from torchexp.experiments import Experiments
from torchexp.extras import require_extra
from torchexp.tables import format_csv, format_json, format_markdown, format_text

FORMATS = {"json": format_json, "csv": format_csv, "md": format_markdown}


@click.command()
@click.argument("names", nargs=-1, metavar="[NAME]...")
@click.option(
    "--experiments-path",
    help="Folder holding the experiments.  [default: the command line's --experiments-path, else experiments]",
)
@click.option("--all", "all_keys", is_flag=True, help="Show every config key, not only those whose values differ.")
@click.option(
    "--direction",
    "directions",
    multiple=True,
    metavar="NAME=max|min",
    help="Take a metric's best as its highest (max) or lowest (min) value, for this table only (repeatable).  "
    "[default: as the project's Runner declares (metric_directions), else by the name: "
    "accuracy-like names max, the rest min]",
)
@click.option(
    "--sort-by",
    metavar="COLUMN",
    help="Sort by a column as printed, e.g. 'best validation loss', or by a config key.  [default: by name]",
)
@click.option(
    "--sort-order", type=click.Choice(["asc", "desc"]), default="asc", show_default=True, help="Order of --sort-by."
)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array, one object per experiment.")
@click.option("--csv", "as_csv", is_flag=True, help="Print CSV, numbers in full precision.")
@click.option("--md", "as_md", is_flag=True, help="Print a Markdown (GitHub) table.")
@click.option(
    "--plot",
    "plot_path",
    metavar="FILE",
    help="Also draw the metrics per epoch, one line per experiment, to FILE (.png or .svg).  [default: no plot]",
)
@click.option(
    "--plot-metrics",
    type=click.Choice(["validation", "train"]),
    default="validation",
    show_default=True,
    help="Which metrics --plot draws.",
)
@click.pass_context
def compare(
    ctx: click.Context,
    names: tuple[str, ...],
    experiments_path: str | None,
    all_keys: bool,
    directions: tuple[str, ...],
    sort_by: str | None,
    sort_order: str,
    as_json: bool,
    as_csv: bool,
    as_md: bool,
    plot_path: str | None,
    plot_metrics: str,
) -> None:
    """Compare experiments: one row each, with the config keys whose values differ, epochs
    done, best validation metrics (@ their epoch), the last epoch's train metrics, the
    latest test and the state (finished, stopped early, interrupted, running, not started,
    corrupt). A metric's best is its highest or lowest value as the project's Runner declares
    (recorded by train), else as its name says; --direction overrides either.

    NAMEs are experiments or shell-style patterns ('lr-*', 'STUDY/*'); default: every
    experiment. Nothing is written into the experiments, and torch is not imported.
    """
    chosen = [name for name, flag in (("json", as_json), ("csv", as_csv), ("md", as_md)) if flag]
    if len(chosen) > 1:
        raise ConfigError(f"--{' and --'.join(chosen)} cannot be combined: choose one output format")
    overrides = parse_direction_overrides(directions)
    if experiments_path is None:
        app = ctx.find_object(App)
        experiments_path = app.experiments_path if app is not None else "experiments"
    if plot_path is not None:
        from torchexp.plots import check_plot_path

        check_plot_path(plot_path)
        require_extra("plots", "compare --plot")
    table = build_table(Experiments(experiments_path), names, all_keys, overrides)
    if sort_by is not None:
        sort_table(table, sort_by, descending=sort_order == "desc")
    if plot_path is not None:
        plot_table(table, plot_metrics, plot_path)
        click.echo(f"plot written to {plot_path}", err=True)
    if chosen:
        click.echo(FORMATS[chosen[0]](table), nl=False)
    else:
        width = shutil.get_terminal_size().columns if sys.stdout.isatty() else None
        click.echo(format_text(table, width), nl=False)
