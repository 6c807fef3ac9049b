"""Metrics: the best epoch of a series, and reading metrics.jsonl.

Which way is better is `torchexp.directions`' to say. A metric is named `split.name`
(`validation.loss`) where a split must be said, and a series is `[(epoch, value), ...]`.
The experiments' API, `compare`, `create_release`, early stopping, trainer.keep_checkpoints
and the search all choose "best" here.

metrics.jsonl holds one JSON line per logged iteration, epoch ("train", "validation"),
test, and end of a `train` ("stop": why it stopped, a `Stop`), each with "kind" first.
"""

import dataclasses
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, TypeGuard

# DIRECTIONS, MAXIMIZE and guess_direction stay importable from here, where torchexp 0.2 gave them.
from torchexp.directions import DIRECTIONS, MAXIMIZE, MINIMIZE, direction_of, guess_direction, normalize_direction  # noqa: F401
from torchexp.errors import ConfigError
from torchexp.files import read_json_lines

SPLITS = ("train", "validation")

Series = list[tuple[int, float]]


def is_number(value: Any) -> TypeGuard[int | float]:
    """Whether `value` is a number (not a bool, not null: a non-finite value became null)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def find_best(series: Iterable[tuple[int, float]], direction: str) -> tuple[int, float] | None:
    """The (epoch, value) with the best value in `direction`, the earliest on a tie; None
    for an empty series."""
    sign = 1 if normalize_direction(direction) == MINIMIZE else -1
    return min(series, key=lambda item: (sign * item[1], item[0]), default=None)


def recorded_series(records: Iterable[tuple[int, dict]], split: str, metric: str) -> Series:
    """(epoch, value) of `split`'s `metric` in (epoch, {"train": {...}, "validation": {...}})
    records, such as checkpoints' sidecars hold, where it is a number."""
    return [(epoch, value) for epoch, metrics in records if is_number(value := (metrics.get(split) or {}).get(metric))]


def has_stalled(history: dict[str, list[dict]], monitor: str, declared: Mapping[str, str], patience: int) -> bool:
    """Whether, in a Runner's history, the last `patience` values of `monitor` (split.name)
    beat none of those before them (a tie does not beat), better as `declared` or the
    metric's name says (`direction_of`); False while it has `patience` values or fewer.

    Raises:
        ConfigError: `monitor` is not split.name, or its split has metrics, none of them this one.
    """
    split, metric = parse_metric(monitor)
    names = sorted({name for entry in history[split] for name in entry})
    if names and metric not in names:
        logged = f"its {split} metrics are {', '.join(names)}"
        raise ConfigError(f"trainer.monitor {monitor!r} is not a metric the project logs: {logged}")
    series = [(index, entry[metric]) for index, entry in enumerate(history[split]) if is_number(entry.get(metric))]
    if len(series) <= patience:
        return False
    best = find_best(series, direction_of(metric, declared))
    assert best is not None, "the series has more than patience values"
    return best[0] < series[-patience][0]


def parse_metric(metric: str) -> tuple[str, str]:
    """Split "validation.loss" into ("validation", "loss").

    Raises:
        ConfigError: not split.name, or an unknown split.
    """
    split, _, name = metric.partition(".")
    if split not in SPLITS or not name:
        raise ConfigError(
            f"metric {metric!r} must look like split.name with split train or validation, e.g. validation.loss"
        )
    return split, name


# Why a `train` ended, as a "stop" line of metrics.jsonl says.
MAX_EPOCHS = "max_epochs"  # it reached the epochs it was asked for (trainer.max_epochs or --max-epochs)
MAX_STEPS = "max_steps"  # it reached the steps it was asked for (trainer.max_steps or --max-steps)
EARLY_STOPPING = "early_stopping"  # train_early_stopping said so
OBSERVER = "observer"  # an epoch observer (a search's pruner) said so
PRUNED = "pruned"  # a search pruned the trial: its pruner stopped it, or ASHA never promoted it; written by the search
INTERRUPTED = "interrupted"  # SIGINT or SIGTERM; an interrupt checkpoint was saved
FAILED = "failed"  # an error ended it
ITERATION = "iteration"  # it reached the iteration it was asked to stop at (verify re-runs part of an epoch)


@dataclasses.dataclass(frozen=True)
class Stop:
    """Why a `train` ended.

    Attributes:
        reason: one of MAX_EPOCHS, MAX_STEPS, EARLY_STOPPING, OBSERVER, PRUNED, INTERRUPTED, FAILED, ITERATION.
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
