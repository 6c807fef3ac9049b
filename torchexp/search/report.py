"""The table of a study's trials and its best trial, as `search` and `search --status` print it."""

import json
from typing import Any

from torchexp.errors import ProjectError
from torchexp.search.pruners import make_trial_pruner
from torchexp.search.scheduler import is_claimed
from torchexp.search.study import SearchSettings, StudyFolder, trained_epochs
from torchexp.search.trial import best_epoch

HEADER = ("trial", "parameters", "value", "state")  # then "epochs", or "steps" for a study trained by steps


def describe_state(trial: Any, folder: StudyFolder) -> str:
    """A trial's state in words: complete, pruned, failed with its error, paused at rung k,
    running (a process holds it) or waiting (to be resumed by the next search process)."""
    from optuna.trial import TrialState

    attrs = trial.user_attrs
    if trial.state == TrialState.COMPLETE:
        return "complete"
    if trial.state == TrialState.PRUNED:
        return f"pruned: {attrs['stopped']}" if "stopped" in attrs else "pruned"
    if trial.state == TrialState.FAIL:
        return f"failed: {attrs['error']}" if "error" in attrs else "failed"
    if attrs.get("status") == "paused":
        return f"paused at rung {attrs.get('rung')}"
    return "running" if is_claimed(folder, trial.number) else "waiting"


def format_parameters(params: dict[str, Any]) -> str:
    """`training.lr=0.003162, model.name="cnn"`: floats to 4 significant digits, the rest as JSON."""
    return ", ".join(
        f"{key}={value:.4g}" if isinstance(value, float) else f"{key}={json.dumps(value)}"
        for key, value in params.items()
    )


def format_value(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def make_rows(trials: list[Any], folder: StudyFolder) -> list[tuple[str, ...]]:
    """One row per trial: number, parameters, value, state, epochs trained (from its checkpoints)."""
    return [
        (
            str(trial.number),
            format_parameters(trial.params),
            format_value(trial.value),
            describe_state(trial, folder),
            str(trained_epochs(folder.trial_experiment(trial.number))),
        )
        for trial in trials
    ]


def format_table(rows: list[tuple[str, ...]], unit: str = "epoch") -> str:
    """Rows under HEADER and the unit's column, in columns padded to their widest cell."""
    lines = [(*HEADER, f"{unit}s"), *rows]
    widths = [max(len(line[column]) for line in lines) for column in range(len(lines[0]))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip() for line in lines
    )


def describe_best(study: Any, folder: StudyFolder, settings: SearchSettings, program: str) -> str:
    """The best complete trial, its value and epoch, and the command lines that test and release it."""
    from optuna.trial import TrialState

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        return "best: none yet (no trial is complete)"
    best = study.best_trial
    epoch, unit = best_epoch(best.intermediate_values, settings.direction), settings.unit
    address = f"{program} {folder.trial_address(best.number)}"
    return "\n".join(
        [
            f"best: trial {best.number}, {settings.metric} {best.value:.4g} at {unit} {epoch} "
            f"({format_parameters(best.params)})",
            f"  {address} info",
            f"  {address} test --{unit} {epoch}",
            f"  {address} create_release --{unit} {epoch}",
        ]
    )


def summarize(study: Any, folder: StudyFolder, settings: SearchSettings, program: str) -> str:
    """The trials' table, the counts by state and the best trial."""
    trials = study.get_trials(deepcopy=False)
    rows = make_rows(trials, folder)
    counts: dict[str, int] = {}
    for row in rows:
        word = row[3].split(":")[0].split(" at ")[0]
        counts[word] = counts.get(word, 0) + 1
    epochs = sum(int(row[4]) for row in rows)
    rungs = make_trial_pruner(settings).describe_rungs(trials)
    states = ", ".join(f"{n} {word}" for word, n in counts.items()) or "none"
    title = (
        f"study {settings.name}: {len(trials)} trials ({states}), {epochs} {settings.unit}s trained; "
        f"{settings.direction} {settings.metric}"
    )
    lines = [title, format_table(rows, settings.unit), rungs, describe_best(study, folder, settings, program)]
    return "\n".join(line for line in lines if line is not None)


def check_some_trial_succeeded(study: Any, settings: SearchSettings) -> None:
    """Raise when every trial of the study failed: a search with nothing to show is an error.

    Raises:
        ProjectError: every trial failed; the sentence gives their number and the first one's error.
    """
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    if not trials or any(trial.state != TrialState.FAIL for trial in trials):
        return
    first = trials[0]
    error = first.user_attrs.get("error", "no error was recorded")
    if len(trials) == 1:
        raise ProjectError(f"the only trial of study {settings.name!r}, trial {first.number}, failed: {error}")
    every = f"all {len(trials)} trials of study {settings.name!r} failed"
    raise ProjectError(f"{every}; the first, trial {first.number}: {error}")
