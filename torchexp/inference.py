"""Using a trained model outside training: the project's Runner builds it, a checkpoint fills it.

`Experiments.load_model`, `serve` and `export` all come here. The Runner is built without
data sets: its Data gets the state `init` saved (data.json) and nothing else, its logger
writes no file and its tracker writes nothing, so using a model never changes the experiment.
Weights come through the same verified, `weights_only=True` path as `test`.
"""

from typing import Any

from torchexp import checkpoints
from torchexp.config import Config, fill_trainer_defaults
from torchexp.errors import ExperimentError
from torchexp.folder import Experiment
from torchexp.hooks import project_errors
from torchexp.logs import make_logger
from torchexp.project import class_spec, describe_import_failure, load_class
from torchexp.releases import Epoch, find_weights
from torchexp.trackers.fanout import RunTrackers


def resolve_classes(
    experiment: Experiment, definition: dict, runner_class: Any, data_class: Any
) -> tuple[type, type | None]:
    """Return the project's Runner and Data classes: those given, else those `init` recorded.

    Raises:
        ExperimentError: none are given and the experiment predates recorded classes, or
            they cannot be imported here; the message names the project's root and the fix.
    """
    recorded = definition.get("classes") or {}
    runner_class = runner_class or recorded.get("runner")
    data_class = data_class or recorded.get("data")
    if runner_class is None:
        raise ExperimentError(
            f"experiment {experiment.name!r} was created before torchexp recorded its project's classes: "
            "pass load_model(runner_class=YourRunner, data_class=YourData)"
        )
    return import_class(experiment, definition, runner_class), import_class(
        experiment, definition, data_class
    ) if data_class is not None else None


def import_class(experiment: Experiment, definition: dict, spec: Any) -> type:
    """Import one of the project's classes; say where the project is when it cannot be.

    Raises:
        ExperimentError: it cannot be imported here.
    """
    try:
        return load_class(spec)
    except (ImportError, AttributeError) as error:
        reason = describe_import_failure(class_spec(spec), definition.get("project_root"), error)
        raise ExperimentError(
            f"the project classes of experiment {experiment.name!r} cannot be imported: {reason}"
        ) from error


def make_inference_runner(
    experiment: Experiment, definition: dict, runner_class: Any = None, data_class: Any = None
) -> Any:
    """Build the project's Runner for inference: no data set loaded, nothing written.

    Its Data holds the state `init` saved (data.json) and nothing else: the inference
    contract of `torchexp.Data`.

    Args:
        experiment: the experiment, which must exist.
        definition: the definition the weights were trained with (config.json, or the one
            a release carries).
        runner_class: the Runner class or "module:Class"; default: the one `init` recorded.
        data_class: likewise for Data; None leaves the runner without Data.

    Raises:
        ProjectError: the project's constructors failed; the message names the one.
    """
    runner_type, data_type = resolve_classes(experiment, definition, runner_class, data_class)
    logger = make_logger(f"{experiment.name}.inference", None, "quiet")
    config = Config(fill_trainer_defaults(definition["config"]))
    tracker = RunTrackers(experiment.tensorboard_path, experiment.metrics_path, enabled=False)
    with project_errors(inference=True):
        data = None
        if data_type is not None:
            data = data_type(config, definition["seed"], logger)
            data.state = experiment.read_data_state()
        return runner_type(experiment, config, definition["seed"], data, logger, tracker, quiet=True)


def load_inference_runner(
    experiment: Experiment, epoch: Epoch = None, device: str = "cpu", runner_class: Any = None, data_class: Any = None
) -> Any:
    """Return the project's Runner with the weights of `epoch` loaded into `runner.model`, in eval mode.

    A release carries its own configuration, seed and classes; other checkpoints use
    config.json. Building the model leaves the caller's random generators as they were.

    Raises:
        CheckpointError: no such checkpoint, or it is corrupt, unsafe or does not fit.
        ExperimentError: the project's classes are unknown or cannot be imported.
        DeviceError: `device` does not exist here.
    """
    from torchexp.devices import resolve_device

    info = find_weights(experiment, epoch)
    runner, _ = load_runner(experiment, info, resolve_device(device), runner_class, data_class)
    return runner


def load_runner(
    experiment: Experiment, info: checkpoints.Checkpoint, device: Any, runner_class: Any = None, data_class: Any = None
) -> tuple[Any, dict]:
    """Build the project's Runner for checkpoint `info` and load its weights on the torch
    `device`, model in eval mode; return it with the checkpoint's state.

    A release carries its own configuration, seed and classes; other checkpoints use
    config.json. Building the model draws random initial weights: the caller's random
    generators are left as they were.

    Raises:
        CheckpointError: the checkpoint is corrupt, unsafe or does not fit the model.
        ExperimentError: the project's classes are unknown or cannot be imported.
    """
    import torch

    from torchexp.training_state import load_weights

    state = info.load(weights_only=True)
    definition = state if info.kind == "release" else experiment.read_definition()
    runner = make_inference_runner(experiment, definition, runner_class, data_class)
    with torch.random.fork_rng(devices=[]), project_errors(inference=True):
        load_weights(runner, device, state, info.name)
    return runner, state
