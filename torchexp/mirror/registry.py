"""Releases in the MLflow Model Registry, as models that answer a client's instances: nothing pickled.

A release is saved as an MLflow pyfunc model "from code" (`release_model.py`, which MLflow
copies into the model and runs where it is loaded): its artifacts are the experiment with
the release alone (config.json, data.json, the release checkpoint and its sidecar), and its
`predict` answers the instances a client would POST to `serve`, through the project's
serving hooks (`torchexp.Predictor`). The model is uploaded into the experiment's run as
`release-<epoch>` with an input example (the project's `serve_example`) and the packages it
needs, and registered as a version of a registered model: the project and experiment's
name (`mnist_classifier-fast`) unless `--registered-model` names another. The version is
tagged with the release's epoch and checkpoint SHA-256; `sync` registers a release only once.

Releases were registered as their ONNX export before (torchexp 0.2), a model that took the
project's preprocessed tensors rather than a client's instances; `export --format onnx`
still writes that export.
"""

import contextlib
import importlib.metadata
import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from typing import Any

from torchexp import checkpoints
from torchexp.errors import TrackingError, first_line
from torchexp.folder import Experiment
from torchexp.mirror.runs import RunMirror, calling_mlflow
from torchexp.mirror.state import read_state, updating_state
from torchexp.mirror.target import MlflowTarget
from torchexp.project import Project, class_spec
from torchexp.sidecar import sidecar_path
from torchexp.version import __version__

MODEL_CODE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "release_model.py")
PROGRESS_BAR = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"  # MLflow's bar as it copies the release's files into the model
ANY_TYPE_WARNING = "Any type hint is inferred as AnyType"  # how MLflow's warning about `list[Any]` begins


def default_model_name(experiment: Experiment, definition: dict) -> str:
    """The project's package and the experiment's name: `mnist_classifier-fast`."""
    runner = (definition.get("classes") or {}).get("runner") or ""
    package = runner.partition(":")[0].split(".")[0]
    return f"{package}-{experiment.name}" if package else experiment.name


def choose_model_name(experiment: Experiment, epoch: int, asked: str | None) -> str:
    """The registered model of a release: `asked`, the name asked when the release was made
    (kept in mlflow.json), or the default."""
    return (
        asked
        or read_state(experiment.path)["registered_models"].get(str(epoch))
        or default_model_name(experiment, experiment.read_definition())
    )


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
            raise TrackingError(
                f"MLflow refuses the registered model name {name!r}: {describe_refusal(error)}"
            ) from error
        if error.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise TrackingError(
                f"MLflow at {target.uri} failed to find the registered model {name!r}: {first_line(error)}"
            ) from error
    except Exception as error:
        raise TrackingError(
            f"MLflow at {target.uri} failed to find the registered model {name!r}: {first_line(error)}"
        ) from error
    try:
        client.create_registered_model(name)
    except MlflowException as error:
        if error.error_code == "INVALID_PARAMETER_VALUE":
            raise TrackingError(
                f"MLflow refuses the registered model name {name!r}: {describe_refusal(error)}"
            ) from error
        if error.error_code != "RESOURCE_ALREADY_EXISTS":  # another process created it meanwhile
            raise TrackingError(
                f"MLflow at {target.uri} failed to create the registered model {name!r}: {first_line(error)}"
            ) from error


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


def register_release(
    client: Any, mirror: RunMirror, project: Project, release: checkpoints.Checkpoint, name: str, logger: logging.Logger
) -> tuple[Any, bool]:
    """Register a release as a version of `name`, unless it is already; return the version
    and whether it is new.

    Args:
        client: an MlflowClient.
        mirror: the experiment's run.
        project: the project, whose installed distribution the model requires.
        release: the release checkpoint.
        name: the registered model.
        logger: the experiment's logger; the model's requirements go to its log file.

    Raises:
        TrackingError: MLflow cannot be reached or refuses the model.
        TorchexpError: the release cannot be loaded, or the project's hooks fail on its example.
    """
    experiment, target = mirror.experiment, mirror.target
    run_id = mirror.open_run()
    ensure_registered_model(client, target, name)
    with calling_mlflow(target, f"look up the versions of {name!r}"):
        version = find_version(client, name, run_id, release.epoch)
    if version is not None:
        return version, False
    artifact_path = f"release-{release.epoch}"
    with tempfile.TemporaryDirectory(prefix="torchexp-mlflow-") as scratch:
        requirements = list_requirements(project)
        logger.debug(f"the MLflow model of the release of epoch {release.epoch} requires {', '.join(requirements)}")
        save_release_model(experiment, release, requirements, scratch)
        assert release.sidecar is not None, "the copy loaded, verified against the release's sidecar"
        with calling_mlflow(target, f"register the release of epoch {release.epoch} as {name!r}"):
            client.log_artifacts(run_id, os.path.join(scratch, "model"), artifact_path)
            tags = {
                "epoch": str(release.epoch),
                "checkpoint_sha256": release.sidecar["sha256"],
                "experiment": experiment.name,
            }
            version = client.create_model_version(name, f"runs:/{run_id}/{artifact_path}", run_id=run_id, tags=tags)
    return version, True


