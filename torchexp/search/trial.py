"""One trial: create its experiment, train it with an observer that reports each epoch to
the study, and record how it ended.

A trial is created as `init` creates an experiment (`init_experiment`) and trained as
`train` trains one (`train_experiment`), so resume, locks, checkpoints and Ctrl-C behave
exactly as they do there.
"""

import dataclasses
import math
from typing import Any

from torchexp import checkpoints
from torchexp.creation import init_experiment
from torchexp.errors import ConfigError, ProjectError, TorchexpError, first_line
from torchexp.folder import Experiment
from torchexp.metrics import EARLY_STOPPING, FAILED, PRUNED, find_best, is_number, parse_metric, read_last_stop
from torchexp.search.options import flag
from torchexp.search.pruners import TrialPruner
from torchexp.search.scheduler import PAUSED_STATUS, Work
from torchexp.search.study import Search, record_stop, trained_epochs
from torchexp.training import train_experiment


@dataclasses.dataclass(frozen=True)
class Outcome:
    """How a trial's training ended: "trained" (to its target, or stopped early by the
    config's early stopping), "pruned" or "failed", with the reason."""

    kind: str
    reason: str = ""


class EpochReporter:
    """The epoch observer of a trial: reports each epoch's metric to Optuna, and stops the
    trial when the metric is not finite or the pruner says so.

    Args:
        trial: the `optuna.trial.Trial`.
        metric: the study's metric, "split.name".
        pruner: the study's pruner.
        reported: the epochs the study already holds a value of.
    """

    def __init__(self, trial: Any, metric: str, pruner: TrialPruner, reported: set[int]):
        self.trial = trial
        self.metric = metric
        self.pruner = pruner
        self.reported = set(reported)
        self.outcome: Outcome | None = None

    def __call__(self, epoch: int, metrics: dict[str, dict[str, float]]) -> str | None:
        self.outcome = self.report(epoch, read_metric(metrics, self.metric, epoch))
        return self.outcome.reason if self.outcome else None

    def report(self, epoch: int, value: float | None) -> Outcome | None:
        """Report epoch `epoch`'s metric (None: not a number); return a reason to stop, if any."""
        if value is None or not math.isfinite(value):
            return Outcome("failed", f"{self.metric} is {'nan' if value is None else value} at epoch {epoch}")
        # An epoch reported before a kill is not reported again (Optuna would ignore it, warning).
        if epoch not in self.reported:
            self.trial.report(value, epoch)
            self.reported.add(epoch)
        reason = self.pruner.stop_reason(self.trial, epoch, value)
        return None if reason is None else Outcome("pruned", reason)

    def catch_up(self, experiment: Experiment) -> Outcome | None:
        """Report the epochs whose checkpoints exist but whose reports were lost with a killed
        process, from the checkpoints' records; return a reason to stop, if any."""
        for info in checkpoints.list_checkpoints(experiment.checkpoints_path, ("standard",)):
            outcome = self.report(info.epoch, read_metric(info.metrics, self.metric, info.epoch))
            if outcome is not None:
                return outcome
        return None


def read_metric(metrics: dict[str, dict[str, Any]], metric: str, epoch: int) -> float | None:
    """The metric's value in an epoch's metrics; None when it is not a number (a diverged
    loss is saved as null).

    Raises:
        ConfigError: the epoch has no such metric; the message lists those it has.
    """
    split, name = parse_metric(metric)
    values = metrics.get(split) or {}
    if name not in values:
        found = sorted(
            f"{split_name}.{key}" for split_name, split_values in metrics.items() for key in (split_values or {})
        )
        raise ConfigError(
            f"metric {metric} is not among the metrics of epoch {epoch} ({', '.join(found) or 'none'}): "
            "choose one of them "
            f"with {flag('metric')} and another --experiment-name (a study's metric cannot change)"
        )
    value = values[name]
    return float(value) if is_number(value) else None


def create_trial_experiment(search: Search, frozen: Any) -> Experiment:
    """Create a trial's experiment unless it exists: the space's configuration with the
    trial's parameters, trained to the study's max epochs, seeded with the study's seed (so
    every trial shares one validation split)."""
    settings = search.settings
    experiment = search.folder.trial_experiment(frozen.number)
    if not experiment.exists():
        conf = search.space.build_config(
            search.schema, {**frozen.params, f"trainer.max_{settings.unit}s": settings.max_epochs}
        )
        extra = {"search": {"study": settings.name, "trial": frozen.number, "parameters": frozen.params}}
        init_experiment(search.project, experiment, conf, settings.seed, extra)
    return experiment


