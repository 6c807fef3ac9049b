"""The training loop: `train` reads top to bottom, calling the project's Runner hooks.

Everything else it needs lives in the module of its concept: the budget in epochs or
steps (`budget`), the train loader's epochs and positions (`train_loader`), gradient
accumulation (`accumulation`), precision (`precision`), signals and the checkpoint clock
(`signals`), reductions across ranks (`distributed`), metric sums (`steps`), checkpoint
state (`training_state`), validation (`evaluation`).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

import torch

from torchexp import checkpoints
from torchexp.accumulation import Accumulator
from torchexp.budget import EPOCH, STEP, Budget, describe_count, read_budget
from torchexp.distributed import all_across, mean_across, reporting_lost_ranks
from torchexp.errors import ConfigError, TrainingInterrupted
from torchexp.evaluation import validate
from torchexp.hparams import recording_hparams
from torchexp.loaders import prepare_loaders
from torchexp.logs import progress_bar
from torchexp.memory import keep_freed_memory_when_configured
from torchexp.metrics import (
    EARLY_STOPPING,
    ITERATION,
    MAX_EPOCHS,
    MAX_STEPS,
    OBSERVER,
    Stop,
)
from torchexp.precision import Precision, PrecisionChoice, choose_precision
from torchexp.rng import deterministic_algorithms, seed_everything
from torchexp.saving import CheckpointSaver
from torchexp.signals import CheckpointClock, StopSignals, catching_stop_signals
from torchexp.steps import MetricSums, as_metrics, batch_size_of, prepare_batch
from torchexp.strategy import wrap_model
from torchexp.train_loader import TrainLoader, adapt_train_loader, reading
from torchexp.training_state import build_model, restore_training

if TYPE_CHECKING:
    from torchexp.runner import Runner  # which imports this module's train for its deprecated Runner.train

# Called at each point (an epoch's end, or every trainer.validate_every_steps steps), after
# its checkpoint, with (epoch or step, {"train": ..., "validation": ...}); one that returns
# a reason stops training there (a search's pruner, say).
EpochObserver = Callable[[int, dict[str, dict[str, float]]], str | None]


@dataclasses.dataclass
class Run:
    """What one `train` carries from step to step besides the runner's own state."""

    runner: Runner
    device: torch.device
    precision: Precision
    budget: Budget
    feed: TrainLoader
    accumulator: Accumulator
    sums: MetricSums
    clock: CheckpointClock
    saver: CheckpointSaver
    log_period: int
    observers: tuple[EpochObserver, ...]
    provenance: dict | None
    signals: StopSignals
    started: float = dataclasses.field(default_factory=time.perf_counter)  # when the current point began
    last_metrics: dict[str, torch.Tensor] = dataclasses.field(default_factory=dict)


