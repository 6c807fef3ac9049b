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
from torchexp.project import load_class
from torchexp.releases import Epoch, find_weights
from torchexp.tracking import Tracker, make_logger


def resolve_classes(experiment: Experiment, record: dict, runner_class: Any, data_class: Any) -> tuple[type, type | None]:
    """Return the project's Runner and Data classes: those given, else those `init` recorded.

    Raises:
        ExperimentError: none are given and the experiment predates recorded classes.
    """
    recorded = record.get("classes") or {}
    runner_class = runner_class or recorded.get("runner")
    data_class = data_class or recorded.get("data")
    if runner_class is None:
        raise ExperimentError(
            f"experiment {experiment.name!r} was created before torchexp recorded its project's classes: "
            "pass load_model(runner_class=YourRunner, data_class=YourData)"
        )
    try:
        return load_class(runner_class), load_class(data_class) if data_class is not None else None
    except (ImportError, AttributeError) as error:
        raise ExperimentError(f"the project classes of experiment {experiment.name!r} cannot be imported: {error}") from error


def make_inference_runner(experiment: Experiment, record: dict, runner_class: Any = None, data_class: Any = None) -> Any:
    """Build the project's Runner for inference: no data set loaded, nothing written.

    Args:
        experiment: the experiment, which must exist.
        record: the configuration record the weights were trained with (config.json, or
            the one a release carries).
        runner_class: the Runner class or "module:Class"; default: the one `init` recorded.
        data_class: likewise for Data; None leaves the runner without Data.
    """
    runner_type, data_type = resolve_classes(experiment, record, runner_class, data_class)
    logger = make_logger(f"{experiment.name}.inference", None, "quiet")
    config = Config(fill_trainer_defaults(record["config"]))
    data = None
    if data_type is not None:
        data = data_type(config, record["seed"], logger)
        data.state = experiment.read_data_state()
    tracker = Tracker(experiment.tensorboard_path, experiment.metrics_path, enabled=False)
    return runner_type(experiment, config, record["seed"], data, logger, tracker, quiet=True)


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


def load_runner(experiment: Experiment, info: checkpoints.Checkpoint, device: Any, runner_class: Any = None, data_class: Any = None) -> tuple[Any, dict]:
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

    state = info.load()
    record = state if info.kind == "release" else experiment.read_definition()
    runner = make_inference_runner(experiment, record, runner_class, data_class)
    with torch.random.fork_rng(devices=[]):
        load_weights(runner, device, state, info.name)
    return runner, state
