"""Asynchronous successive halving (ASHA, Li et al. 2020) on top of Optuna trials.

One Optuna trial is one configuration and one experiment. Rungs lie at `min_epochs *
eta**k` epochs, the last at `max_epochs`. A trial that reaches a rung below the last is
paused at its checkpoint: its Optuna state stays RUNNING (Optuna never reopens a finished
trial, so a trial that may still be promoted must not be finished) with the user attrs
`status: "paused"` and `rung: k`. It is promoted when its value at rung k is among the best
`floor(n_k / eta)` of the `n_k` trials that reached rung k; it then trains on from its
checkpoint to the next rung, bit-identical to a trial trained straight through. A trial
that reaches the last rung is COMPLETE. Paused trials are told PRUNED only when the study
has all its trials and nothing can be promoted any more: that is final.

With fewer trials than reduction_factor**k, floor(n_k / eta) may be 0 below the last rung,
and no trial would reach it: a study with nothing to release. Then, once the study has all
its trials and nothing runs, its leader (the best paused trial at the highest rung a paused
trial is at) trains on to the last rung (`find_leader`), once per study.
"""

import math
from collections.abc import Iterator
from typing import Any

from torchexp.metrics import find_best


def make_rungs(min_epochs: int, eta: int, max_epochs: int) -> list[int]:
    """Epochs of the rungs: min_epochs * eta**k below max_epochs, then max_epochs."""
    rungs = []
    epochs = min_epochs
    while epochs < max_epochs:
        rungs.append(epochs)
        epochs *= eta
    return [*rungs, max_epochs]


def rung_value(trial: Any, epochs: int, direction: str) -> float | None:
    """A trial's value at the rung of `epochs`: its best metric over epochs 1 to `epochs`,
    or None when it has not reported that far."""
    values = trial.intermediate_values
    if not values or max(values) < epochs:
        return None
    best = find_best(
        ((step, value) for step, value in values.items() if step <= epochs and math.isfinite(value)), direction
    )
    return None if best is None else best[1]


def is_paused(trial: Any, rung: int | None = None) -> bool:
    """Whether a trial is paused (at `rung`, when given)."""
    from optuna.trial import TrialState

    attrs = trial.user_attrs
    return (
        trial.state == TrialState.RUNNING
        and attrs.get("status") == "paused"
        and (rung is None or attrs.get("rung") == rung)
    )


def find_promotions(trials: list[Any], rungs: list[int], eta: int, direction: str) -> Iterator[tuple[Any, int]]:
    """Yield (paused trial, epochs of its next rung) for each trial ASHA promotes now,
    higher rungs first.

    At rung k, of the n_k trials that reached it (in any state), the best floor(n_k / eta)
    by their rung-k value are promoted; those still paused there have not been yet.
    """
    sign = 1 if direction == "minimize" else -1
    for rung in range(len(rungs) - 2, -1, -1):
        reached = [
            (sign * value, trial.number, trial)
            for trial in trials
            if (value := rung_value(trial, rungs[rung], direction)) is not None
        ]
        reached.sort(key=lambda entry: entry[:2])
        for _, _, trial in reached[: len(reached) // eta]:
            if is_paused(trial, rung):
                yield trial, rungs[rung + 1]


def find_leader(trials: list[Any], rungs: list[int], direction: str) -> Any | None:
    """The best paused trial, by its value at its rung, of those paused at the highest rung
    any trial is paused at; None when no trial is paused."""
    paused = [trial for trial in trials if is_paused(trial)]
    if not paused:
        return None
    top = max(trial.user_attrs["rung"] for trial in paused)
    sign = 1 if direction == "minimize" else -1
    ranked = [
        (sign * value, trial.number, trial)
        for trial in paused
        if trial.user_attrs["rung"] == top and (value := rung_value(trial, rungs[top], direction)) is not None
    ]
    return min(ranked, key=lambda entry: entry[:2])[2] if ranked else None


def count_reached(trials: list[Any], rungs: list[int], direction: str) -> list[int]:
    """How many trials (in any state) reported as far as each rung."""
    return [sum(rung_value(trial, epochs, direction) is not None for trial in trials) for epochs in rungs]
