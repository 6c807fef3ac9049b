"""The samplers that draw a trial's parameters: grid, random, and TPE as the search uses it.

The search's TPE differs from Optuna's in two ways, both for ASHA, where most trials wait
paused at a rung:

- **Paused trials count.** A paused trial stays RUNNING in Optuna (it may be promoted), so
  Optuna's TPE would not see it until it finishes. Here it is seen as Optuna sees a pruned
  trial, through its last intermediate value: the deeper its rung and the better its value,
  the more it pulls the next draws. TPE draws from a copy of the study in memory where
  paused trials are PRUNED, made once per trial with Optuna's public API alone; the storage
  is untouched, and paused trials stay resumable and promotable.
- **The first trials cover the space.** Until TPE has enough observations, trial k takes
  point k of one scrambled Sobol sequence seeded by the study's seed, instead of a random
  draw from a generator seeded with k: consecutive seeds gave every study's first four
  trials nearly the same first parameter (its 0.42 to 0.55 quantiles with seed 0).
"""

import copy
import math
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import FrozenTrial, TrialState

from torchexp.search.asha import is_paused
from torchexp.search.options import StudyOptions

STARTUP_TRIALS = 10  # Optuna TPE's default n_startup_trials


def derive_seed(seed: int, count: int) -> int:
    """The sampler's seed for the study's trial number `count`: every trial draws from its
    own generator, so that workers sharing one seed do not draw the same values, and a
    study's draws do not depend on which process made them."""
    return (seed * 1_000_003 + count) % 2**32


class GridSampler(optuna.samplers.GridSampler):
    """Optuna's grid sampler, except that telling the grid's last trial does not call
    `study.stop()`, which only works inside `optimize()`: the search caps --trials at the
    grid's size instead."""

    def after_trial(self, study: Any, trial: Any, state: Any, values: Any) -> None:
        pass


def see_paused_as_pruned(study: optuna.Study) -> optuna.Study:
    """A copy of `study` in memory, as the sampler sees it: its paused trials PRUNED, the
    rest as stored, every trial under its own number."""
    seen = optuna.create_study(directions=study.directions, sampler=optuna.samplers.RandomSampler())
    trials = study.get_trials(deepcopy=False)
    seen.add_trials([read_as_pruned(trial) if is_paused(trial) else trial for trial in trials])
    return seen


def read_as_pruned(trial: FrozenTrial) -> FrozenTrial:
    """A copy of a paused trial in the PRUNED state, its intermediate values kept (a
    finished trial has an end: its start stands for it)."""
    seen = copy.copy(trial)
    seen.state = TrialState.PRUNED
    seen.datetime_complete = trial.datetime_start
    return seen


class SobolStart:
    """Point `index` of a scrambled Sobol sequence over the search space, one dimension per
    parameter in the space's order.

    Not Optuna's QMCSampler: it draws the first trial at random (it learns the search space
    from the trials), and counts its points in a study attribute that several processes
    may read and write at once (Optuna's own note: each point is drawn "at least once").
    The search knows its space before the first trial, and a trial's number is unique.

    Args:
        names: the parameters' names, in the space's order.
        seed: the study's seed: one sequence for the whole study.
        index: the trial's number: its point in the sequence.
    """

    def __init__(self, names: list[str], seed: int, index: int):
        self.names = names
        self.seed = seed
        self.index = index
        self.point: list[float] | None = None

    def place(self, name: str, distribution: BaseDistribution) -> Any:
        """The parameter's value at this point, within its distribution."""
        if self.point is None:
            from scipy.stats import qmc

            # random_base2 takes a power of two, the size at which Sobol points are balanced.
            points = qmc.Sobol(d=len(self.names), scramble=True, seed=self.seed).random_base2(
                max(0, math.ceil(math.log2(self.index + 1)))
            )
            self.point = [float(value) for value in points[self.index]]
        return place_in(distribution, self.point[self.names.index(name)])


def place_in(distribution: BaseDistribution, u: float) -> Any:
    """The value at quantile `u` (in [0, 1)) of a uniform or log-uniform distribution."""
    if isinstance(distribution, CategoricalDistribution):
        choices = distribution.choices
        return choices[min(int(u * len(choices)), len(choices) - 1)]
    assert isinstance(distribution, (IntDistribution, FloatDistribution)), "a space draws choices, ints and floats"
    low, high = distribution.low, distribution.high
    if isinstance(distribution, IntDistribution) and not distribution.log:
        count = (high - low) // distribution.step + 1
        return low + min(int(u * count), count - 1) * distribution.step
    if distribution.log:
        value = math.exp(math.log(low) + u * (math.log(high) - math.log(low)))
    else:
        value = low + u * (high - low)
    if isinstance(distribution, IntDistribution):
        return min(max(round(value), low), high)
    if distribution.step is not None:
        value = low + round((value - low) / distribution.step) * distribution.step
    return min(max(value, low), high)


class PausedAwareTPESampler(optuna.samplers.TPESampler):
    """Optuna's TPE that sees paused trials as pruned ones and starts on a Sobol sequence.

    Optuna's TPE is multivariate by default for one objective: once it has enough
    observations it draws all parameters at once (`sample_relative`); before that, and for
    parameters outside the joint space, one at a time (`sample_independent`). Each entry
    point draws from the study as `see_paused_as_pruned` copies it, once per trial.

    Args:
        start: the trial's Sobol point, used while the study has fewer than
            `STARTUP_TRIALS` observations (finished or paused trials).
        seed: TPE's own seed, for its draws once it has enough observations.
    """

    def __init__(self, start: SobolStart, seed: int):
        super().__init__(seed=seed, n_startup_trials=STARTUP_TRIALS)
        self.start = start
        self.seen: tuple[int, optuna.Study] | None = None  # (trial number, the study it sees)

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return super().infer_relative_search_space(self.see(study, trial), trial)

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        return super().sample_relative(self.see(study, trial), trial, search_space)

    def sample_independent(
        self, study: optuna.Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution
    ) -> Any:
        seen = self.see(study, trial)
        if param_name in self.start.names and self.is_starting(seen):
            return self.start.place(param_name, param_distribution)
        return super().sample_independent(seen, trial, param_name, param_distribution)

    def see(self, study: optuna.Study, trial: FrozenTrial) -> optuna.Study:
        """The study as this trial's draws see it, copied at its first draw."""
        if self.seen is None or self.seen[0] != trial.number:
            self.seen = (trial.number, see_paused_as_pruned(study))
        return self.seen[1]

    def is_starting(self, study: optuna.Study) -> bool:
        """Whether the study has too few observations for TPE to model."""
        return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))) < STARTUP_TRIALS


def make_sampler(settings: StudyOptions, space: Any, count: int) -> Any:
    """The Optuna sampler that draws trial number `count`."""
    if settings.sampler == "grid":
        return GridSampler(space.grid(), seed=settings.seed)
    if settings.sampler == "random":
        return optuna.samplers.RandomSampler(seed=derive_seed(settings.seed, count))
    start = SobolStart([parameter.key for parameter in space.parameters], settings.seed % 2**32, count)
    return PausedAwareTPESampler(start, seed=derive_seed(settings.seed, count))