def train(
    runner: Runner,
    device: torch.device,
    budget: Budget | int,
    log_period: int,
    epoch: int | None = None,
    observers: tuple[EpochObserver, ...] = (),
    provenance: dict | None = None,
    stop_at: tuple[int, int] | None = None,
) -> Stop:
    """Train until the budget's epochs or steps are done, resuming from the furthest
    checkpoint (or the standard one of `epoch`); return why training stopped.

    The hooks are called in the order `torchexp.Runner`'s docstring lists. With
    trainer.deterministic, all of it runs with deterministic algorithms only. At each point
    (`torchexp.budget`) the model is validated and a standard checkpoint saved, after which
    only trainer.keep_checkpoints of them stay (`torchexp.retention`); between points, a
    mid-epoch checkpoint is saved every trainer.checkpoint_every_minutes or
    trainer.checkpoint_every_steps, when the train loader can resume there. Checkpoints
    are written by `torchexp.saving`, in the background with trainer.async_checkpoint;
    `train` returns only once the last is written.

    Args:
        runner: the project's Runner, its Data loaded.
        device: where to train.
        budget: the epochs or steps to reach, counting those done; a number alone counts in
            the experiment's unit.
        log_period: optimizer steps between iteration logs.
        epoch: resume from this standard checkpoint (an epoch, or a step) instead of the furthest one.
        observers: called at each point, after its checkpoint; the first reason one returns stops.
        provenance: what produced this run, kept in every checkpoint's sidecar.
        stop_at: (epoch, iteration): save a mid-epoch checkpoint there and stop (verify).

    Raises:
        TrainingInterrupted: SIGINT or SIGTERM arrived; an interrupt checkpoint was saved
            where the train loader allows one.
        ConfigError: a budget in steps for a train loader that cannot resume mid-epoch.
    """
    if isinstance(budget, int):  # the limit alone, in the experiment's unit
        budget = read_budget(runner.config, budget, None)[0]
    with (
        deterministic_algorithms(runner.get_conf("trainer", "deterministic")),
        recording_hparams(runner),
        reporting_lost_ranks(runner.world),
    ):
        precision = build(runner, device)
        prepare_loaders(runner.data.loaders, device, runner.world.rank, runner.world.size)
        feed = adapt_train_loader(runner.data.loaders["train"], runner.seed, runner.world.rank, runner.world.size)
        if budget.unit == STEP and not feed.resumes_mid_epoch:
            raise ConfigError(
                f"training by steps (trainer.max_steps) checkpoints in the middle of epochs, and {feed.refusal}"
            )
        partial = restore_training(runner, precision, epoch, feed)
        if budget.reached(runner.counters):
            done = describe_count(budget.done(runner.counters), budget.unit)
            runner.logger.info(
                f"{done} {'is' if done.startswith('1 ') else 'are'} done already; "
                f"raise --max-{budget.unit}s (or trainer.max_{budget.unit}s) to train more"
            )
            return stop_for(budget, runner, LIMIT_REASONS[budget.unit])
        if partial is None and runner.history["validation"] and runner.train_early_stopping():
            runner.logger.info(f"training stopped early after {budget.unit} {budget.done(runner.counters)} already")
            return stop_for(budget, runner, EARLY_STOPPING)
        clock = CheckpointClock(
            runner.get_conf("trainer", "checkpoint_every_minutes"), runner.get_conf("trainer", "checkpoint_every_steps")
        )
        if not feed.resumes_mid_epoch and (clock.seconds is not None or clock.steps is not None):
            runner.logger.warning(f"{feed.refusal}; checkpoints are saved at epoch ends only")
        keep_freed_memory_when_configured(
            runner.get_conf("trainer", "keep_freed_memory"), runner.logger, runner.get_conf("trainer", "strategy")
        )
        accumulator = Accumulator(runner.model, runner.get_conf("trainer", "grad_accumulation"), runner.world)
        saver = CheckpointSaver(runner, runner.get_conf("trainer", "async_checkpoint"))
        with catching_stop_signals(runner.logger) as signals, saver.finishing(signals):
            sums = MetricSums(partial, runner.world)
            run = Run(
                runner,
                device,
                precision,
                budget,
                feed,
                accumulator,
                sums,
                clock,
                saver,
                log_period,
                observers,
                provenance,
                signals,
            )
            while not budget.reached(runner.counters):
                epoch = runner.counters["epoch"] + 1
                if runner.counters["iteration"] == 0:
                    run.saver.settle()  # the hook may change the model
                    runner.train_before_epoch_tasks(device)
                for _ in train_epoch(run, epoch):
                    stop = after_step(run, epoch, stop_at)
                    if stop is not None:
                        return stop
                if budget.unit == EPOCH:
                    metrics = record_point(run, epoch)
                else:
                    runner.counters.update(epoch=epoch, iteration=0)
                runner.train_after_epoch_tasks(device)
                if runner.scheduler is not None and runner.scheduler_interval == "epoch":
                    runner.scheduler.step()
                if budget.unit == EPOCH:
                    stop = save_point(run, epoch, metrics)
                    if stop is not None:
                        return stop
    return stop_for(budget, runner, LIMIT_REASONS[budget.unit])


LIMIT_REASONS = {EPOCH: MAX_EPOCHS, STEP: MAX_STEPS}


def train_epoch(run: Run, epoch: int) -> Iterator[None]:
    """Train on epoch `epoch`'s batches from the counters' iteration on, yielding after each
    optimizer step (a stream that ends mid-group steps with what it gave)."""
    runner, accumulator = run.runner, run.accumulator
    start = runner.counters["iteration"]
    batches, total = run.feed.begin(epoch, start)
    batches = reading(batches, "train")
    if total is None and runner.world.distributed:
        batches = agreed_batches(batches, run.device)
    channels_last = runner.get_conf("trainer", "channels_last")
    runner.model.train()
    for batch in progress_bar(batches, None if total is None else total - start, f"epoch {epoch}", runner.quiet):
        index = runner.counters["iteration"]
        last = accumulator.closes_group(index, total)
        with accumulator.syncing(last, total):
            with run.precision.autocast():
                output = runner.train_step(prepare_batch(batch, channels_last), run.device)
            metrics = as_metrics(output, runner, "train_step", needs_grad=True)
            weight = metrics.pop("weight", None)
            run.precision.backward(accumulator.loss_to_backward(metrics["loss"], weight, index, total))
        run.last_metrics = {name: value.detach() for name, value in metrics.items()}
        run.sums.add(run.last_metrics, batch_size_of(batch) if weight is None else weight.detach())
        runner.counters["iteration"] += 1
        if last:
            step_optimizer(run)
            yield
    if accumulator.pending:
        step_optimizer(run, synced=False)
        yield


def agreed_batches(batches: Iterable, device: torch.device) -> Iterator[Any]:
    """A stream's batches while every rank still has one, so that ranks step together: the
    epoch ends where the shortest rank's stream does."""
    iterator = iter(batches)
    while True:
        batch = next(iterator, agreed_batches)
        if not all_across(batch is not agreed_batches, device):
            return
        yield batch


