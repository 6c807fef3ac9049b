"""What a command says: one logger per experiment, to the console and verbose.log, and
progress bars. The numbers a run logs go to trackers (`torchexp.trackers`).
"""

import logging
import sys
from collections.abc import Iterable

from tqdm import tqdm

CONSOLE_FORMAT = "%(message)s"
FILE_FORMAT = "%(asctime)s %(levelname)s %(message)s"
PROGRESS_MIN_INTERVAL = 0.5  # seconds between progress bar refreshes, to keep the loop lean


def make_logger(name: str, log_path: str | None, verbosity: str = "normal") -> logging.Logger:
    """Return a logger that prints to stderr and appends everything to `log_path`.

    Args:
        name: the experiment name, used in the logger's name.
        log_path: verbose.log of the experiment, or None for the console alone.
        verbosity: "quiet" (warnings only), "normal" or "verbose" (debug) on the console.
    """
    logger = logging.getLogger(f"torchexp.{name}")
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    for handler in list(logger.handlers):
        handler.close()
        logger.removeHandler(handler)
    console = logging.StreamHandler(sys.stderr)
    console.setLevel({"quiet": logging.WARNING, "verbose": logging.DEBUG}.get(verbosity, logging.INFO))
    console.setFormatter(logging.Formatter(CONSOLE_FORMAT))
    logger.addHandler(console)
    if log_path is not None:
        file_handler = logging.FileHandler(log_path, encoding="utf-8")
        file_handler.setLevel(logging.DEBUG)
        file_handler.setFormatter(logging.Formatter(FILE_FORMAT))
        logger.addHandler(file_handler)
    return logger


def close_logger(logger: logging.Logger) -> None:
    """Close and detach the logger's handlers, releasing verbose.log."""
    for handler in list(logger.handlers):
        handler.close()
        logger.removeHandler(handler)


def progress_bar(iterable: Iterable, total: int | None, description: str, quiet: bool) -> tqdm:
    """Return a tqdm bar, silent when output is not a terminal or when quiet; `total` is None
    for a loader of unknown length (a stream)."""
    disable = quiet or not sys.stderr.isatty()
    return tqdm(
        iterable, total=total, desc=description, disable=disable, mininterval=PROGRESS_MIN_INTERVAL, leave=False
    )


def format_metrics(metrics: dict[str, float]) -> str:
    """Format metrics for a log line: `loss 0.0312, accuracy 0.9912, samples 10000`.

    Counts (ints) are shown whole; `.4g` would write 10000 as 1e+04.
    """
    return ", ".join(
        f"{key} {value}" if isinstance(value, int) else f"{key} {value:.4g}" for key, value in metrics.items()
    )
