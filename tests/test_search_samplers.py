"""The search's samplers: TPE sees ASHA's paused trials, and the first trials cover the space."""

import ast
import types

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from torchexp.search.options import StudyOptions
from torchexp.search import samplers
from torchexp.search.samplers import make_sampler, place_in, see_paused_as_pruned
from torchexp.search.space import Parameter

SPACE = types.SimpleNamespace(parameters=[Parameter("lr", "float", 0.0, 1.0), Parameter("decay", "float", 1e-5, 1e-1, log=True)])

optuna.logging.set_verbosity(optuna.logging.WARNING)


def ask(study: optuna.Study, count: int, seed: int = 0) -> optuna.Trial:
    """Trial number `count`, drawn as the search draws it."""
    study.sampler = make_sampler(StudyOptions(seed=seed), SPACE, count)
    trial = study.ask()
    for parameter in SPACE.parameters:
        parameter.suggest(trial)
    return trial


def pause(study: optuna.Study, lr: float, value: float) -> optuna.Trial:
    """A trial paused at rung 0 with `value` after its first epoch, as ASHA leaves it."""
    study.enqueue_trial({"lr": lr, "decay": 1e-3})
    trial = study.ask()
    for parameter in SPACE.parameters:
        parameter.suggest(trial)
    trial.report(value, 1)
    trial.set_user_attr("status", "paused")
    trial.set_user_attr("rung", 0)
    return trial


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_the_first_four_trials_put_each_parameter_in_a_different_quarter_of_its_range(seed):
    study = optuna.create_study()
    trials = [ask(study, count, seed) for count in range(4)]
    lr_quarters = sorted(int(trial.params["lr"] * 4) for trial in trials)
    assert lr_quarters == [0, 1, 2, 3]
    # decay is log-uniform over 1e-5..1e-1: its quarters end at 1e-4, 1e-3 and 1e-2.
    decay_quarters = sorted(sum(trial.params["decay"] >= edge for edge in (1e-4, 1e-3, 1e-2)) for trial in trials)
    assert decay_quarters == [0, 1, 2, 3]


def test_the_start_is_the_studys_own_sequence():
    first = [ask(optuna.create_study(), 0, seed=0).params for _ in range(2)]
    assert first[0] == first[1]
    assert ask(optuna.create_study(), 0, seed=1).params != first[0]


def make_rung_zero(told_pruned: bool) -> optuna.Study:
    """Ten trials after their first epoch, the deeper lr in its range the better: paused, or
    told PRUNED."""
    study = optuna.create_study()
    for index in range(10):
        lr = 0.05 + 0.1 * index
        trial = pause(study, lr, abs(lr - 0.95))
        if told_pruned:
            study.tell(trial, state=TrialState.PRUNED)
    return study


def test_paused_trials_steer_tpe_exactly_as_pruned_trials_do_and_stay_paused():
    paused, pruned = make_rung_zero(told_pruned=False), make_rung_zero(told_pruned=True)
    draws = [ask(paused, 10 + count).params for count in range(5)]
    assert draws == [ask(pruned, 10 + count).params for count in range(5)]
    waiting = [trial for trial in paused.get_trials() if trial.user_attrs.get("status") == "paused"]
    assert len(waiting) == 10 and all(trial.state == TrialState.RUNNING for trial in waiting)


def test_optunas_own_tpe_ignores_paused_trials():
    # What the sampler's view changes: Optuna's TPE, same seed, draws otherwise from paused trials.
    paused, pruned = make_rung_zero(told_pruned=False), make_rung_zero(told_pruned=True)
    paused.sampler, pruned.sampler = optuna.samplers.TPESampler(seed=10), optuna.samplers.TPESampler(seed=10)
    assert paused.ask().suggest_float("lr", 0.0, 1.0) != pruned.ask().suggest_float("lr", 0.0, 1.0)


def test_the_samplers_view_reads_paused_trials_as_pruned_and_nothing_else_changes():
    study = optuna.create_study(direction="maximize")
    pause(study, 0.5, 0.3)
    running = ask(study, 1)
    study.tell(ask(study, 2), 0.1)
    seen = see_paused_as_pruned(study)
    pruned = seen.get_trials(states=(TrialState.PRUNED,))
    assert [(trial.number, trial.intermediate_values, trial.params["lr"]) for trial in pruned] == [(0, {1: 0.3}, 0.5)]
    assert [trial.number for trial in seen.get_trials(states=(TrialState.RUNNING,))] == [running.number]
    assert [(trial.number, trial.value) for trial in seen.get_trials(states=(TrialState.COMPLETE,))] == [(2, 0.1)]
    assert study.get_trials()[0].state == TrialState.RUNNING
    assert seen.direction == study.direction


def is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def test_the_samplers_use_optunas_public_api_alone():
    # Optuna may change its private names in any release; the samplers read and override none.
    with open(samplers.__file__, encoding="utf-8") as file:
        tree = ast.parse(file.read())
    read = [node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute) and is_private(node.attr)]
    defined = [node.name for node in ast.walk(tree) if isinstance(node, ast.FunctionDef) and is_private(node.name)]
    assert (read, defined) == ([], [])


@pytest.mark.parametrize(
    ("distribution", "quantiles", "values"),
    [
        (FloatDistribution(0.0, 1.0), (0.0, 0.5, 0.999), (0.0, 0.5, 0.999)),
        (FloatDistribution(1e-4, 1e-1, log=True), (0.0, 1 / 3, 0.999), (1e-4, 1e-3, 0.0993)),
        (FloatDistribution(0.0, 1.0, step=0.25), (0.1, 0.4, 0.99), (0.0, 0.5, 1.0)),
        (IntDistribution(1, 4), (0.0, 0.3, 0.6, 0.99), (1, 2, 3, 4)),
        (IntDistribution(0, 10, step=5), (0.1, 0.5, 0.9), (0, 5, 10)),
        (IntDistribution(1, 100, log=True), (0.0, 0.5, 0.999), (1, 10, 100)),
        (CategoricalDistribution(["a", "b", "c"]), (0.0, 0.5, 0.999), ("a", "b", "c")),
    ],
)
def test_a_quantile_is_placed_within_its_distribution(distribution, quantiles, values):
    placed = [place_in(distribution, u) for u in quantiles]
    if isinstance(values[0], float):
        assert placed == pytest.approx(list(values), rel=1e-2)
    else:
        assert placed == list(values)
