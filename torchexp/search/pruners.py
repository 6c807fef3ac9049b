"""How a study stops, pauses and promotes its trials: one object behind one interface,
chosen once from the study's settings, as Optuna's `BasePruner` is.

- "none" trains every trial to max_epochs.
- "median" is Optuna's MedianPruner: after min_epochs, it stops a trial whose epoch value
  is worse than the median of earlier trials' at that epoch.
- "asha" is asynchronous successive halving (`torchexp.search.asha`): a trial pauses at
  each rung, and the best of a rung are promoted to train on to the next.

Importing this module does not import optuna; its methods do.
"""

import abc
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from torchexp.search.asha import count_reached, find_leader, find_promotions, make_rungs

if TYPE_CHECKING:
    from torchexp.search.study import SearchSettings


class TrialPruner(abc.ABC):
    """A study's pruning policy. A subclass says what Optuna's study is given and how far a
    new trial first trains; stopping, pausing and promoting are optional and do nothing here.

    Args:
        settings: the study's settings.
    """

    def __init__(self, settings: "SearchSettings"):
        self.settings = settings

    @abc.abstractmethod
    def optuna_pruner(self) -> Any:
        """The `optuna.pruners.BasePruner` to create or load the Optuna study with."""

    @abc.abstractmethod
    def first_target(self) -> int:
        """Epochs a new trial first trains to."""

    def stop_reason(self, trial: Any, epoch: int, value: float) -> str | None:
        """Why to stop a trial now that it reported `value` at `epoch`, or None to train on.

        Args:
            trial: the `optuna.trial.Trial`, its value reported.
            epoch: the epoch.
            value: the epoch's metric, a finite number.
        """
        return None

    def pause_rung(self, target_epochs: int, trained_epochs: int) -> int | None:
        """The rung at which a trial that trained `trained_epochs` of its `target_epochs`
        pauses, or None when it is finished."""
        return None

    def find_promotions(self, trials: list[Any]) -> Iterator[tuple[Any, int]]:
        """Yield (paused trial, epochs to train it to) for each trial to train on now.

        Args:
            trials: the study's frozen trials.
        """
        return iter(())

    def find_last_promotion(self, trials: list[Any]) -> tuple[Any, int, str] | None:
        """(paused trial, epochs to train it to, why in words) to train on once the study
        has all its trials and none is running, before the paused ones are pruned; None:
        prune them.

        Args:
            trials: the study's frozen trials.
        """
        return None

    def describe_rungs(self, trials: list[Any]) -> str | None:
        """How many trials reached each rung, in words, for the study's summary; None
        without rungs."""
        return None


class NoPruner(TrialPruner):
    """Every trial trains to max_epochs."""

    def optuna_pruner(self) -> Any:
        import optuna

        return optuna.pruners.NopPruner()

    def first_target(self) -> int:
        return self.settings.max_epochs


class MedianPruner(TrialPruner):
    """Optuna's MedianPruner: from epoch min_epochs on, once startup_trials trials are
    complete, a trial whose epoch value is worse than the median of earlier trials' at that
    epoch is stopped; the others train to max_epochs."""

    def optuna_pruner(self) -> Any:
        import optuna

        # Steps are epochs from 1: a trial may be stopped from epoch min_epochs on.
        return optuna.pruners.MedianPruner(
            n_startup_trials=self.settings.startup_trials, n_warmup_steps=self.settings.min_epochs
        )

    def first_target(self) -> int:
        return self.settings.max_epochs

    def stop_reason(self, trial: Any, epoch: int, value: float) -> str | None:
        if not trial.should_prune():
            return None
        return f"{self.settings.metric} {value:.4g} at epoch {epoch} is worse than the median of earlier trials"


class AshaPruner(TrialPruner):
    """ASHA: a new trial trains to the first rung and pauses at every rung but the last;
    `torchexp.search.asha.find_promotions` picks the paused trials that train on. Optuna's
    pruner stays idle.

    Attributes:
        rungs: epochs of the rungs, min_epochs * reduction_factor**k, the last max_epochs.
    """

    def __init__(self, settings: "SearchSettings"):
        super().__init__(settings)
        self.rungs = make_rungs(settings.min_epochs, settings.reduction_factor, settings.max_epochs)

    def optuna_pruner(self) -> Any:
        import optuna

        # ASHA's decisions are the scheduler's, made from the reported values.
        return optuna.pruners.NopPruner()

    def first_target(self) -> int:
        return self.rungs[0]

    def pause_rung(self, target_epochs: int, trained_epochs: int) -> int | None:
        # A trial that stopped early (the config's early stopping) short of its rung is finished.
        if trained_epochs >= target_epochs and target_epochs < self.settings.max_epochs:
            return self.rungs.index(target_epochs)
        return None

    def find_promotions(self, trials: list[Any]) -> Iterator[tuple[Any, int]]:
        return find_promotions(trials, self.rungs, self.settings.reduction_factor, self.settings.direction)

    def find_last_promotion(self, trials: list[Any]) -> tuple[Any, int, str] | None:
        # Too few trials for promotions to fill the last rung: its leader trains on to it,
        # once, so that the study has a trial trained to max_epochs to release.
        import optuna

        last = self.settings.max_epochs
        complete = optuna.trial.TrialState.COMPLETE
        if any(trial.state == complete or trial.user_attrs.get("target_epochs") == last for trial in trials):
            return None
        leader = find_leader(trials, self.rungs, self.settings.direction)
        if leader is None:
            return None
        why = (
            f"no trial reached the last rung, {self.settings.unit} {last}: trial {leader.number}, the best at the "
            f"highest rung reached (rung {leader.user_attrs['rung']}), trains on to it so that the study has a "
            "complete trial"
        )
        return leader, last, why

    def describe_rungs(self, trials: list[Any]) -> str | None:
        if len(self.rungs) == 1:
            return None
        counts = count_reached(trials, self.rungs, self.settings.direction)
        unit = self.settings.unit
        reached = [
            f"{unit} {epochs} by {count} trial{'s' * (count != 1)}"
            for epochs, count in zip(self.rungs, counts, strict=True)
        ]
        return f"rungs reached: {', '.join(reached)}"


PRUNERS: dict[str, type[TrialPruner]] = {"asha": AshaPruner, "median": MedianPruner, "none": NoPruner}


def make_trial_pruner(settings: "SearchSettings") -> TrialPruner:
    """The pruner the study's settings name."""
    return PRUNERS[settings.pruner](settings)
