"""What an experiment folder says its MLflow run must hold: parameters, tags, metrics per
epoch, artifacts and status. Reading only: no mlflow, no torch.

Metrics are the epoch lines of metrics.jsonl, named as on TensorBoard (`train/loss`,
`validation/loss`, `test/accuracy`) with the epoch as MLflow's step. A resumed run drops
the lines its checkpoint does not cover and logs them again, so the file holds each epoch
once; the mirror sends a (metric, step) MLflow already has never again.
"""

import dataclasses
import datetime
import json
import math
from typing import Any

from torchexp import checkpoints
from torchexp.files import read_json_lines
from torchexp.folder import Experiment
from torchexp.locks import is_locked
from torchexp.metrics import (
    EARLY_STOPPING,
    FAILED,
    INTERRUPTED,
    ITERATION,
    MAX_EPOCHS,
    MAX_STEPS,
    OBSERVER,
    is_number,
    point_of,
    read_metric_lines,
)
from torchexp.results import read_reports
from torchexp.trackers.base import FAILED as FAILED_STATUS
from torchexp.trackers.base import FINISHED, KILLED, RUNNING

SCHEDULED = "SCHEDULED"  # MLflow's status of a run not yet trained; the others are every tracker's
STOP_STATUS = {
    MAX_EPOCHS: FINISHED,
    MAX_STEPS: FINISHED,
    EARLY_STOPPING: FINISHED,
    OBSERVER: FINISHED,
    ITERATION: FINISHED,
    INTERRUPTED: KILLED,
    FAILED: FAILED_STATUS,
}
EPOCH_KINDS = ("train", "validation", "test")
MAX_PARAM_LENGTH = 6000  # MLflow refuses longer parameter values
MAX_TAG_LENGTH = 8000


@dataclasses.dataclass(frozen=True)
class Point:
    """One metric value at one epoch (or step, for an experiment trained by steps), as MLflow logs it."""

    key: str
    step: int
    value: float
    timestamp_ms: int


def read_points(experiment: Experiment) -> list[Point]:
    """Every epoch's train, validation and test metrics; a diverged value (null) is NaN.

    A test repeated at an epoch (its standard and its release checkpoint) gives the last value.
    """
    points = {}
    for entry in read_metric_lines(experiment.metrics_path):
        kind = entry.get("kind")
        step = point_of(entry)
        if kind not in EPOCH_KINDS or not isinstance(step, int):
            continue
        timestamp_ms = int(float(entry.get("time") or 0) * 1000)
        for name, value in (entry.get("metrics") or {}).items():
            if value is None or is_number(value):
                key = f"{kind}/{name}"
                points[key, step] = Point(key, step, math.nan if value is None else float(value), timestamp_ms)
    return list(points.values())


def describe_params(experiment: Experiment, definition: dict) -> dict[str, str]:
    """The flattened configuration (`training.lr`), the seed, and the precision the first
    checkpoint was trained in (when one exists: parameters cannot change once logged)."""
    params = flatten(definition.get("config") or {})
    params["seed"] = str(definition.get("seed"))
    found = checkpoints.list_checkpoints(experiment.checkpoints_path, ("standard", "interrupt"))
    precision = next(filter(None, ((info.sidecar or {}).get("precision") for info in found)), None)
    if precision:
        params["precision"] = str(precision)
    return params


def flatten(config: dict, prefix: str = "") -> dict[str, str]:
    """{"training": {"lr": 0.1}} as {"training.lr": "0.1"}; lists and null as JSON."""
    flat = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            text = value if isinstance(value, str) else json.dumps(value)
            flat[f"{prefix}{key}"] = text[:MAX_PARAM_LENGTH]
    return flat


def describe_tags(experiment: Experiment, definition: dict, provenance: dict | None) -> dict[str, str]:
    """The run's tags: the torchexp version, the experiment's folder, and the provenance its
    last run recorded (code commit, data digest, torch, CPU and GPU, settings)."""
    tags = {
        "torchexp.version": str((definition.get("versions") or {}).get("torchexp")),
        "torchexp.experiment": experiment.name,
        "torchexp.folder": experiment.path,
    }
    provenance = provenance or {}
    code = provenance.get("code") or {}
    if code.get("commit"):
        tags["mlflow.source.git.commit"] = code["commit"]  # MLflow's own tag: the UI links it
    for key, value in code.items():
        tags[f"torchexp.code.{key}"] = str(value)
    if (provenance.get("data") or {}).get("sha256"):
        tags["torchexp.data.sha256"] = provenance["data"]["sha256"]
    for group in ("environment", "settings"):
        for key, value in (provenance.get(group) or {}).items():
            if value is not None:
                tags[f"torchexp.{key}"] = str(value)
    return {key: value[:MAX_TAG_LENGTH] for key, value in tags.items()}


def list_artifacts(experiment: Experiment) -> dict[str, Any]:
    """The run's artifacts, by their path in the run: config.json (a file path) and the
    confusion matrix of each test that returned a square one (its matrix, drawn when sent)."""
    from torchexp.evaluation import is_square

    artifacts: dict[str, Any] = {"config.json": experiment.config_path}
    for (epoch, kind), report, _ in read_reports(experiment):
        matrix = report["results"].get("confusion_matrix")
        if is_square(matrix):
            artifacts[f"confusion_matrix/{epoch}.{kind}.png"] = matrix
    return artifacts


def describe_status(experiment: Experiment, training: bool | None = None) -> str:
    """The run's status: RUNNING while trained (`training`, or when None, while a process
    holds the experiment), then as its last `train` ended: FINISHED (its epochs done, early
    stopping), KILLED (a stop signal, or a kill that left no end at all), FAILED (an error);
    SCHEDULED before any training."""
    if training or (training is None and is_locked(experiment.lock_path)):
        return RUNNING
    started = read_last_start(experiment)
    if started is None:
        return SCHEDULED
    stop = None
    for entry in read_metric_lines(experiment.metrics_path):
        if entry.get("kind") == "stop":
            stop = entry
    # The start is recorded to the second, the stop to the millisecond: a stop at or after
    # the start's second ended that run; none means the run was killed without an end.
    if stop is None or float(stop.get("time") or 0) < started:
        return KILLED
    return STOP_STATUS.get(stop.get("reason", ""), FINISHED)


def read_last_start(experiment: Experiment) -> float | None:
    """When the last `train` started (its provenance line), in seconds; None if never."""
    started = None
    for entry in read_json_lines(experiment.provenance_path):
        if entry.get("event") == "train" and isinstance(entry.get("time"), str):
            try:
                started = datetime.datetime.strptime(entry["time"], "%Y-%m-%dT%H:%M:%S%z").timestamp()
            except ValueError:
                continue
    return started


def is_trial(definition: dict) -> bool:
    """Whether the experiment is a search's trial, whose run nests in its study's."""
    return isinstance(definition.get("search"), dict)
