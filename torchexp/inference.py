"""Using a trained model outside training: the project's Runner builds it, a checkpoint fills it.

`Experiments.load_model`, `serve` and `export` all come here. The Runner is built without
data sets: its Data gets the state `init` saved (data.json) and nothing else, its logger
writes no file and its tracker writes nothing, so using a model never changes the experiment.
Weights come through the same verified, `weights_only=True` path as `test`.
"""

import os
from typing import Any

from torchexp import checkpoints
from torchexp.app import load_class
from torchexp.config import Config, fill_trainer_defaults
from torchexp.errors import CheckpointError, ExperimentError
from torchexp.experiment import Experiment
from torchexp.tracking import Tracker, make_logger

Epoch = int | str | None  # an epoch number, "release" (the latest release) or None (the latest checkpoint)


def find_weights(experiment: Experiment, epoch: Epoch = None) -> checkpoints.CheckpointInfo:
    """Return the checkpoint whose weights `epoch` designates.

    Args:
        experiment: the experiment, which must exist.
        epoch: N for epoch N's standard checkpoint (its release when it has only that),
            "release" for the latest release, None for the latest standard or release one.

    Raises:
        CheckpointError: there is no such checkpoint; the message lists those that exist.
    """
    experiment.check_exists()
    folder = experiment.checkpoints_path
    if isinstance(epoch, int) and not isinstance(epoch, bool):
        return checkpoints.find_checkpoint(folder, epoch, ("standard", "release"))
    if epoch not in (None, "release"):
        raise CheckpointError(f"epoch {epoch!r} is not valid: pass an epoch number, 'release' or None for the latest")
    kinds = ("release",) if epoch == "release" else ("standard", "release")
    found = checkpoints.list_checkpoints(folder, kinds)
    if not found:
        hint = "create one with create_release" if epoch == "release" else "train it first"
        raise CheckpointError(f"experiment {experiment.name!r} has no {' or '.join(kinds)} checkpoint yet: {hint}")
    latest = found[-1].epoch
    return next(info for kind in kinds for info in found if info.epoch == latest and info.kind == kind)


def find_release(experiment: Experiment, epoch: int | None) -> checkpoints.CheckpointInfo:
    """Return the release checkpoint of `epoch`, or the latest release when it is None.

    Raises:
        CheckpointError: there is no such release; the message lists the releases and
            says how to make one.
    """
    releases = checkpoints.list_checkpoints(experiment.checkpoints_path, ("release",))
    if epoch is None or not releases:
        return find_weights(experiment, "release")  # the latest; without any, it says how to make one
    for info in releases:
        if info.epoch == epoch:
            return info
    raise CheckpointError(
        f"epoch {epoch} of experiment {experiment.name!r} has no release checkpoint "
        f"(releases: {checkpoints.describe_epochs(releases)}): create one with create_release --epoch {epoch}"
    )


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


def load_runner(experiment: Experiment, info: checkpoints.CheckpointInfo, device: Any, runner_class: Any = None, data_class: Any = None) -> tuple[Any, dict]:
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

    state = checkpoints.load_checkpoint(info)
    record = state if info.kind == "release" else experiment.read_record()
    runner = make_inference_runner(experiment, record, runner_class, data_class)
    with torch.random.fork_rng(devices=[]):
        runner.load_weights(device, state, os.path.basename(info.path))
    return runner, state