def save_release_model(
    experiment: Experiment, release: checkpoints.Checkpoint, requirements: list[str], scratch: str
) -> None:
    """Save the release as an MLflow pyfunc model from code in `scratch`/model.

    The release's experiment is copied into `scratch`/experiments first, and a predictor
    loaded from that copy gives the input example, so that what is uploaded is known to load.

    Raises:
        CheckpointError, ExperimentError, ProjectError: the copy does not load, or the
            project's hooks fail on its example.
    """
    import mlflow.pyfunc

    from torchexp.predictor import open_predictor
    from torchexp.serving.options import DEFAULTS

    copy = copy_release(experiment, release, os.path.join(scratch, "experiments"))
    example = open_predictor(copy, "release", "cpu", DEFAULTS.max_batch_size).runner.serve_example()
    with quiet_saving():
        mlflow.pyfunc.save_model(
            os.path.join(scratch, "model"),
            python_model=MODEL_CODE,
            artifacts={"experiment": copy.path},
            input_example=None if example is None else [example],
            pip_requirements=requirements,
            # The settings a loader may change (mlflow.pyfunc.load_model(..., model_config=...)).
            model_config={"device": DEFAULTS.device, "max_batch_size": DEFAULTS.max_batch_size},
        )


def copy_release(experiment: Experiment, release: checkpoints.Checkpoint, experiments_path: str) -> Experiment:
    """Copy what the release needs to answer (config.json, data.json, the release checkpoint
    and its sidecar) into an experiment of the same name under `experiments_path`."""
    copy = Experiment(experiments_path, experiment.name)
    os.makedirs(copy.checkpoints_path)
    copies = [(experiment.config_path, copy.config_path), (experiment.data_state_path, copy.data_state_path)]
    for path in (release.path, sidecar_path(release.path)):
        copies.append((path, os.path.join(copy.checkpoints_path, os.path.basename(path))))
    for source, destination in copies:
        # A missing file is left missing: the predictor loaded from the copy names it.
        if os.path.exists(source):
            shutil.copyfile(source, destination)
    return copy


def list_requirements(project: Project) -> list[str]:
    """The packages the model needs where it is loaded, as installed here: torchexp with its
    serve extra, torch, and the project's distribution when it is installed as one."""
    requirements = [f"torchexp[serve]=={__version__}", f"torch=={importlib.metadata.version('torch')}"]
    package = class_spec(project.runner_class).partition(":")[0].split(".")[0]
    for distribution in importlib.metadata.packages_distributions().get(package, []):
        if distribution != "torchexp":
            requirements.append(f"{distribution}=={importlib.metadata.version(distribution)}")
    return requirements


@contextlib.contextmanager
def quiet_saving() -> Iterator[None]:
    """Within the block, MLflow draws no progress bar as it copies the release's files into
    the model, and its warning that it does not check instances against `list[Any]` is
    dropped: the project's `serve_preprocess` checks them. Other warnings are shown after it.

    MLflow warns within `warnings.catch_warnings` blocks of its own that show every warning
    once, so that no filter set here would hold; the warnings are recorded instead.
    """
    previous = os.environ.get(PROGRESS_BAR)
    os.environ[PROGRESS_BAR] = "false"
    try:
        with warnings.catch_warnings(record=True) as caught:
            yield
    finally:
        if previous is None:
            os.environ.pop(PROGRESS_BAR, None)
        else:
            os.environ[PROGRESS_BAR] = previous
    for warning in caught:
        if ANY_TYPE_WARNING not in str(warning.message):
            warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
