"""Metrics: which way is better, and the best epoch of a series, in one vocabulary.

A direction is "minimize" or "maximize" (Optuna's words); "min" and "max" are accepted
wherever a user types one. A metric is named `split.name` (`validation.loss`) where a
split must be said, and a series is `[(epoch, value), ...]`. The experiments' API, `compare`,
`create_release` and the search all choose "best" here.
"""

from typing import Any, Iterable

from torchexp.errors import ConfigError

MINIMIZE = "minimize"
MAXIMIZE = "maximize"
DIRECTIONS = {"minimize": MINIMIZE, "maximize": MAXIMIZE, "min": MINIMIZE, "max": MAXIMIZE}
SPLITS = ("train", "validation")
# Metrics named like these are better when higher; every other one when lower.
HIGHER_IS_BETTER = ("acc", "f1", "precision", "recall", "auc", "score", "iou", "dice")

Series = list[tuple[int, float]]


def is_number(value: Any) -> bool:
    """Whether `value` is a number (not a bool, not null: a non-finite value became null)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def normalize_direction(direction: str) -> str:
    """Return "minimize" or "maximize" for a direction or its short form.

    Raises:
        ConfigError: anything else; the message names it.
    """
    if direction not in DIRECTIONS:
        raise ConfigError(f"direction {direction!r} is not valid: use 'minimize' or 'maximize' ('min', 'max')")
    return DIRECTIONS[direction]


def guess_direction(metric: str) -> str:
    """"maximize" for accuracy-like names (accuracy, f1, precision, recall, auc, score, iou,
    dice), "minimize" for the rest (losses, errors)."""
    return MAXIMIZE if any(word in metric.lower() for word in HIGHER_IS_BETTER) else MINIMIZE


def find_best(series: Iterable[tuple[int, float]], direction: str) -> tuple[int, float] | None:
    """The (epoch, value) with the best value in `direction`, the earliest on a tie; None
    for an empty series."""
    sign = 1 if normalize_direction(direction) == MINIMIZE else -1
    return min(series, key=lambda item: (sign * item[1], item[0]), default=None)


def parse_metric(metric: str) -> tuple[str, str]:
    """Split "validation.loss" into ("validation", "loss").

    Raises:
        ConfigError: not split.name, or an unknown split.
    """
    split, _, name = metric.partition(".")
    if split not in SPLITS or not name:
        raise ConfigError(f"metric {metric!r} must look like split.name with split train or validation, e.g. validation.loss")
    return split, name
