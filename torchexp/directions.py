"""Metric directions: whether a higher or a lower value of a metric is better.

A project declares the direction of its metrics on its Runner, `metric_directions =
{"r2": "max", "mae": "min"}`; a metric it does not declare goes by its name: accuracy-like
names (accuracy, f1, precision, recall, auc, score, iou, dice) are better higher, every
other one (losses, errors) lower. `direction_of` is that rule, and the only one.

What runs with the project's classes (early stopping, trainer.keep_checkpoints, the
search) reads the Runner's declaration; `train` records it in the experiment's
directions.json, so that what reads experiments as JSON alone (`compare`, the experiments'
API, `create_release`) knows it too. An experiment trained before torchexp recorded it has
no directions.json and goes by the names.

A direction is "minimize" or "maximize" (Optuna's words); "min" and "max" are accepted
wherever a user types one.
"""

import os
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from torchexp.errors import ConfigError, ExperimentError, TorchexpError
from torchexp.files import read_json, write_json_atomic

if TYPE_CHECKING:
    from torchexp.folder import Experiment

MINIMIZE = "minimize"
MAXIMIZE = "maximize"
DIRECTIONS = {"minimize": MINIMIZE, "maximize": MAXIMIZE, "min": MINIMIZE, "max": MAXIMIZE}
# Metrics named like these are better when higher; every other undeclared one when lower.
HIGHER_IS_BETTER = ("acc", "f1", "precision", "recall", "auc", "score", "iou", "dice")
# The end of every sentence that refuses a direction.
USE = "use 'max' or 'min' ('maximize', 'minimize')"
# trainer.monitor, an option of the configuration's trainer section (`torchexp.config.TRAINER_SCHEMA`).
MONITOR_OPTION = {
    "type": "string",
    "pattern": "^(train|validation)\\..",
    "default": "validation.loss",
    "description": "The metric, split.name, by which an epoch is best: trainer.keep_checkpoints keeps its best "
    "checkpoint, early stopping waits for it to improve, and create_release releases its best epoch by default. "
    "Higher or lower is better as the Runner's metric_directions declares, else by the metric's name "
    "(accuracy-like names higher, the rest lower).",
}


def normalize_direction(direction: str) -> str:
    """Return "minimize" or "maximize" for a direction or its short form.

    Raises:
        ConfigError: anything else; the message names it.
    """
    if not isinstance(direction, str) or direction not in DIRECTIONS:
        raise ConfigError(f"direction {direction!r} is not valid: use 'minimize' or 'maximize' ('min', 'max')")
    return DIRECTIONS[direction]


def guess_direction(metric: str) -> str:
    """The direction of an undeclared metric, by its name: "maximize" for accuracy-like
    names (accuracy, f1, precision, recall, auc, score, iou, dice), "minimize" for the rest
    (losses, errors)."""
    return MAXIMIZE if any(word in metric.lower() for word in HIGHER_IS_BETTER) else MINIMIZE


def direction_of(metric: str, declared: Mapping[str, str]) -> str:
    """The direction of `metric`: as `declared` (normalized, by `declared_directions` or
    `read_directions`) says, else by its name (`guess_direction`)."""
    return declared.get(metric) or guess_direction(metric)


def declared_directions(runner_class: type) -> dict[str, str]:
    """The directions a Runner class declares in `metric_directions`, normalized.

    Raises:
        ConfigError: it is not a dict of metric names to directions; the message names the
            metric and the value.
    """
    declared = getattr(runner_class, "metric_directions", {})
    return check_directions(declared, f"{runner_class.__name__}.metric_directions", ConfigError)


def check_directions(declared: Any, where: str, error: type[TorchexpError]) -> dict[str, str]:
    """Return `declared` with each direction normalized, or raise `error` naming `where`,
    the metric and the value."""
    if not isinstance(declared, dict):
        raise error(f"{where} must be a dict of metric names to 'max' or 'min', not {type(declared).__name__}")
    checked = {}
    for metric, direction in declared.items():
        if not isinstance(metric, str) or not metric:
            raise error(f"{where} declares a direction for {metric!r}, which is not a metric's name")
        if not isinstance(direction, str) or direction not in DIRECTIONS:
            raise error(f"{where} gives metric {metric!r} the direction {direction!r}: {USE}")
        checked[metric] = DIRECTIONS[direction]
    return checked


def record_directions(experiment: "Experiment", declared: Mapping[str, str]) -> None:
    """Write the declared directions (normalized) to the experiment's directions.json."""
    write_json_atomic(experiment.directions_path, {"metric_directions": dict(declared)})


def read_directions(experiment: "Experiment") -> dict[str, str]:
    """The directions the experiment's directions.json records; {} when it has none (never
    trained, or trained by a torchexp older than the record), so that every metric goes by
    its name.

    Raises:
        ExperimentError: the file is unreadable or holds something else.
    """
    path = experiment.directions_path
    if not os.path.lexists(path):
        return {}
    what = f"directions of experiment {experiment.name!r}"
    record = read_json(path, what, ExperimentError)
    declared = record.get("metric_directions") if isinstance(record, dict) else None
    return check_directions(declared, f"{what} ({path})", ExperimentError)


def parse_direction_overrides(texts: Iterable[str]) -> dict[str, str]:
    """Read `--direction NAME=max` texts into {NAME: "maximize"}; a name given again takes
    the later direction.

    Raises:
        ConfigError: a text is not NAME=max or NAME=min; the message names it.
    """
    overrides = {}
    for text in texts:
        metric, sep, direction = text.rpartition("=")
        if not sep or not metric:
            raise ConfigError(f"--direction {text!r} must look like NAME=max or NAME=min, e.g. r2=max")
        if direction not in DIRECTIONS:
            raise ConfigError(f"--direction {text!r} gives metric {metric!r} the direction {direction!r}: {USE}")
        overrides[metric] = DIRECTIONS[direction]
    return overrides
