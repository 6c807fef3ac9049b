"""One experiment = one MLflow run: find or create it, and send it what it lacks.

The run id is kept in the experiment folder (`state`), so a resume continues the run. What
the server holds is read once per connection (parameters, tags, each metric's steps,
artifacts, status); after that only what is new is sent, and a (metric, step) the run has
is never sent again. Any failure forgets what was read, so that the next attempt reads the
server's truth again: a request that reached the server before it died is not repeated.
"""

import contextlib
import dataclasses
import logging
import os
import tempfile
from collections.abc import Callable, Iterator
from typing import Any

from torchexp import process
from torchexp.errors import TrackingError, first_line
from torchexp.extras import require_extra
from torchexp.folder import Experiment
from torchexp.mirror import records
from torchexp.mirror.state import updating_state
from torchexp.mirror.target import MlflowTarget
from torchexp.provenance import read_last

# A server that does not answer fails a request after this many seconds and retries; the
# defaults (120 s, 7 retries) would hold `sync` and the end of `train` for minutes.
REQUEST_TIMEOUT_S = "10"
REQUEST_RETRIES = "2"
BATCH_LIMITS = {"metrics": 1000, "params": 100, "tags": 100}  # MLflow's log_batch limits
PARENT_TAG = "mlflow.parentRunId"  # MLflow's tag of a nested run


def connect(target: MlflowTarget) -> Any:
    """An `mlflow.MlflowClient` for the target.

    Raises:
        MissingExtraError: mlflow is not installed.
    """
    require_extra("mlflow", "mirroring to MLflow (--mlflow-uri or MLFLOW_TRACKING_URI)")
    if process.COMMAND_LINE:  # the process is the command line's; a library caller's keeps MLflow's settings
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", REQUEST_TIMEOUT_S)
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", REQUEST_RETRIES)
        # MLflow's own INFO lines ("Waiting up to 300 seconds for model version...") are not
        # the command's to say; its warnings still show.
        logging.getLogger("mlflow").setLevel(logging.WARNING)
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=target.uri, registry_uri=target.uri)


@contextlib.contextmanager
def calling_mlflow(target: MlflowTarget, what: str) -> Iterator[None]:
    """Turn whatever MLflow raises into one TrackingError naming the server and the step."""
    try:
        yield
    except TrackingError:
        raise
    except Exception as error:
        unreachable = describe_unreachable(str(error))
        if unreachable is not None:
            raise TrackingError(
                f"MLflow at {target.uri} cannot be reached ({unreachable}) to {what}: is the server running there?"
            ) from error
        raise TrackingError(f"MLflow at {target.uri} failed to {what}: {first_line(error)}") from error


def describe_unreachable(message: str) -> str | None:
    """Why a request never reached the server, in a few words; None when it did."""
    reasons = {
        "Connection refused": "connection refused",
        "Name or service not known": "unknown host",
        "Temporary failure in name resolution": "unknown host",
        "timed out": f"no answer within {REQUEST_TIMEOUT_S} s",
        "Connection reset": "connection reset",
        "RemoteDisconnected": "the connection closed",
    }
    return next((reason for text, reason in reasons.items() if text in message), None)


def find_experiment_id(client: Any, target: MlflowTarget, name: str) -> str:
    """The id of the MLflow experiment `name`, created when missing.

    Raises:
        TrackingError: the server cannot be reached, or the experiment is deleted.
    """
    with calling_mlflow(target, f"find the MLflow experiment {name!r}"):
        found = client.get_experiment_by_name(name)
        if found is None:
            try:
                return client.create_experiment(name)
            except Exception:
                found = client.get_experiment_by_name(name)  # another process created it meanwhile
                if found is None:
                    raise
    if found.lifecycle_stage == "deleted":
        raise TrackingError(
            f"MLflow experiment {name!r} at {target.uri} is deleted: "
            "restore it, or set MLFLOW_EXPERIMENT_NAME to another name"
        )
    return found.experiment_id


