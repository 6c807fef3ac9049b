"""Before a new study writes anything: check on one batch that the project reports its metric.

A misspelled `--metric` would otherwise be found once the first trial has trained to its
first validation, after the study's folder, journal and first trial were written. As
Lightning's sanity check does, the project's step (`validation_step` for a validation
metric, `train_step` for a train one) runs here on the first batch of a throwaway Runner:
the space's base configuration and the study's seed, its Data created and loaded once
without workers, its model and optimizer built, no gradient and no optimizer step, in a
temporary folder that is then deleted. The metrics the step returns are those its epochs
will report. "loss" needs no check: every step returns it.
"""

import json
import tempfile
from typing import Any

from torchexp.config import Config, fill_trainer_defaults
from torchexp.errors import ConfigError, ProjectError
from torchexp.folder import Experiment
from torchexp.hooks import project_errors
from torchexp.logs import close_logger, make_logger
from torchexp.metrics import parse_metric
from torchexp.project import Project, check_data_path, import_project_class
from torchexp.search.options import flag
from torchexp.trackers.fanout import RunTrackers

STEPS = {"train": "train_step", "validation": "validation_step"}  # the hook whose metrics a split reports


def check_metric_reported(project: Project, conf: dict, seed: int, metric: str, device: str) -> None:
    """Raise unless the project's step for the metric's split returns the metric.

    Args:
        project: the project whose experiments the trials are.
        conf: a trial's configuration but for its parameters: the space's base one, validated.
        seed: the study's seed.
        metric: the study's metric, "split.name".
        device: a --device value.

    Raises:
        ConfigError: the step does not return the metric; the message lists those it does.
        ProjectError: a hook failed, or the step returned no scalar loss.
        DataError, DeviceError: the data or the device is missing.
    """
    split, name = parse_metric(metric)
    if name == "loss":
        return
    from torchexp.devices import resolve_device

    torch_device = resolve_device(device)
    check_data_path(project.data_path)
    logger = make_logger("search-metric-check", None, "quiet")
    try:
        with tempfile.TemporaryDirectory() as folder, project_errors(logger):
            runner = build_runner(project, Experiment(folder, "metric-check"), conf, seed, logger)
            reported = step_metrics(runner, split, torch_device)
    except ProjectError as error:
        checking = f"checking {flag('metric')} {metric} on one {split} batch before the first trial"
        raise ProjectError(f"{checking}: {error}") from error
    finally:
        close_logger(logger)
    if name not in reported:
        hook = f"{import_project_class(project.runner_class).__name__}.{STEPS[split]}"
        found = ", ".join(f"{split}.{key}" for key in sorted(reported))
        raise ConfigError(
            f"metric {metric} is not among the metrics {hook} returns ({found or 'none'}): "
            f"choose one of them with {flag('metric')}; nothing was written"
        )


def build_runner(project: Project, experiment: Experiment, conf: dict, seed: int, logger: Any) -> Any:
    """The project's Runner on a Data that `create` and `load_datasets` prepared in memory,
    its loaders without workers, for `experiment` (never created) and a tracker that writes nothing."""
    data = import_project_class(project.data_class)(Config(conf), seed, logger)
    data.state = json.loads(json.dumps(data.create(project.data_path)))  # as data.json would give it back
    data.load_datasets(project.data_path)
    data.num_workers = 0
    data.load_loaders(project.data_path, 0)
    tracker = RunTrackers(experiment.tensorboard_path, experiment.metrics_path, enabled=False)
    runner_class = import_project_class(project.runner_class)
    return runner_class(experiment, Config(fill_trainer_defaults(conf)), seed, data, logger, tracker, quiet=True)


def step_metrics(runner: Any, split: str, device: Any) -> set[str]:
    """The names of the metrics the split's step returns on the split's first batch, with the
    model built as training builds it (in eval mode for validation), without gradients;
    none when the split has no loader or no batch."""
    import torch

    from torchexp.loaders import position_loader, prepare_loaders
    from torchexp.rng import seed_everything
    from torchexp.steps import as_metrics, prepare_batch
    from torchexp.train_loader import reading
    from torchexp.training_state import build_model

    loader = runner.data.loaders.get(split)
    if loader is None:
        return set()
    runner.device = device
    seed_everything(runner.seed)
    build_model(runner, device)
    runner.init_optimizer(device)
    runner.init_others(device)
    prepare_loaders(runner.data.loaders, device, 0, 1)
    position_loader(loader, 1, 0)
    batch = next(reading(loader, split), None)
    if batch is None:
        return set()
    runner.model.train(split == "train")
    batch = prepare_batch(batch, runner.get_conf("trainer", "channels_last"))
    with torch.no_grad():
        output = getattr(runner, STEPS[split])(batch, device)
    return set(as_metrics(output, runner, STEPS[split])) - {"weight"}
