"""The training loop: `train` reads top to bottom, calling the project's Runner hooks.

Everything else it needs lives in the module of its concept: precision (`precision`),
signals (`signals`), reductions across ranks (`distributed`), metric sums (`steps`),
checkpoint state (`training_state`), validation (`evaluation`).
"""

import time
from collections.abc import Callable

import torch

from torchexp import checkpoints
from torchexp.distributed import mean_across, reporting_lost_ranks
from torchexp.errors import TrainingInterrupted
from torchexp.evaluation import validate
from torchexp.hparams import recording_hparams
from torchexp.loaders import position_loader, prepare_loaders
from torchexp.memory import keep_freed_memory_when_configured
from torchexp.metrics import EARLY_STOPPING, ITERATION, MAX_EPOCHS, OBSERVER, Stop
from torchexp.precision import Precision, PrecisionChoice, choose_precision
from torchexp.rng import deterministic_algorithms, seed_everything
from torchexp.runner import Runner
from torchexp.retention import retain_checkpoints
from torchexp.signals import CheckpointClock, catching_stop_signals
from torchexp.steps import MetricSums, as_metrics, batch_size_of, prepare_batch
from torchexp.tracking import progress_bar
from torchexp.training_state import build_model, restore_training, save_training_checkpoint

# Called after each epoch's checkpoint with (epoch, {"train": ..., "validation": ...});
# one that returns a reason stops training there (a search's pruner, say).
EpochObserver = Callable[[int, dict[str, dict[str, float]]], str | None]


def train(
    runner: Runner,
    device: torch.device,
    max_epochs: int,
    log_period: int,
    epoch: int | None = None,
    observers: tuple[EpochObserver, ...] = (),
    provenance: dict | None = None,
    stop_at: tuple[int, int] | None = None,
) -> Stop:
    """Train until `max_epochs` epochs are done, resuming from the furthest checkpoint (or
    the standard one of `epoch`); return why training stopped.

    The hooks are called in the order `torchexp.Runner`'s docstring lists. With
    trainer.deterministic, all of it runs with deterministic algorithms only. A mid-epoch
    checkpoint is saved every trainer.checkpoint_every_minutes, and after each epoch's
    checkpoint only trainer.keep_checkpoints of them stay (`torchexp.retention`).

    Args:
        runner: the project's Runner, its Data loaded.
        device: where to train.
        max_epochs: the epochs to reach, counting those done.
        log_period: optimizer steps between iteration logs.
        epoch: resume from this standard checkpoint instead of the furthest one.
        observers: called after each epoch's checkpoint; the first reason one returns stops.
        provenance: what produced this run, kept in every checkpoint's sidecar.
        stop_at: (epoch, iteration): save a mid-epoch checkpoint there and stop (verify).

    Raises:
        TrainingInterrupted: SIGINT or SIGTERM arrived; an interrupt checkpoint was saved.
    """
    with deterministic_algorithms(runner.get_conf("trainer", "deterministic")), recording_hparams(runner), reporting_lost_ranks(runner.world):
        precision = build(runner, device)
        partial = restore_training(runner, precision, epoch)
        prepare_loaders(runner.data.loaders, device, runner.world.rank, runner.world.size)
        if runner.counters["epoch"] >= max_epochs:
            runner.logger.info(f"{runner.counters['epoch']} epochs are done already; raise --max-epochs (or trainer.max_epochs) to train more")
            return Stop(MAX_EPOCHS, runner.counters["epoch"], max_epochs)
        if runner.counters["iteration"] == 0 and runner.history["validation"] and runner.train_early_stopping():
            runner.logger.info(f"training stopped early after epoch {runner.counters['epoch']} already")
            return Stop(EARLY_STOPPING, runner.counters["epoch"], max_epochs)
        keep_freed_memory_when_configured(runner.get_conf("trainer", "keep_freed_memory"), runner.logger)
        accumulation = runner.get_conf("trainer", "grad_accumulation")
        clip_norm = runner.get_conf("trainer", "grad_clip_norm")
        channels_last = runner.get_conf("trainer", "channels_last")
        clock = CheckpointClock(runner.get_conf("trainer", "checkpoint_every_minutes"))
        with catching_stop_signals(runner.logger) as signals:
            while runner.counters["epoch"] < max_epochs:
                epoch = runner.counters["epoch"] + 1
                started = time.perf_counter()
                if runner.counters["iteration"] == 0:
                    runner.train_before_epoch_tasks(device)
                loader = runner.data.loaders["train"]
                start, total = runner.counters["iteration"], len(loader)
                position_loader(loader, epoch, start)
                sums, partial = MetricSums(partial, runner.world), None
                runner.model.train()
                for batch in progress_bar(loader, total - start, f"epoch {epoch}", runner.quiet):
                    index = runner.counters["iteration"]
                    # Gradients are summed over groups of `accumulation` batches (the last group may be shorter).
                    group_start = index - index % accumulation
                    group_end = min(group_start + accumulation, total)
                    with precision.autocast():
                        metrics = as_metrics(runner.train_step(prepare_batch(batch, channels_last), device), "train_step")
                    group_size = group_end - group_start
                    precision.backward(metrics["loss"] / group_size if group_size > 1 else metrics["loss"])
                    if index + 1 == group_end:
                        precision.step(runner.optimizer, runner.model.parameters(), clip_norm)
                        runner.optimizer.zero_grad(set_to_none=True)
                        if runner.scheduler is not None and runner.scheduler_interval == "iteration":
                            runner.scheduler.step()
                    metrics = {name: value.detach() for name, value in metrics.items()}
                    sums.add(metrics, batch_size_of(batch))
                    runner.counters["iteration"] += 1
                    runner.counters["step"] += 1
                    if runner.counters["step"] % log_period == 0:
                        runner.train_iteration_log({name: value.item() for name, value in mean_across(metrics, runner.world).items()})
                    if index + 1 == group_end:
                        stopping, due = signals.poll(runner.world, device, clock)
                        if stopping or due or stop_at == (epoch, index + 1):
                            save_training_checkpoint(runner, precision, signals, "interrupt", epoch, sums.to_state(runner.world, device), provenance)
                            clock.restart()
                        if stopping:
                            raise TrainingInterrupted(
                                f"training stopped by {signals.name} at epoch {epoch}, iteration {index + 1}; "
                                f"saved {checkpoints.make_filename(epoch, 'interrupt')}: run train again to resume"
                            )
                        if stop_at == (epoch, index + 1):
                            return Stop(ITERATION, epoch - 1, max_epochs, f"stopped at epoch {epoch}, iteration {index + 1}, as asked")
                train_metrics = sums.average(runner.world, device)
                validation_metrics = validate(runner, precision)
                runner.counters.update(epoch=epoch, iteration=0)
                runner.history["train"].append(train_metrics)
                runner.history["validation"].append(validation_metrics)
                runner.train_epoch_log(epoch, train_metrics, validation_metrics, time.perf_counter() - started)
                runner.train_after_epoch_tasks(device)
                if runner.scheduler is not None and runner.scheduler_interval == "epoch":
                    runner.scheduler.step()
                save_training_checkpoint(runner, precision, signals, "standard", epoch, provenance=provenance)
                clock.restart()
                retain_checkpoints(runner)
                if signals.requested(runner.world, device):
                    raise TrainingInterrupted(f"training stopped by {signals.name} after epoch {epoch}, which is saved")
                reasons = [observer(epoch, {"train": train_metrics, "validation": validation_metrics}) for observer in observers]
                reason = next((reason for reason in reasons if reason is not None), None)
                if reason is not None:
                    runner.logger.info(f"training stopped after epoch {epoch}: {reason}")
                    return Stop(OBSERVER, epoch, max_epochs, reason)
                if runner.train_early_stopping():
                    runner.logger.info(f"early stopping after epoch {epoch}")
                    return Stop(EARLY_STOPPING, epoch, max_epochs)
    return Stop(MAX_EPOCHS, runner.counters["epoch"], max_epochs)


