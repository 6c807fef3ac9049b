"""The abstract Runner: a project's model and steps, and the train and test pipelines."""

import abc
import contextlib
import logging
import os
import signal
import time
from typing import Any, Callable, Iterator

import torch

from torchexp import checkpoints
from torchexp.config import Config
from torchexp.data import Data
from torchexp.distributed import World, any_across, gather_objects, sum_across
from torchexp.errors import CheckpointError, DistributedError, StorageError, TrainingInterrupted, first_line
from torchexp.folder import Experiment
from torchexp.hparams import recording_hparams, write_hparams
from torchexp.memory import keep_freed_memory
from torchexp.precision import PrecisionChoice, choose_precision
from torchexp.rng import capture_rng_states, deterministic_algorithms, restore_rng_states, seed_everything
from torchexp.files import remove_quietly, write_json_atomic
from torchexp.tracking import Tracker, format_metrics, progress_bar

PRECISIONS = {"bf16": torch.bfloat16, "fp16": torch.float16}


class Runner(abc.ABC):
    """A project's model, optimizer and steps; torchexp runs the loops around them.

    Subclasses implement `init_model`, `init_optimizer`, `train_step` and `test`, and may
    override any hook. Whatever `init_others` puts in `self.scheduler` is stepped (each
    epoch, or each optimizer step when `scheduler_interval` is "iteration"), saved and
    restored automatically; other state goes through `save_states_others` and
    `load_states_others`.

    Attributes:
        experiment: paths of the experiment folder.
        config: the validated configuration.
        seed: the experiment's seed.
        data: the project's Data, its loaders loaded.
        logger: the experiment's logger.
        tracker: TensorBoard and metrics.jsonl; `tracker.writer` for custom figures.
        world: this process's rank among torchrun's processes (a single one by default).
        model, optimizer, scheduler: set by the init methods.
        counters: "epoch" (completed), "iteration" (into the current epoch), "step" (global).
        history: per-epoch "train" and "validation" metrics, each a list of dicts.
    """

    scheduler_interval = "epoch"

    def __init__(
        self,
        experiment: Experiment,
        config: Config,
        seed: int,
        data: Data,
        logger: logging.Logger,
        tracker: Tracker,
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
        self.model: torch.nn.Module | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.scheduler: Any = None
        self.scaler: torch.amp.GradScaler | None = None
        self.precision = PrecisionChoice("fp32", "fp32", "trainer.precision fp32")
        self.counters = {"epoch": 0, "iteration": 0, "step": 0}
        self.history: dict[str, list[dict[str, float]]] = {"train": [], "validation": []}
        self.partial: dict[str, Any] | None = None
        self.stop_signal: int | None = None
        self.saving = False
        # Called after each epoch's checkpoint with (epoch, {"train": ..., "validation": ...});
        # one that returns a reason stops training there (a search's pruner, say).
        self.epoch_observers: list[Callable[[int, dict[str, dict[str, float]]], str | None]] = []

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
            over the epoch's samples.
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

    def serve_example(self) -> Any:
        """Return one example request instance (JSON data), as a client would send it.

        `serve` warms the model up with it, `export` traces the model with it, and the
        server's OpenAPI page shows it. None (the default) means the project has none.
        """
        return None

    def serve_preprocess(self, instance: Any) -> torch.Tensor:
        """Turn one request instance (JSON data) into the model's input for it, without
        the batch dimension; by default a float32 tensor of the nested lists.

        Raises:
            ValueError: the instance is malformed; the message is one sentence for the client.
        """
        try:
            return torch.as_tensor(instance, dtype=torch.float32)
        except (TypeError, ValueError, RuntimeError) as error:
            raise ValueError(f"an instance must be an array of numbers: {first_line(error)}") from error

    def serve_postprocess(self, output: torch.Tensor, model_input: torch.Tensor, instance: Any) -> Any:
        """Turn the model's output for one instance into the JSON prediction; by default its values.

        Args:
            output: the model's output row for the instance.
            model_input: what `serve_preprocess` made of it, e.g. to show what the model saw.
            instance: the instance as the client sent it.
        """
        return output.tolist()

    def serve_page(self) -> str | None:
        """Return the folder of the project's web page for `serve`, or None (the default)
        when the project has none.

        The folder holds the page's `index.html`, in which `{{MODEL_NAME}}` becomes the
        served model's name, and the files it loads, served under /static/. A browser
        opening / gets the page; API clients get the protocol's liveness there, and a
        browser gets /docs when there is no page.
        """
        return None

    def train_before_epoch_tasks(self, device: torch.device) -> None:
        """Called before each epoch's first training iteration."""

    def train_after_epoch_tasks(self, device: torch.device) -> None:
        """Called after each epoch's validation and logs, before its checkpoint."""

    def train_early_stopping(self) -> bool:
        """Return True to stop training; by default after `trainer.early_stopping_patience`
        epochs without a lower validation loss."""
        patience = self.get_conf("trainer", "early_stopping_patience")
        losses = [entry["loss"] for entry in self.history["validation"] if "loss" in entry]
        if patience is None or len(losses) <= patience:
            return False
        return min(losses[-patience:]) >= min(losses[:-patience])

    def train_iteration_log(self, metrics: dict[str, float]) -> None:
        """Log one iteration's metrics, every `--log-period` iterations."""
        self.tracker.log_scalars("iteration", self.counters["step"], metrics, epoch=self.counters["epoch"] + 1)
        self.logger.debug(f"iteration {self.counters['step']}: {format_metrics(metrics)}")

    def train_epoch_log(self, epoch: int, train: dict[str, float], validation: dict[str, float], seconds: float) -> None:
        """Log an epoch's train and validation metrics."""
        learning_rate = self.optimizer.param_groups[0]["lr"]
        self.tracker.log_scalars("train", epoch, {**train, "lr": learning_rate}, epoch=epoch, seconds=round(seconds, 3))
        if validation:
            self.tracker.log_scalars("validation", epoch, validation, epoch=epoch)
        self.tracker.flush()
        line = f"epoch {epoch}: train {format_metrics(train)}"
        if validation:
            line += f"; validation {format_metrics(validation)}"
        self.logger.info(f"{line}; lr {learning_rate:.4g}; {seconds:.1f} s")

    def save_states_others(self) -> dict[str, Any]:
        """Return extra state (tensors and plain data) to keep in each checkpoint."""
        return {}

    def load_states_others(self, state: dict[str, Any]) -> None:
        """Restore what `save_states_others` returned."""

    def train(self, device: torch.device, max_epochs: int, log_period: int, epoch: int | None = None) -> None:
        """Train until `max_epochs` epochs are done, resuming from a checkpoint.

        Hooks, in order:
            init_model, init_optimizer, init_others, load_states_others (on resume);
            per epoch: train_before_epoch_tasks; per iteration: train_step,
            train_iteration_log (every `log_period`); validation_step per validation
            batch; train_epoch_log; train_after_epoch_tasks; scheduler step; checkpoint
            (save_states_others); epoch_observers; train_early_stopping. With
            trainer.deterministic, all of it runs with deterministic algorithms only.

        Args:
            device: where to train.
            max_epochs: total epochs to reach, counting those already done.
            log_period: iterations between iteration logs.
            epoch: resume from this standard checkpoint instead of the furthest one.

        Raises:
            TrainingInterrupted: SIGINT or SIGTERM arrived; an interrupt checkpoint was saved.
        """
        with deterministic_algorithms(self.get_conf("trainer", "deterministic")), recording_hparams(self):
            self.build(device)
            self.restore_training(epoch)
            self.prepare_loaders(device)
            if self.counters["epoch"] >= max_epochs:
                self.logger.info(f"{self.counters['epoch']} epochs are done already; raise --max-epochs (or trainer.max_epochs) to train more")
                return
            if self.counters["iteration"] == 0 and self.history["validation"] and self.train_early_stopping():
                self.logger.info(f"training stopped early after epoch {self.counters['epoch']} already")
                return
            self.keep_freed_memory_when_configured()
            self.run_epochs_reporting_lost_ranks(device, max_epochs, log_period)

    def keep_freed_memory_when_configured(self) -> None:
        """Keep freed memory in the process (trainer.keep_freed_memory), so that each batch
        does not fault its activations back in."""
        if self.get_conf("trainer", "keep_freed_memory") and keep_freed_memory():
            self.logger.debug("glibc keeps freed memory for the next batches (trainer.keep_freed_memory)")

    def run_epochs_reporting_lost_ranks(self, device: torch.device, max_epochs: int, log_period: int) -> None:
        """Run the epochs; a collective failing because another rank died or hung becomes a
        DistributedError that says so."""
        try:
            self.run_epochs(device, max_epochs, log_period)
        except RuntimeError as error:
            if not self.world.distributed or not is_lost_contact(error):
                raise
            raise DistributedError(
                f"rank {self.world.rank} lost contact with the other training processes "
                f"(one died or hung for over the timeout): {first_line(error)}"
            ) from error

    def run_epochs(self, device: torch.device, max_epochs: int, log_period: int) -> None:
        """The epoch loop of `train`, from the restored counters to `max_epochs`."""
        with self.catch_stop_signals():
            while self.counters["epoch"] < max_epochs:
                epoch = self.counters["epoch"] + 1
                started = time.perf_counter()
                if self.counters["iteration"] == 0:
                    self.train_before_epoch_tasks(device)
                train_metrics = self.train_epoch(epoch, log_period)
                validation_metrics = self.validate()
                self.counters.update(epoch=epoch, iteration=0)
                self.history["train"].append(train_metrics)
                self.history["validation"].append(validation_metrics)
                self.train_epoch_log(epoch, train_metrics, validation_metrics, time.perf_counter() - started)
                self.train_after_epoch_tasks(device)
                if self.scheduler is not None and self.scheduler_interval == "epoch":
                    self.scheduler.step()
                self.save_training_checkpoint("standard", epoch)
                if self.stop_requested():
                    raise TrainingInterrupted(f"training stopped by {signal.Signals(self.stop_signal).name} after epoch {epoch}, which is saved")
                reason = self.notify_epoch_observers(epoch, train_metrics, validation_metrics)
                if reason is not None:
                    self.logger.info(f"training stopped after epoch {epoch}: {reason}")
                    break
                if self.train_early_stopping():
                    self.logger.info(f"early stopping after epoch {epoch}")
                    break

    def notify_epoch_observers(self, epoch: int, train: dict[str, float], validation: dict[str, float]) -> str | None:
        """Tell every epoch observer an epoch is saved; return the first reason to stop, if any."""
        reasons = [observer(epoch, {"train": train, "validation": validation}) for observer in self.epoch_observers]
        return next((reason for reason in reasons if reason is not None), None)

    def build(self, device: torch.device) -> None:
        """Seed, then create the model, optimizer and others with the trainer options."""
        self.device = device
        seed_everything(self.seed)
        self.precision = self.choose_precision(device)
        self.build_model(device)
        if self.get_conf("trainer", "channels_last"):
            self.model = self.model.to(memory_format=torch.channels_last)
        if self.world.distributed:
            device_ids = [device.index] if device.type == "cuda" else None
            self.model = torch.nn.parallel.DistributedDataParallel(self.model, device_ids=device_ids)
        self.init_optimizer(device)
        if not isinstance(self.optimizer, torch.optim.Optimizer):
            raise TypeError(f"init_optimizer must set self.optimizer, not {type(self.optimizer).__name__}")
        self.init_others(device)
        self.scaler = torch.amp.GradScaler("cuda") if self.precision.used == "fp16" else None
        if self.get_conf("trainer", "compile"):
            self.model = torch.compile(self.model)

    def choose_precision(self, device: torch.device) -> PrecisionChoice:
        """Resolve trainer.precision on `device` and say once what was chosen and why.

        Raises:
            ConfigError: fp16 on a device other than CUDA.
        """
        configured = self.get_conf("trainer", "precision")
        choice = choose_precision(configured, device)
        if choice.slow:
            self.logger.warning(choice.reason)
        elif configured == "auto":
            self.logger.info(choice.reason)
        return choice

    def prepare_loaders(self, device: torch.device) -> None:
        """Send loaders that support it (torchexp.loaders) to the device; shard them by rank.

        Training shards are of equal length so that ranks step together; validation
        shards cover every sample once.
        """
        for split, loader in self.data.loaders.items():
            if hasattr(loader, "to"):
                loader.to(device)
            if self.world.distributed and split in ("train", "validation") and hasattr(loader, "shard"):
                loader.shard(self.world.rank, self.world.size, even=split == "train")

    def train_epoch(self, epoch: int, log_period: int) -> dict[str, float]:
        """Run one epoch's training iterations from `counters["iteration"]`; return its metrics."""
        loader = self.data.loaders["train"]
        start = self.counters["iteration"]
        position_loader(loader, epoch, start)
        accumulation = self.get_conf("trainer", "grad_accumulation")
        sums, count = (self.partial["sums"], self.partial["count"]) if self.partial else ({}, 0)
        self.partial = None
        total = len(loader)
        self.model.train()
        for batch in progress_bar(loader, total - start, f"epoch {epoch}", self.quiet):
            index = self.counters["iteration"]
            group_end = min(index - index % accumulation + accumulation, total)
            metrics = self.run_train_step(self.prepare_batch(batch), group_end - (index - index % accumulation), index + 1 == group_end)
            count += accumulate(sums, metrics, batch_size_of(batch))
            self.counters["iteration"] += 1
            self.counters["step"] += 1
            if self.counters["step"] % log_period == 0:
                self.train_iteration_log({name: value.item() for name, value in self.mean_across(metrics).items()})
            if index + 1 == group_end and self.stop_requested():
                self.partial = {"sums": sums, "count": count}
                self.save_training_checkpoint("interrupt", epoch)
                raise TrainingInterrupted(
                    f"training stopped by {signal.Signals(self.stop_signal or signal.SIGTERM).name} at epoch {epoch}, "
                    f"iteration {index + 1}; saved {checkpoints.make_filename(epoch, 'interrupt')}: run train again to resume"
                )
        return self.average(sums, count)

    def run_train_step(self, batch: Any, group_size: int, step_optimizer: bool) -> dict[str, torch.Tensor]:
        """Forward and backward one batch of a `group_size`-batch accumulation group;
        step the optimizer when `step_optimizer` (the group's last batch)."""
        with self.autocast():
            metrics = as_metrics(self.train_step(batch, self.device), "train_step")
        loss = metrics["loss"] / group_size if group_size > 1 else metrics["loss"]
        (self.scaler.scale(loss) if self.scaler else loss).backward()
        if step_optimizer:
            self.step_optimizer()
        return {name: value.detach() for name, value in metrics.items()}

    def step_optimizer(self) -> None:
        """Clip, step and zero the gradients; step an iteration-wise scheduler."""
        clip_norm = self.get_conf("trainer", "grad_clip_norm")
        if clip_norm is not None:
            if self.scaler:
                self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip_norm)
        if self.scaler:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.scheduler is not None and self.scheduler_interval == "iteration":
            self.scheduler.step()

    def validate(self) -> dict[str, float]:
        """Average `validation_step`'s metrics over the validation set's samples."""
        loader = self.data.loaders.get("validation")
        if loader is None or len(loader) == 0:
            return {}
        position_loader(loader, 1, 0)
        sums: dict[str, torch.Tensor] = {}
        count = 0
        self.model.eval()
        with torch.no_grad(), self.autocast():
            for batch in progress_bar(loader, len(loader), "validation", self.quiet):
                metrics = as_metrics(self.validation_step(self.prepare_batch(batch), self.device), "validation_step")
                count += accumulate(sums, metrics, batch_size_of(batch))
        self.model.train()
        return self.average(sums, count)

    def average(self, sums: dict[str, torch.Tensor], count: int) -> dict[str, float]:
        """Return per-sample means of summed metrics, over every rank's samples."""
        if self.world.distributed:
            sums, count = self.sum_metrics_across(sums, count)
        return {name: (value / max(count, 1)).item() for name, value in sums.items()}

    def sum_metrics_across(self, sums: dict[str, Any], count: int) -> tuple[dict[str, torch.Tensor], int]:
        """Return metric sums and the sample count totalled over every rank."""
        total = int(sum_across(torch.tensor(float(count), device=self.device)).item())
        return {name: sum_across(torch.as_tensor(value, device=self.device)) for name, value in sums.items()}, total

    def mean_across(self, metrics: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Return the mean of each metric over the ranks (the ranks' batches are of equal size)."""
        if not self.world.distributed:
            return metrics
        return {name: sum_across(value.float()) / self.world.size for name, value in metrics.items()}

    def stop_requested(self) -> bool:
        """Whether SIGINT or SIGTERM reached this process, or any rank when distributed."""
        if not self.world.distributed:
            return self.stop_signal is not None
        return any_across(self.stop_signal is not None, self.device)

    def autocast(self) -> contextlib.AbstractContextManager:
        """Autocast in the configured precision, or nothing for fp32."""
        if self.precision.used == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=PRECISIONS[self.precision.used])

    def prepare_batch(self, batch: Any) -> Any:
        """Apply channels-last to 4-D tensors when configured."""
        if not self.get_conf("trainer", "channels_last") or not isinstance(batch, (tuple, list)):
            return batch
        return type(batch)(
            item.contiguous(memory_format=torch.channels_last) if isinstance(item, torch.Tensor) and item.dim() == 4 else item
            for item in batch
        )

    def collect_state(self) -> dict[str, Any]:
        """Return everything needed to resume, as tensors and plain data."""
        return {
            "format": checkpoints.CHECKPOINT_FORMAT,
            "counters": dict(self.counters),
            "model": unwrap_model(self.model).state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "world_size": self.world.size,
            "precision": self.precision.as_record(),
            "rng_by_rank": gather_objects(capture_rng_states()),
            "history": self.history,
            "partial": self.reduce_partial(),
            "others": self.save_states_others(),
        }

    def reduce_partial(self) -> dict[str, Any] | None:
        """Return the interrupted epoch's metric sums; when distributed, rank 0 keeps every
        rank's total and the others start again from zero, so the epoch's sum comes out whole."""
        if self.partial is None or not self.world.distributed:
            return self.partial
        sums, count = self.sum_metrics_across(self.partial["sums"], self.partial["count"])
        if self.world.is_main:
            return {"sums": sums, "count": count}
        return {"sums": {name: torch.zeros_like(value) for name, value in sums.items()}, "count": 0}

    def save_training_checkpoint(self, kind: str, epoch: int) -> None:
        """Save a standard or interrupt checkpoint (rank 0 only); a standard one retires
        the interrupt one. Every rank takes part, and every rank fails if the save does."""
        summary = {
            "iteration": self.counters["iteration"],
            "precision": self.precision.used,
            "metrics": {"train": last_or_empty(self.history["train"]), "validation": last_or_empty(self.history["validation"])},
        }
        state = self.collect_state()
        failure: StorageError | None = None
        if self.world.is_main:
            self.saving = True
            try:
                path = checkpoints.save_checkpoint(self.experiment.checkpoints_path, epoch, kind, state, summary)
                self.logger.debug(f"saved {path}")
            except StorageError as error:
                failure = error
            finally:
                self.saving = False
        if any_across(failure is not None, self.device):
            raise failure or DistributedError(f"rank 0 could not save {checkpoints.make_filename(epoch, kind)}")
        if kind == "standard" and self.world.is_main:
            for info in checkpoints.list_checkpoints(self.experiment.checkpoints_path, ("interrupt",)):
                remove_quietly(checkpoints.record_path(info.path))
                remove_quietly(info.path)

    def restore_training(self, epoch: int | None) -> None:
        """Load the furthest checkpoint that verifies, or the standard one of `epoch`.

        Raises:
            CheckpointError: `epoch` has no standard checkpoint, or it does not load.
        """
        folder = self.experiment.checkpoints_path
        if self.world.is_main:
            for name in checkpoints.remove_temporaries(folder):
                self.logger.info(f"removed {name}, left by a save that was killed")
        if epoch is None:
            info, skipped = checkpoints.find_resume_checkpoint(folder)
            for _, reason in skipped:
                self.logger.warning(f"skipping {reason}")
        else:
            info = checkpoints.find_training_checkpoint(folder, epoch)
        if info is None:
            self.logger.info("no checkpoint to resume from: training from scratch")
        else:
            self.load_state(checkpoints.load_checkpoint(info), os.path.basename(info.path))
            self.logger.info(f"resumed from {os.path.basename(info.path)}: {self.counters['epoch']} epochs done")
        dropped = self.tracker.discard_after(self.counters["step"], self.counters["epoch"])
        if dropped:
            self.logger.info(f"removed {dropped} lines from metrics.jsonl, logged after this point by a run that did not finish")

    def load_state(self, state: dict[str, Any], name: str) -> None:
        """Restore everything `collect_state` saved.

        Raises:
            CheckpointError: the checkpoint does not fit this model, optimizer or scheduler.
        """
        try:
            unwrap_model(self.model).load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            if self.scheduler is not None and state["scheduler"] is not None:
                self.scheduler.load_state_dict(state["scheduler"])
            if self.scaler is not None and state["scaler"] is not None:
                self.scaler.load_state_dict(state["scaler"])
            warnings = self.restore_rng_by_rank(state["rng_by_rank"])
            warnings += self.compare_precision(state.get("precision"))
            self.counters = dict(state["counters"])
            self.history = state["history"]
            self.partial = state["partial"]
            self.load_states_others(state["others"])
        except KeyError as error:
            raise CheckpointError(f"checkpoint {name} does not fit this runner: it has no {error}") from error
        except (RuntimeError, ValueError, TypeError) as error:
            raise CheckpointError(f"checkpoint {name} does not fit this runner: {first_line(error)}") from error
        for warning in warnings:
            self.logger.warning(warning)

    def compare_precision(self, saved: dict[str, str] | None) -> list[str]:
        """Return a warning when the checkpoint was trained in another precision than this run's."""
        if saved is None or saved["used"] == self.precision.used:
            return []
        return [f"checkpoint trained in {saved['used']} ({saved['reason']}); this run continues in {self.precision.used}"]

    def restore_rng_by_rank(self, states: list[dict[str, Any]]) -> list[str]:
        """Restore this rank's generators; return warnings (e.g. a changed world size)."""
        if len(states) == self.world.size:
            return restore_rng_states(states[self.world.rank])
        warning = f"checkpoint saved by {len(states)} processes, resumed by {self.world.size}: the data order changes"
        return [warning, *restore_rng_states(states[self.world.rank % len(states)])]

    def build_model(self, device: torch.device) -> None:
        """Call `init_model` and check that it set `self.model`."""
        self.init_model(device)
        if not isinstance(self.model, torch.nn.Module):
            raise TypeError(f"init_model must set self.model to a torch.nn.Module, not {type(self.model).__name__}")

    def load_weights(self, device: torch.device, state: dict[str, Any], name: str) -> None:
        """Build the model with `init_model` on `device` and load the weights of a checkpoint's
        `state` (from `checkpoints.load_checkpoint`) into it; the model is left in eval mode.

        Raises:
            CheckpointError: the checkpoint `name` does not fit the model.
        """
        self.device = device
        self.build_model(device)
        try:
            self.model.load_state_dict(state["model"])
        except (KeyError, RuntimeError) as error:
            raise CheckpointError(f"checkpoint {name} does not fit this model: {first_line(error)}") from error
        self.model.eval()

    def run_test(self, device: torch.device, epoch: int, release: bool) -> dict[str, Any]:
        """Load the weights of `epoch` (standard or release checkpoint), run `test`, save results.

        Args:
            device: where to evaluate.
            epoch: the epoch whose weights to test.
            release: use the release checkpoint even when a standard one exists.
        """
        kinds = ("release",) if release else ("standard", "release")
        info = checkpoints.find_checkpoint(self.experiment.checkpoints_path, epoch, kinds)
        seed_everything(self.seed)
        self.load_weights(device, checkpoints.load_checkpoint(info), os.path.basename(info.path))
        self.prepare_loaders(device)
        self.keep_freed_memory_when_configured()
        with torch.no_grad():
            results = self.test(epoch, device)
        report = {"epoch": epoch, "checkpoint": os.path.basename(info.path), "results": results}
        write_json_atomic(os.path.join(self.experiment.results_path, f"{epoch}.{info.kind}.test.json"), report)
        numbers = {key: value for key, value in results.items() if isinstance(value, (int, float))}
        scalars = {key: float(value) for key, value in numbers.items()}
        self.tracker.log_scalars("test", epoch, scalars, epoch=epoch, checkpoint=report["checkpoint"])
        self.tracker.flush()
        self.logger.info(f"test of {report['checkpoint']}: {format_metrics(numbers)}")
        write_hparams(self, test_metrics=tuple(numbers))
        return results

    @contextlib.contextmanager
    def catch_stop_signals(self) -> Iterator[None]:
        """Turn SIGINT and SIGTERM into a request to stop after the current step."""

        owner = os.getpid()

        def request_stop(signum: int, frame: Any) -> None:
            # Data loader workers are forked with this handler; a terminal's Ctrl-C reaches
            # them too. They keep serving batches until the trainer shuts them down.
            if os.getpid() != owner:
                return
            if self.stop_signal is None:
                self.stop_signal = signum
                self.logger.warning(f"{signal.Signals(signum).name} received: finishing the current step, then saving")
            elif self.saving:
                self.logger.warning("already stopping: the checkpoint is being saved, please wait")
            else:
                self.logger.warning("already stopping: finishing the current step, then saving")

        previous = {signum: signal.signal(signum, request_stop) for signum in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)


def position_loader(loader: Any, epoch: int, start: int) -> None:
    """Set a loader's epoch order and starting batch, when it supports them.

    Raises:
        CheckpointError: resuming mid-epoch on a loader that cannot start mid-way.
    """
    if hasattr(loader, "set_epoch"):
        loader.set_epoch(epoch)
    if start and not hasattr(loader, "set_start"):
        raise CheckpointError("the train loader cannot resume mid-epoch: use torchexp.loaders")
    if hasattr(loader, "set_start"):
        loader.set_start(start)


def as_metrics(output: Any, step: str) -> dict[str, torch.Tensor]:
    """Turn a step's return value into a dict of tensors holding "loss"."""
    if isinstance(output, torch.Tensor):
        return {"loss": output}
    if not isinstance(output, dict) or "loss" not in output:
        raise TypeError(f"{step} must return the loss or a dict of metrics with 'loss', not {type(output).__name__}")
    return {name: torch.as_tensor(value) for name, value in output.items()}


def batch_size_of(batch: Any) -> int:
    """Return the number of samples in a batch: the first dimension of its first tensor."""
    if isinstance(batch, torch.Tensor):
        return batch.shape[0]
    items = batch.values() if isinstance(batch, dict) else batch
    for item in items:
        if isinstance(item, torch.Tensor):
            return item.shape[0]
    raise TypeError("a batch must contain at least one tensor")


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """Return the module under torch.compile or DistributedDataParallel wrappers."""
    if isinstance(model, torch.nn.parallel.DistributedDataParallel):
        model = model.module
    return getattr(model, "_orig_mod", model)


def accumulate(sums: dict[str, Any], metrics: dict[str, torch.Tensor], size: int) -> int:
    """Add a batch's metrics, weighted by its `size` samples, to `sums`; return `size`."""
    for name, value in metrics.items():
        sums[name] = sums.get(name, 0.0) + value.float() * size
    return size


def is_lost_contact(error: RuntimeError) -> bool:
    """Whether a collective failed because another rank died or hung.

    Gloo reports a dead peer as a plain RuntimeError, so its message is all there is.
    """
    markers = ("Connection closed by peer", "Connection reset by peer", "timed out", "Timed out", "NCCL")
    return isinstance(error, torch.distributed.DistError) or any(marker in str(error) for marker in markers)


def last_or_empty(entries: list[dict[str, float]]) -> dict[str, float]:
    return entries[-1] if entries else {}