def step_optimizer(run: Run, synced: bool = True) -> None:
    """Close the accumulated group: optimizer step, per-step scheduler, step counter, log."""
    runner = run.runner
    run.saver.settle()  # a checkpoint's state may still be being copied in the background
    run.accumulator.step(
        run.precision, runner.optimizer, runner.model.parameters(), runner.get_conf("trainer", "grad_clip_norm"), synced
    )
    if runner.scheduler is not None and runner.scheduler_interval in ("iteration", "step"):
        runner.scheduler.step()
    runner.counters["step"] += 1
    if runner.counters["step"] % run.log_period == 0:
        runner.train_iteration_log(
            {name: value.item() for name, value in mean_across(run.last_metrics, runner.world).items()}
        )


def after_step(run: Run, epoch: int, stop_at: tuple[int, int] | None) -> Stop | None:
    """After an optimizer step: a point of a budget in steps, or a mid-epoch checkpoint
    when a signal, the clock or `stop_at` asks for one; return a Stop to end training."""
    runner, counters = run.runner, run.runner.counters
    if run.budget.is_step_point(counters["step"]):
        return save_point(run, counters["step"], record_point(run, counters["step"]))
    signals = run.signals
    stopping, due = signals.poll(runner.world, run.device, run.clock, counters["step"])
    at_stop = stop_at == (epoch, counters["iteration"])
    where = f"epoch {epoch}, iteration {counters['iteration']}"
    if run.budget.unit == STEP:
        where = f"step {counters['step']} ({where})"
    number = epoch if run.budget.unit == EPOCH else counters["step"]
    if (stopping or due or at_stop) and run.feed.resumes_mid_epoch:
        state = run.sums.to_state(runner.world, run.device)
        run.saver.save(run.precision, signals, "interrupt", number, state, run.provenance, run.feed)
        run.clock.restart()
    elif due:
        run.clock.restart()
    if stopping and run.feed.resumes_mid_epoch:
        name = checkpoints.make_filename(number, "interrupt", run.saver.sharded)
        raise TrainingInterrupted(
            f"training stopped by {signals.name} at {where}; saved {name}: run train again to resume"
        )
    if stopping:
        raise TrainingInterrupted(
            f"training stopped by {signals.name} at {where} without a checkpoint, "
            "as the train loader cannot resume mid-epoch: "
            f"run train again to resume from {run.budget.unit} {counters[run.budget.unit]}"
        )
    if at_stop:
        return stop_for(run.budget, runner, ITERATION, f"stopped at {where}, as asked")
    return None


def record_point(run: Run, point: int) -> dict[str, dict[str, float]]:
    """Average the train metrics since the last point, validate, and log both at `point`
    (an epoch, which is counted done once validated, or a step)."""
    runner = run.runner
    train_metrics = run.sums.average(runner.world, run.device)
    run.sums = MetricSums()
    validation_metrics = validate(runner, run.precision)
    if run.budget.unit == EPOCH:
        runner.counters.update(epoch=point, iteration=0)
    runner.history["train"].append(train_metrics)
    runner.history["validation"].append(validation_metrics)
    runner.train_epoch_log(point, train_metrics, validation_metrics, time.perf_counter() - run.started)
    run.started = time.perf_counter()
    return {"train": train_metrics, "validation": validation_metrics}


def save_point(run: Run, point: int, metrics: dict[str, dict[str, float]]) -> Stop | None:
    """Save the standard checkpoint of `point` (which then retires what retention does not
    keep), then stop if a signal, an observer, early stopping or the budget says so."""
    runner, unit = run.runner, run.budget.unit
    run.saver.save(run.precision, run.signals, "standard", point, provenance=run.provenance, feed=run.feed)
    run.clock.restart()
    if run.signals.requested(runner.world, run.device):
        raise TrainingInterrupted(f"training stopped by {run.signals.name} after {unit} {point}, which is saved")
    reasons = [observer(point, metrics) for observer in run.observers]
    reason = next((reason for reason in reasons if reason is not None), None)
    if reason is not None:
        runner.logger.info(f"training stopped after {unit} {point}: {reason}")
        return stop_for(run.budget, runner, OBSERVER, reason)
    if runner.train_early_stopping():
        runner.logger.info(f"early stopping after {unit} {point}")
        return stop_for(run.budget, runner, EARLY_STOPPING)
    if unit == STEP and run.budget.reached(runner.counters):
        return stop_for(run.budget, runner, MAX_STEPS)
    return None


def stop_for(budget: Budget, runner: Runner, reason: str, detail: str = "") -> Stop:
    """A Stop for `reason` with the epochs or steps done now."""
    return Stop(reason, budget.done(runner.counters), budget.limit, detail, budget.unit)


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
    param_dtype = Precision.DTYPES.get(precision.choice.used)
    runner.model = wrap_model(
        runner.model,
        runner.get_conf("trainer", "strategy"),
        runner.get_conf("trainer", "fsdp_modules"),
        runner.world,
        device,
        param_dtype,
    )
    runner.init_optimizer(device)
    if not isinstance(runner.optimizer, torch.optim.Optimizer):
        raise TypeError(f"init_optimizer must set self.optimizer, not {type(runner.optimizer).__name__}")
    runner.init_others(device)
    if runner.get_conf("trainer", "compile"):
        compiled = torch.compile(runner.model)
        assert isinstance(compiled, torch.nn.Module), "torch.compile wraps a Module in an OptimizedModule, a Module"
        runner.model = compiled
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
