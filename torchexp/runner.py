"""The abstract Runner: the hooks a project writes around its model.

torchexp's loops call these hooks; the loops themselves live in `torchexp.loop` (training)
and `torchexp.evaluation` (validation and test).
"""

import abc
import logging
import warnings
from typing import Any

import numpy as np
import torch

from torchexp.budget import unit_of
from torchexp.config import Config
from torchexp.data import Data
from torchexp.directions import declared_directions
from torchexp.distributed import World
from torchexp.folder import Experiment
from torchexp.logs import format_metrics
from torchexp.metrics import has_stalled
from torchexp.trackers.fanout import RunTrackers

# What numpy makes of JSON values that are not numbers, for the default serve_preprocess.
VALUE_KINDS = {"U": "text", "O": "null, objects or numbers mixed with other values"}


class Runner(abc.ABC):
    """A project's model, optimizer and steps; torchexp runs the loops around them.

    Subclasses implement `init_model`, `init_optimizer`, `train_step` and `test`, and may
    override any other hook. Whatever `init_others` puts in `self.scheduler` is stepped
    (each epoch, or each optimizer step when `scheduler_interval` is "step", or
    "iteration" as it was called first), saved and restored automatically; other state goes
    through `save_states_others` and `load_states_others`.

    `train` calls the hooks in this order:

        init_model, init_optimizer, init_others
        load_states_others                  when resuming from a checkpoint
        train_early_stopping                when resuming after a validated epoch
        for each epoch:
            train_before_epoch_tasks        (not when resuming mid-epoch)
            for each batch:
                train_step                  under autocast; torchexp runs backward and the optimizer
                train_iteration_log         every --log-period optimizer steps
            validation_step                 per validation batch, model in eval mode, no grad
            train_epoch_log
            train_after_epoch_tasks
            (the scheduler steps)
            save_states_others              into the epoch's checkpoint
            train_early_stopping

    Trained by steps (trainer.max_steps), validation, `train_epoch_log` (given the step),
    the checkpoint and `train_early_stopping` come every trainer.validate_every_steps steps
    and at the last, mid-epoch if need be; `train_after_epoch_tasks` at each epoch's end.

    `test` calls `test` with the weights of an epoch loaded, the model in eval mode and
    gradients off; `serve` and `export` call `serve_example`, `serve_preprocess`,
    `serve_forward`, `serve_postprocess` and `serve_page`; `serve` checks instances with `serve_schema`.

    Attributes:
        experiment: paths of the experiment folder.
        config: the validated configuration.
        seed: the experiment's seed.
        data: the project's Data, its loaders loaded.
        logger: the experiment's logger.
        tracker: TensorBoard, metrics.jsonl and the trackers turned on; `tracker.writer` for figures.
        world: this process's rank among torchrun's processes (a single one by default).
        device: the device the model runs on.
        model, optimizer, scheduler: set by the init hooks.
        counters: "epoch" (completed), "iteration" (batches into the current epoch),
            "step" (optimizer steps over the whole run).
        history: "train" and "validation" metrics at each point (epoch end, or validation
            step), each a list of dicts.
        metric_directions: (class) which way metrics are better, e.g. {"r2": "max"}; else by name.
    """

    scheduler_interval = "epoch"
    metric_directions: dict[str, str] = {}

    def __init__(
        self,
        experiment: Experiment,
        config: Config,
        seed: int,
        data: Data,
        logger: logging.Logger,
        tracker: RunTrackers,
        quiet: bool = False,
        world: World = World(),
    ):
        self.experiment = experiment
        self.config = config
        self.seed = seed
        self.data = data
        self.logger = logger
        self.tracker = tracker
        self.quiet = quiet
        self.world = world
        self.device = torch.device("cpu")
        # None until init_model and init_optimizer set them (training checks that they do), but
        # typed as set: the hooks that use them run after, and need no None check each.
        self.model: torch.nn.Module = None  # type: ignore[assignment]
        self.optimizer: torch.optim.Optimizer = None  # type: ignore[assignment]
        self.scheduler: Any = None
        self.counters = {"epoch": 0, "iteration": 0, "step": 0}
        self.history: dict[str, list[dict[str, float]]] = {"train": [], "validation": []}

    def get_conf(self, *keys: str) -> Any:
        """Return a configuration value, e.g. `get_conf("training", "lr")`."""
        return self.config.get(*keys)

    @abc.abstractmethod
    def init_model(self, device: torch.device) -> None:
        """Create `self.model` on `device`."""

    @abc.abstractmethod
    def init_optimizer(self, device: torch.device) -> None:
        """Create `self.optimizer` for `self.model`."""

    def init_others(self, device: torch.device) -> None:
        """Create anything else, e.g. `self.scheduler`; called after `init_optimizer`."""

    @abc.abstractmethod
    def train_step(self, batch: Any, device: torch.device) -> torch.Tensor | dict[str, torch.Tensor]:
        """Compute one batch's loss; torchexp runs backward and the optimizer.

        Returns:
            The loss, or a dict of metrics holding it under "loss". Metrics are averaged
            over the epoch's samples, or by a "weight" the dict holds (the batch's tokens,
            say), by which accumulated gradients weigh each batch's loss too (`torchexp.accumulation`).
        """

    def validation_step(self, batch: Any, device: torch.device) -> torch.Tensor | dict[str, torch.Tensor]:
        """Compute one validation batch's metrics; by default `train_step`'s.

        Called with the model in eval mode, under `torch.no_grad()`.
        """
        return self.train_step(batch, device)

    @abc.abstractmethod
    def test(self, epoch: int, device: torch.device) -> dict[str, Any]:
        """Evaluate `self.model` (weights of `epoch` loaded) on the test set.

        Returns:
            JSON data saved to results/; its numbers also go to TensorBoard and metrics.jsonl.
        """

    def train_before_epoch_tasks(self, device: torch.device) -> None:
        """Called before each epoch's first training iteration."""

    def train_after_epoch_tasks(self, device: torch.device) -> None:
        """Called after each epoch's validation and logs, before its checkpoint."""

    def train_early_stopping(self) -> bool:
        """Return True to stop training; by default after `trainer.early_stopping_patience`
        epochs without a better `trainer.monitor` (by `metric_directions`, else by its name)."""
        if (patience := self.get_conf("trainer", "early_stopping_patience")) is None:
            return False
        return has_stalled(self.history, self.get_conf("trainer", "monitor"), declared_directions(type(self)), patience)

    def train_iteration_log(self, metrics: dict[str, float]) -> None:
        """Log one iteration's metrics, every `--log-period` iterations."""
        self.tracker.log_scalars("iteration", self.counters["step"], metrics, epoch=self.counters["epoch"] + 1)
        self.logger.debug(f"iteration {self.counters['step']}: {format_metrics(metrics)}")

    def train_epoch_log(
        self, epoch: int, train: dict[str, float], validation: dict[str, float], seconds: float
    ) -> None:
        """Log an epoch's train and validation metrics (a step's, for an experiment trained
        by steps: `epoch` is then the step)."""
        learning_rate, unit = self.optimizer.param_groups[0]["lr"], unit_of(self.config.data)
        where = {"epoch": epoch} if unit == "epoch" else {"unit": "step"}
        self.tracker.log_scalars("train", epoch, {**train, "lr": learning_rate}, **where, seconds=round(seconds, 3))
        if validation:
            self.tracker.log_scalars("validation", epoch, validation, **where)
        self.tracker.flush()
        line = f"{unit} {epoch}: train {format_metrics(train)}"
        if validation:
            line += f"; validation {format_metrics(validation)}"
        self.logger.info(f"{line}; lr {learning_rate:.4g}; {seconds:.1f} s")

    def save_states_others(self) -> dict[str, Any]:
        """Return extra state (tensors and plain data) to keep in each checkpoint."""
        return {}

    def load_states_others(self, state: dict[str, Any]) -> None:
        """Restore what `save_states_others` returned."""

    def serve_example(self) -> Any:
        """Return one example request instance (JSON data), as a client would send it.

        `serve` warms the model up with it, `export` traces the model with it, and the
        server's OpenAPI page shows it. None (the default) means the project has none.
        """
        return None

    def serve_schema(self) -> Any:
        """Return a pydantic type or JSON Schema (dict) that instances must fit before `serve_preprocess`, or None."""

    def serve_preprocess(self, instance: Any) -> torch.Tensor:
        """Turn one request instance (JSON data) into the model's input for it, without
        the batch dimension; by default a float32 tensor of the nested lists of numbers.

        Raises:
            ValueError: the instance is malformed; the message is one sentence for the client.
        """
        # numpy reads nested lists in C, twice as fast as torch.as_tensor; it does not refuse
        # null or text by itself, so the kind of values is checked.
        try:
            array = np.asarray(instance)
        except ValueError:  # rows of unequal lengths
            raise ValueError("an instance must be an array of numbers, in rows of equal length") from None
        if array.dtype.kind not in "biuf":
            kind = VALUE_KINDS.get(array.dtype.kind, array.dtype.name)
            raise ValueError(f"an instance must be an array of numbers, not of {kind}")
        return torch.from_numpy(array.astype(np.float32))

    def serve_forward(self, batch: torch.Tensor) -> torch.Tensor:
        """Run the model on a batch of preprocessed instances (under inference mode), by
        default `self.model(batch)`; a generative model runs its sampling loop here. Only
        `serve --runtime torch` calls it: an ONNX export runs `self.model` alone."""
        return self.model(batch)

    def serve_postprocess(self, output: torch.Tensor, model_input: torch.Tensor, instance: Any) -> Any:
        """Turn the model's output for one instance into the JSON prediction; by default its values.

        Args:
            output: the model's output row for the instance.
            model_input: what `serve_preprocess` made of it, e.g. to show what the model saw.
            instance: the instance as the client sent it.
        """
        return output.tolist()

    def serve_page(self) -> str | None:
        """Return the folder of the project's web page for `serve`, or None (the default).

        It holds `index.html` (where `{{MODEL_NAME}}` becomes the served model's name) and
        the files it loads, served under /static/. A browser opening / gets the page; API
        clients get the protocol's liveness there; without a page, a browser gets /docs.
        """
        return None

    def train(self, device: torch.device, max_epochs: int, log_period: int, epoch: int | None = None) -> None:
        """Deprecated: use `torchexp.loop.train(runner, ...)`, until torchexp 0.3."""
        from torchexp.loop import train

        message = "Runner.train is deprecated: use torchexp.loop.train(runner, ...)"
        warnings.warn(message, DeprecationWarning, stacklevel=2)
        train(self, device, max_epochs, log_period, epoch)

    def run_test(self, device: torch.device, epoch: int, release: bool) -> dict[str, Any]:
        """Deprecated: use `torchexp.evaluation.run_test(runner, ...)`, until torchexp 0.3."""
        from torchexp.evaluation import run_test

        message = "Runner.run_test is deprecated: use torchexp.evaluation.run_test(runner, ...)"
        warnings.warn(message, DeprecationWarning, stacklevel=2)
        return run_test(self, device, epoch, release)