def open_folder_run(
    client: Any, target: MlflowTarget, folder: str, experiment_id: str, name: str, tags: dict[str, str]
) -> str:
    """The run id of the run mirroring `folder` (an experiment or a study), created with
    `name` and `tags` when the folder has none on this server, or when its run was deleted."""
    with calling_mlflow(target, f"open the run of {name!r}"), updating_state(folder) as state:
        known = state["runs"].get(target.uri) or {}
        if known.get("run_id") and is_live_run(client, known["run_id"]):
            return known["run_id"]
        run = client.create_run(experiment_id, run_name=name, tags=tags)
        state["runs"][target.uri] = {"experiment_id": experiment_id, "run_id": run.info.run_id}
        return run.info.run_id


def is_live_run(client: Any, run_id: str) -> bool:
    """Whether the run exists on the server and is not deleted."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_run(run_id).info.lifecycle_stage != "deleted"
    except MlflowException as error:
        if error.error_code == "RESOURCE_DOES_NOT_EXIST":
            return False
        raise


@dataclasses.dataclass
class Known:
    """What the server holds of a run, as read once and kept up to date as it is sent."""

    params: dict[str, str]
    tags: dict[str, str]
    steps: dict[str, set[int]]  # metric key -> steps logged; filled per key on first need
    artifacts: set[str] | None  # None until listed
    status: str


@dataclasses.dataclass
class Sent:
    """What one sync sent, for `sync`'s report."""

    params: int = 0
    tags: int = 0
    metrics: int = 0
    artifacts: int = 0
    status: str | None = None

    def is_nothing(self) -> bool:
        return not (self.params or self.tags or self.metrics or self.artifacts or self.status)

    def describe(self) -> str:
        parts = [
            f"{count} {name}"
            for name, count in (
                ("metric values", self.metrics),
                ("parameters", self.params),
                ("tags", self.tags),
                ("artifacts", self.artifacts),
            )
            if count
        ]
        if self.status:
            parts.append(f"status {self.status}")
        return ", ".join(parts) or "nothing new"