def build(runner: Runner, device: torch.device) -> Precision:
    """Seed, then create the model, optimizer and others with the trainer options; return
    the precision the run computes in.

    Raises:
        ConfigError: fp16 on a device other than CUDA.
        TypeError: `init_model` or `init_optimizer` set nothing usable.
    """
    runner.device = device
    seed_everything(runner.seed)
    precision = Precision(choose_logged_precision(runner, device), device)
    build_model(runner, device)
    if runner.get_conf("trainer", "channels_last"):
        runner.model = runner.model.to(memory_format=torch.channels_last)
    if runner.world.distributed:
        device_ids = [device.index] if device.type == "cuda" else None
        runner.model = torch.nn.parallel.DistributedDataParallel(runner.model, device_ids=device_ids)
    runner.init_optimizer(device)
    if not isinstance(runner.optimizer, torch.optim.Optimizer):
        raise TypeError(f"init_optimizer must set self.optimizer, not {type(runner.optimizer).__name__}")
    runner.init_others(device)
    if runner.get_conf("trainer", "compile"):
        runner.model = torch.compile(runner.model)
    return precision


def choose_logged_precision(runner: Runner, device: torch.device) -> PrecisionChoice:
    """Resolve trainer.precision on `device` and say once what was chosen and why.

    Raises:
        ConfigError: fp16 on a device other than CUDA.
    """
    configured = runner.get_conf("trainer", "precision")
    choice = choose_precision(configured, device)
    if choice.slow:
        runner.logger.warning(choice.reason)
    elif configured == "auto":
        runner.logger.info(choice.reason)
    return choice
