"""Releases in the MLflow Model Registry, as ONNX models: nothing pickled.

A release is registered from its ONNX export (`torchexp.export`, with its check on real
test samples), saved in the `mlflow.onnx` flavour with a signature and an input example
(the project's `serve_example`), uploaded into the experiment's run as `release-<epoch>`
and registered as a version of a registered model: the project and experiment's name
(`mnist_classifier-fast`) unless `--registered-model` names another. The version is tagged
with the release's epoch and checkpoint SHA-256; `sync` registers a release only once.
"""

import logging
import os
import tempfile
from typing import Any

from torchexp import checkpoints
from torchexp.errors import TrackingError, first_line
from torchexp.folder import Experiment
from torchexp.mirror.runs import RunMirror, calling_mlflow
from torchexp.mirror.state import read_state, updating_state
from torchexp.mirror.target import MlflowTarget
from torchexp.project import Project


def default_model_name(experiment: Experiment, definition: dict) -> str:
    """The project's package and the experiment's name: `mnist_classifier-fast`."""
    runner = (definition.get("classes") or {}).get("runner") or ""
    package = runner.partition(":")[0].split(".")[0]
    return f"{package}-{experiment.name}" if package else experiment.name


def choose_model_name(experiment: Experiment, epoch: int, asked: str | None) -> str:
    """The registered model of a release: `asked`, the name asked when the release was made
    (kept in mlflow.json), or the default."""
    return asked or read_state(experiment.path)["registered_models"].get(str(epoch)) or default_model_name(experiment, experiment.read_definition())


def ensure_registered_model(client: Any, target: MlflowTarget, name: str) -> None:
    """Create the registered model `name` unless it exists.

    Raises:
        TrackingError: MLflow refuses the name (it names the rule broken), or cannot be reached.
    """
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
        return
    except MlflowException as error:
        if error.error_code == "INVALID_PARAMETER_VALUE":
            raise TrackingError(f"MLflow refuses the registered model name {name!r}: {describe_refusal(error)}") from error
        if error.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise TrackingError(f"MLflow at {target.uri} failed to find the registered model {name!r}: {first_line(error)}") from error
    except Exception as error:
        raise TrackingError(f"MLflow at {target.uri} failed to find the registered model {name!r}: {first_line(error)}") from error
    try:
        client.create_registered_model(name)
    except MlflowException as error:
        if error.error_code == "INVALID_PARAMETER_VALUE":
            raise TrackingError(f"MLflow refuses the registered model name {name!r}: {describe_refusal(error)}") from error
        if error.error_code != "RESOURCE_ALREADY_EXISTS":  # another process created it meanwhile
            raise TrackingError(f"MLflow at {target.uri} failed to create the registered model {name!r}: {first_line(error)}") from error


def describe_refusal(error: Any) -> str:
    """An MlflowException's first line without the error code a server puts in front."""
    return first_line(error).removeprefix(f"{error.error_code}: ")


def remember_model_name(experiment: Experiment, epoch: int, name: str) -> None:
    """Keep the registered model asked for a release, for `sync` to register it there."""
    with updating_state(experiment.path) as state:
        state["registered_models"][str(epoch)] = name


def find_version(client: Any, name: str, run_id: str, epoch: int) -> Any:
    """The version of `name` that registers the release of `epoch` from `run_id`, or None."""
    for version in client.search_model_versions(f"name = '{name}'"):
        if version.run_id == run_id and version.tags.get("epoch") == str(epoch):
            return version
    return None


def register_release(client: Any, mirror: RunMirror, project: Project, release: checkpoints.Checkpoint, name: str, logger: logging.Logger) -> tuple[Any, bool]:
    """Register a release as a version of `name`, unless it is already; return the version
    and whether it is new.

    Raises:
        TrackingError: MLflow cannot be reached or refuses the model.
        TorchexpError: the release cannot be exported to ONNX.
    """
    experiment, target = mirror.experiment, mirror.target
    run_id = mirror.open_run()
    ensure_registered_model(client, target, name)
    with calling_mlflow(target, f"look up the versions of {name!r}"):
        version = find_version(client, name, run_id, release.epoch)
    if version is not None:
        return version, False
    onnx_path = export_onnx(project, experiment, release, logger)
    artifact_path = f"release-{release.epoch}"
    with tempfile.TemporaryDirectory(prefix="torchexp-mlflow-") as scratch:
        save_onnx_model(experiment, release, onnx_path, os.path.join(scratch, "model"))
        with calling_mlflow(target, f"register the release of epoch {release.epoch} as {name!r}"):
            client.log_artifacts(run_id, os.path.join(scratch, "model"), artifact_path)
            tags = {"epoch": str(release.epoch), "checkpoint_sha256": release.sidecar["sha256"], "experiment": experiment.name}
            version = client.create_model_version(name, f"runs:/{run_id}/{artifact_path}", run_id=run_id, tags=tags)
    return version, True


def export_onnx(project: Project, experiment: Experiment, release: checkpoints.Checkpoint, logger: logging.Logger) -> str:
    """The release's ONNX export, written (and checked) unless a current one exists."""
    from torchexp.export import DEFAULT_CHECK_SAMPLES, export_experiment, export_path
    from torchexp.sidecar import read_sidecar

    path = export_path(experiment, release.epoch, "onnx")
    existing = read_sidecar(path) if os.path.isfile(path) else None
    if existing is not None and existing.get("release_sha256") == release.sidecar["sha256"]:
        return path
    return export_experiment(project, experiment, release.epoch, "onnx", DEFAULT_CHECK_SAMPLES, logger)


def save_onnx_model(experiment: Experiment, release: checkpoints.Checkpoint, onnx_path: str, folder: str) -> None:
    """Save the ONNX export as an MLflow model in `folder`, with a signature and an input
    example from the project's example instance."""
    import mlflow.onnx
    import onnx
    import torch
    from mlflow.models import infer_signature

    from torchexp.export import example_input, open_onnx_session
    from torchexp.inference import load_runner

    runner, _ = load_runner(experiment, release, torch.device("cpu"))
    example = example_input(runner).numpy()
    output = open_onnx_session(onnx_path, 1).run(None, {"input": example})[0]
    model = onnx.load(onnx_path)
    # Named as in the ONNX graph, so that /invocations takes {"inputs": {"input": [...]}}.
    signature = infer_signature({"input": example}, {"output": output})
    mlflow.onnx.save_model(model, folder, signature=signature, input_example={"input": example})
