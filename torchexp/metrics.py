"""Metrics: which way is better, the best epoch of a series, and reading metrics.jsonl.

A direction is "minimize" or "maximize" (Optuna's words); "min" and "max" are accepted
wherever a user types one. A metric is named `split.name` (`validation.loss`) where a
split must be said, and a series is `[(epoch, value), ...]`. The experiments' API, `compare`,
`create_release` and the search all choose "best" here.

metrics.jsonl holds one JSON line per logged iteration, epoch ("train", "validation"),
test, and end of a `train` ("stop": why it stopped, a `Stop`), each with "kind" first.
"""

import dataclasses
from typing import Any, Iterable, Iterator

from torchexp.errors import ConfigError
from torchexp.files import read_json_lines

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


# Why a `train` ended, as a "stop" line of metrics.jsonl says.
MAX_EPOCHS = "max_epochs"  # it reached the epochs it was asked for (trainer.max_epochs or --max-epochs)
MAX_STEPS = "max_steps"  # it reached the steps it was asked for (trainer.max_steps or --max-steps)
EARLY_STOPPING = "early_stopping"  # train_early_stopping said so
OBSERVER = "observer"  # an epoch observer (a search's pruner) said so
INTERRUPTED = "interrupted"  # SIGINT or SIGTERM; an interrupt checkpoint was saved
FAILED = "failed"  # an error ended it
ITERATION = "iteration"  # it reached the iteration it was asked to stop at (verify re-runs part of an epoch)


@dataclasses.dataclass(frozen=True)
class Stop:
    """Why a `train` ended.

    Attributes:
        reason: one of MAX_EPOCHS, MAX_STEPS, EARLY_STOPPING, OBSERVER, INTERRUPTED, FAILED, ITERATION.
        done: the epochs (or steps) done when it ended.
        limit: the epochs (or steps) that run was to reach.
        detail: one sentence: the observer's reason, the signal, the error.
        unit: "epoch" or "step" (`torchexp.budget`).
    """

    reason: str
    done: int
    limit: int
    detail: str = ""
    unit: str = "epoch"

    def to_json(self) -> dict[str, Any]:
        """{"reason", "epoch", "max_epochs", "detail"}; "step" and "max_steps" and "unit"
        for an experiment trained by steps."""
        line = {"reason": self.reason, self.unit: self.done, f"max_{self.unit}s": self.limit, "detail": self.detail}
        return line if self.unit == "epoch" else {**line, "unit": self.unit}

    @classmethod
    def from_json(cls, line: dict[str, Any]) -> "Stop":
        """Read what `to_json` wrote.

        Raises:
            KeyError, TypeError, ValueError: the line is not a stop line.
        """
        unit = str(line.get("unit", "epoch"))
        return cls(str(line["reason"]), int(line[unit]), int(line[f"max_{unit}s"]), str(line.get("detail", "")), unit)


def point_of(entry: dict[str, Any]) -> Any:
    """The epoch, or the step for an experiment trained by steps (whose lines hold no
    epoch), of a metrics.jsonl train, validation or stop line, a history entry, or a best
    value."""
    return entry.get("epoch", entry.get("step"))


def read_metric_lines(path: str, iterations: bool = False) -> Iterator[dict]:
    """The JSON lines of a metrics.jsonl, skipping torn lines, and iteration lines unless asked."""
    # Iteration lines are most of the file, and are skipped unparsed: Tracker writes "kind" first.
    return read_json_lines(path, None if iterations else '{"kind": "iteration"')


def read_last_stop(path: str) -> Stop | None:
    """The last `Stop` a metrics.jsonl records, or None when no run has ended there."""
    last = None
    for entry in read_metric_lines(path):
        if entry.get("kind") == "stop":
            last = entry
    if last is None:
        return None
    try:
        return Stop.from_json(last)
    except (KeyError, TypeError, ValueError):
        return None