class RunMirror:
    """Sends one experiment folder to its MLflow run, what the run lacks, once.

    Args:
        client: an `mlflow.MlflowClient` (`connect`).
        target: the tracking URI and MLflow experiment name.
        experiment: the experiment mirrored.
        parent_run_id: for a search's trial, returns its study's run id (the run nests there).
    """

    def __init__(
        self, client: Any, target: MlflowTarget, experiment: Experiment, parent_run_id: Callable[[], str] | None = None
    ):
        self.client = client
        self.target = target
        self.experiment = experiment
        self.parent_run_id = parent_run_id
        self.run_id: str | None = None
        self.known: Known | None = None

    def open_run(self) -> str:
        """The run's id: the folder's run, created on first use."""
        if self.run_id is None:
            experiments_path = self.experiment.experiments_path
            if self.parent_run_id is not None:
                experiments_path = os.path.dirname(experiments_path)  # a trial's experiments folder is its study
            experiment_id = find_experiment_id(self.client, self.target, self.target.experiment_for(experiments_path))
            tags = {PARENT_TAG: self.parent_run_id()} if self.parent_run_id is not None else {}
            self.run_id = open_folder_run(
                self.client, self.target, self.experiment.path, experiment_id, self.experiment.name, tags
            )
        return self.run_id

    def sync(
        self,
        training: bool | None = None,
        status: str | None = None,
        tags: dict[str, str] | None = None,
        removed_tags: tuple[str, ...] = (),
    ) -> Sent:
        """Send what the run lacks: parameters, tags, metric values, artifacts and status.

        Args:
            training: True while this process trains it (RUNNING), False once it ended;
                None asks whether a process holds the experiment.
            status: a status to set instead of the one the folder implies (a trial's).
            tags: more tags (a trial's state in its search).
            removed_tags: tags to delete when the run has them (a trial's former state).

        Raises:
            TrackingError: the server cannot be reached or refuses a request.
        """
        try:
            with calling_mlflow(self.target, f"mirror experiment {self.experiment.name!r}"):
                return self.send_missing(training, status, tags or {}, removed_tags)
        except BaseException:
            self.known = None  # read the server's truth again next time
            raise

    def send_missing(
        self, training: bool | None, status: str | None, tags: dict[str, str], removed_tags: tuple[str, ...]
    ) -> Sent:
        from mlflow.entities import Metric, Param, RunTag

        run_id = self.open_run()
        known = self.known = self.known or self.read_known(run_id)
        definition = self.experiment.read_definition()
        sent = Sent()
        params = {
            key: value
            for key, value in records.describe_params(self.experiment, definition).items()
            if key not in known.params
        }
        wanted_tags = {
            **records.describe_tags(self.experiment, definition, read_last(self.experiment.provenance_path)),
            **tags,
        }
        new_tags = {key: value for key, value in wanted_tags.items() if known.tags.get(key) != value}
        points = [
            point
            for point in records.read_points(self.experiment)
            if point.step not in self.read_steps(run_id, known, point.key)
        ]
        self.log_batches(
            run_id,
            [Metric(p.key, p.value, p.timestamp_ms, p.step) for p in points],
            [Param(k, v) for k, v in params.items()],
            [RunTag(k, v) for k, v in new_tags.items()],
        )
        known.params.update(params)
        known.tags.update(new_tags)
        for point in points:
            known.steps[point.key].add(point.step)
        for key in removed_tags:
            if key in known.tags:
                self.client.delete_tag(run_id, key)
                del known.tags[key]
        sent.params, sent.tags, sent.metrics = len(params), len(new_tags) + len(removed_tags), len(points)
        sent.artifacts = self.send_artifacts(run_id, known)
        wanted_status = status or records.describe_status(self.experiment, training)
        if wanted_status != known.status:
            if wanted_status in (records.RUNNING, records.SCHEDULED):
                self.client.update_run(run_id, status=wanted_status)
            else:
                self.client.set_terminated(run_id, status=wanted_status)
            known.status = sent.status = wanted_status
        return sent

    def read_known(self, run_id: str) -> Known:
        run = self.client.get_run(run_id)
        return Known(dict(run.data.params), dict(run.data.tags), {}, None, run.info.status)

    def read_steps(self, run_id: str, known: Known, key: str) -> set[int]:
        """The steps the run has of metric `key`, read from the server on first need into `known`."""
        if key not in known.steps:
            known.steps[key] = {metric.step for metric in self.client.get_metric_history(run_id, key)}
        return known.steps[key]

    def log_batches(self, run_id: str, metrics: list, params: list, tags: list) -> None:
        """log_batch within MLflow's limits per request."""
        while metrics or params or tags:
            batch = {
                "metrics": metrics[: BATCH_LIMITS["metrics"]],
                "params": params[: BATCH_LIMITS["params"]],
                "tags": tags[: BATCH_LIMITS["tags"]],
            }
            self.client.log_batch(run_id, **batch)
            metrics, params, tags = (
                metrics[len(batch["metrics"]) :],
                params[len(batch["params"]) :],
                tags[len(batch["tags"]) :],
            )

    def send_artifacts(self, run_id: str, known: Known) -> int:
        """Upload config.json and the confusion matrices the run lacks; return how many."""
        wanted = records.list_artifacts(self.experiment)
        if known.artifacts is None:
            known.artifacts = self.list_run_artifacts(run_id, {os.path.dirname(path) for path in wanted})
        missing = {path: source for path, source in wanted.items() if path not in known.artifacts}
        for path, source in missing.items():
            folder, name = os.path.split(path)
            with tempfile.TemporaryDirectory(prefix="torchexp-mlflow-") as scratch:
                # config.json is sent as it is; a confusion matrix is drawn under its name.
                local = (
                    source if isinstance(source, str) else draw_confusion_matrix(source, os.path.join(scratch, name))
                )
                if local is not None:
                    self.client.log_artifact(run_id, local, folder or None)
            known.artifacts.add(path)
        return len(missing)

    def list_run_artifacts(self, run_id: str, folders: set[str]) -> set[str]:
        return {info.path for folder in folders for info in self.client.list_artifacts(run_id, folder or None)}


def draw_confusion_matrix(matrix: list[list[int]], path: str) -> str | None:
    """Draw a confusion matrix to a PNG at `path`; None without matplotlib (`torchexp[plots]`)."""
    from torchexp.plots import confusion_matrix_figure

    try:
        figure = confusion_matrix_figure(matrix, [str(index) for index in range(len(matrix))])
    except ImportError:
        return None
    figure.savefig(path)
    return path
