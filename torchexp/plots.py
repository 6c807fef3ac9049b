"""Pictures of experiments: the curves of `compare --plot` and a test's confusion matrix.

Figures are `matplotlib.figure.Figure` objects rendered by the Agg canvas: pyplot and its
global backend are never touched, so using this module (in a notebook, say) changes nothing
in the caller's matplotlib set-up. matplotlib is imported on first use.
"""

import os
from typing import Any

from torchexp.errors import ConfigError
from torchexp.files import write_atomic

PLOT_FORMATS = {".png": "png", ".svg": "svg"}
PANEL_INCHES = (4.8, 3.6)  # one metric's panel: width, height
LEGEND_LINE_INCHES = 0.22
DPI = 100


def check_plot_path(path: str) -> str:
    """Return the format of a plot file from its extension ("png" or "svg").

    Raises:
        ConfigError: another extension; the message names it.
    """
    extension = os.path.splitext(path)[1]
    if extension.lower() not in PLOT_FORMATS:
        what = f"extension {extension!r}" if extension else "no extension"
        raise ConfigError(f"plot file {path} has {what}: use .png or .svg")
    return PLOT_FORMATS[extension.lower()]


def comparison_figure(
    curves: list[tuple[str, dict[str, list[tuple[int, float]]]]], metrics: list[str], split: str, x_label: str = "epoch"
) -> Any:
    """Overlay experiments' metrics per epoch: one panel per metric, one line per experiment.

    Args:
        curves: (label, {metric: [(epoch, value), ...]}) of each experiment.
        metrics: the metrics to draw, one panel each, in order.
        split: "validation" or "train", for the titles.
        x_label: what the x axis counts: "epoch", or "step" for experiments trained by steps.
    """
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    width, height = PANEL_INCHES
    figure = Figure(
        figsize=(width * len(metrics), height + LEGEND_LINE_INCHES * len(curves)), dpi=DPI, layout="constrained"
    )
    axes = figure.subplots(1, len(metrics), squeeze=False)[0]
    for axis, metric in zip(axes, metrics, strict=True):
        for label, series in curves:
            points = series.get(metric, [])
            axis.plot(
                [epoch for epoch, _ in points], [value for _, value in points], marker="o", markersize=3, label=label
            )
        axis.set_title(f"{split} {metric}")
        axis.set_xlabel(x_label)
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="outside lower center", fontsize="small", frameon=False)
    return figure


def confusion_matrix_figure(matrix: list[list[int]], labels: list[str]) -> Any:
    """Draw a confusion matrix, rows the true classes and columns the predicted ones, with
    the count of each non-empty cell written in it.

    Args:
        matrix: counts, `matrix[true][predicted]`.
        labels: the classes' names, in the matrix's order.
    """
    from matplotlib.figure import Figure

    size = len(labels)
    # Fixed margins rather than a layout engine, and no colorbar (the counts are written):
    # `test` draws this every time, and layout and text are most of matplotlib's cost.
    figure = Figure(figsize=(1.0 + 0.45 * size, 1.0 + 0.45 * size), dpi=DPI)
    figure.subplots_adjust(left=0.14, right=0.96, bottom=0.12, top=0.92)
    axis = figure.subplots()
    axis.imshow(matrix, cmap="Blues")
    axis.set_xticks(range(size), labels)
    axis.set_yticks(range(size), labels)
    axis.set_xlabel("predicted")
    axis.set_ylabel("true")
    axis.set_title("confusion matrix")
    # Dark cells get white text, light cells black, so every count stays legible; empty
    # cells stay blank, so that the mistakes stand out.
    threshold = max(max(row) for row in matrix) / 2 if size else 0
    for true, row in enumerate(matrix):
        for predicted, count in enumerate(row):
            if count:
                color = "white" if count > threshold else "black"
                axis.text(predicted, true, str(count), ha="center", va="center", fontsize="x-small", color=color)
    return figure


def save_figure(figure: Any, path: str) -> None:
    """Write a figure as PNG or SVG, by the extension of `path`, atomically.

    Raises:
        ConfigError: the extension is neither .png nor .svg.
        StorageError: the file cannot be written; the message says why.
    """
    image_format = check_plot_path(path)
    write_atomic(path, lambda file: figure.savefig(file, format=image_format))
