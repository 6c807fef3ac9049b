"""Each pruner behind the one interface: what Optuna's study is given, how far a new trial
trains, when a trial stops, where it pauses, and which paused trials train on."""

import optuna
import pytest
from optuna.trial import TrialState

from torchexp.search.pruners import PRUNERS, AshaPruner, MedianPruner, NoPruner, TrialPruner, make_trial_pruner
from torchexp.search.study import SearchSettings


def make_settings(**changes) -> SearchSettings:
    values = {"direction": "minimize", "max_epochs": 9, "min_epochs": 1, "reduction_factor": 3, "startup_trials": 2, "pruner": "asha"}
    return SearchSettings(**{**values, **changes}, name="study", space={}, storage={"kind": "journal", "file": "journal.log"})


class FakeTrial:
    """An optuna.trial.Trial whose should_prune answers as told."""

    def __init__(self, prune: bool):
        self.prune = prune

    def should_prune(self) -> bool:
        return self.prune


def paused_trial(number: int, values: dict[int, float], rung: int) -> optuna.trial.FrozenTrial:
    """A trial ASHA paused at `rung` after reporting `values` by epoch."""
    trial = optuna.trial.create_trial(state=TrialState.RUNNING, intermediate_values=values, user_attrs={"status": "paused", "rung": rung})
    trial.number = number
    return trial


@pytest.mark.parametrize("name, kind", [("asha", AshaPruner), ("median", MedianPruner), ("none", NoPruner)])
def test_the_settings_name_the_pruner(name, kind):
    pruner = make_trial_pruner(make_settings(pruner=name))
    assert type(pruner) is kind and isinstance(pruner, TrialPruner)
    assert set(PRUNERS) == {"asha", "median", "none"}


def test_an_incomplete_pruner_cannot_be_made():
    class Incomplete(TrialPruner):
        def first_target(self) -> int:
            return 1

    with pytest.raises(TypeError, match="optuna_pruner"):
        Incomplete(make_settings())


def test_none_trains_every_trial_to_max_epochs_and_never_stops_pauses_or_promotes():
    pruner = NoPruner(make_settings(pruner="none"))
    assert isinstance(pruner.optuna_pruner(), optuna.pruners.NopPruner)
    assert pruner.first_target() == 9
    assert pruner.stop_reason(FakeTrial(prune=True), 3, 0.5) is None
    assert pruner.pause_rung(9, 9) is None
    assert list(pruner.find_promotions([paused_trial(0, {1: 0.1}, 0)])) == []


def test_median_gives_optuna_its_median_pruner_and_stops_a_trial_it_prunes():
    pruner = MedianPruner(make_settings(pruner="median", min_epochs=2, startup_trials=4))
    optuna_pruner = pruner.optuna_pruner()
    assert isinstance(optuna_pruner, optuna.pruners.MedianPruner)
    assert (optuna_pruner._n_startup_trials, optuna_pruner._n_warmup_steps) == (4, 2)
    assert pruner.first_target() == 9
    assert pruner.stop_reason(FakeTrial(prune=False), 3, 0.5) is None
    assert pruner.stop_reason(FakeTrial(prune=True), 3, 0.51234) == "validation.loss 0.5123 at epoch 3 is worse than the median of earlier trials"
    assert pruner.pause_rung(9, 9) is None
    assert list(pruner.find_promotions([paused_trial(0, {1: 0.1}, 0)])) == []


def test_asha_trains_to_the_first_rung_and_pauses_at_every_rung_but_the_last():
    pruner = AshaPruner(make_settings())
    assert isinstance(pruner.optuna_pruner(), optuna.pruners.NopPruner)
    assert pruner.rungs == [1, 3, 9]
    assert pruner.first_target() == 1
    assert pruner.stop_reason(FakeTrial(prune=True), 1, 0.5) is None
    assert (pruner.pause_rung(1, 1), pruner.pause_rung(3, 3)) == (0, 1)
    assert pruner.pause_rung(9, 9) is None  # the last rung: finished
    assert pruner.pause_rung(3, 2) is None  # stopped early short of its rung: finished


@pytest.mark.parametrize("direction, promoted", [("minimize", 1), ("maximize", 0)])
def test_asha_promotes_the_best_third_of_a_rung_to_the_next(direction, promoted):
    pruner = AshaPruner(make_settings(direction=direction))
    trials = [paused_trial(0, {1: 0.3}, 0), paused_trial(1, {1: 0.1}, 0), paused_trial(2, {1: 0.2}, 0)]
    assert [(trial.number, epochs) for trial, epochs in pruner.find_promotions(trials)] == [(promoted, 3)]