def train_trial(search: Search, work: Work) -> Outcome:
    """Create (when new) and train the claimed trial of `work` to its target epochs, on the
    device, workers and log period of the search's run options.

    Raises:
        TorchexpError: a mistake every trial would make (missing data, a bad device) or a
            stop signal; the trial stays as it is, to be resumed.
    """
    import optuna

    frozen = get_trial(search.study, work.number)
    experiment = create_trial_experiment(search, frozen)
    trial = optuna.trial.Trial(search.study, work.trial_id)
    reporter = EpochReporter(trial, search.settings.metric, search.pruner, set(frozen.intermediate_values))
    outcome = reporter.catch_up(experiment)
    if outcome is not None:
        return outcome
    run = search.run
    try:
        by_epochs = search.settings.unit == "epoch"
        max_epochs, max_steps = (work.target_epochs, None) if by_epochs else (None, work.target_epochs)
        train_experiment(
            search.project,
            experiment,
            run.device,
            run.num_workers,
            max_epochs=max_epochs,
            max_steps=max_steps,
            log_period=run.log_period,
            epoch_observers=(reporter,),
        )
    except ProjectError as error:  # the trial's own failure (a bug, a numerical error): the study goes on
        search.logger.debug(f"trial {work.number} failed", exc_info=True)
        return Outcome("failed", str(error))
    except TorchexpError:
        raise
    except Exception as error:  # torchexp's own bug, in this trial only: the study goes on
        search.logger.debug(f"trial {work.number} failed", exc_info=True)
        return Outcome("failed", f"{type(error).__name__}: {first_line(error)}")
    return reporter.outcome or Outcome("trained")


def record_outcome(search: Search, work: Work, outcome: Outcome) -> str:
    """Tell Optuna how the trial ended, or pause it at a rung of the pruner; call it holding
    the scheduler lock. Returns what happened, for the log."""
    import optuna

    study, settings = search.study, search.settings
    state = optuna.trial.TrialState
    trial = optuna.trial.Trial(study, work.trial_id)
    experiment = search.folder.trial_experiment(work.number)
    if outcome.kind == "failed":
        trial.set_user_attr("error", outcome.reason)
        study.tell(work.number, state=state.FAIL)
        last = read_last_stop(experiment.metrics_path)
        if last is None or last.reason != FAILED:  # a metric that is not finite: training itself ended well
            record_stop(experiment, FAILED, outcome.reason, settings)
        return f"failed: {outcome.reason}"
    if outcome.kind == "pruned":
        trial.set_user_attr("stopped", outcome.reason)
        study.tell(work.number, state=state.PRUNED)
        record_stop(experiment, PRUNED, outcome.reason, settings)
        return f"pruned: {outcome.reason}"
    epochs = trained_epochs(experiment)
    # The config's early stopping may end a trial on a rung: it would train no further there.
    stop = read_last_stop(experiment.metrics_path)
    stopped_early = stop is not None and stop.reason == EARLY_STOPPING and stop.done == epochs
    rung = None if stopped_early else search.pruner.pause_rung(work.target_epochs, epochs)
    if rung is not None:
        trial.set_user_attr("rung", rung)
        trial.set_user_attr("status", PAUSED_STATUS)
        return f"paused at rung {rung}, after {settings.unit} {epochs}"
    values = get_trial(study, work.number).intermediate_values
    if not values:
        trial.set_user_attr("error", f"no epoch reported {settings.metric}")
        study.tell(work.number, state=state.FAIL)
        return f"failed: no epoch reported {settings.metric}"
    value = best_value(values, settings.direction)
    study.tell(work.number, value, state=state.COMPLETE)
    return (
        f"complete after {epochs} {settings.unit}s{' (stopped early)' if stopped_early else ''}: "
        f"{settings.metric} {value:.4g}"
    )


def get_trial(study: Any, number: int) -> Any:
    """The study's frozen trial `number` as the storage holds it now (numbers count from 0)."""
    return study.get_trials(deepcopy=False)[number]


def best_value(values: dict[int, float], direction: str) -> float:
    """The best of a trial's per-epoch values: a trial's value is its best epoch's metric."""
    return pick_best(values, direction)[1]


def best_epoch(values: dict[int, float], direction: str) -> int:
    """The epoch of the best value (the earliest, on a tie)."""
    return pick_best(values, direction)[0]


def pick_best(values: dict[int, float], direction: str) -> tuple[int, float]:
    """The (epoch, value) of the best of a trial's per-epoch values, which it has."""
    best = find_best(values.items(), direction)
    assert best is not None, "a trial is judged once it reported a value"
    return best
