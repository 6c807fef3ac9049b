"""The state of an experiment, as `compare` and `ExperimentView.state` show it.

Read from the experiment's files alone, without importing torch: whether a process holds
its lock, its checkpoints' names, and the last "stop" line of metrics.jsonl, which says why
its last `train` ended (`torchexp.metrics.Stop`).
"""

import os
import re

from torchexp import checkpoints, metrics
from torchexp.folder import Experiment
from torchexp.locks import is_locked

FINISHED = "finished"  # the planned trainer.max_epochs (or max_steps) are done
STOPPED_EARLY = "stopped early"  # early stopping, or an epoch observer (a search's pruner) ended it
# a `train --max-epochs` below trainer.max_epochs (or a search's rung) ended it
STOPPED_AT_MAX_EPOCHS = "stopped at --max-epochs"
STOPPED_AT_MAX_STEPS = "stopped at --max-steps"  # likewise, for an experiment trained by steps
PRUNED = "pruned"  # a search pruned it (a trial its pruner stopped, or that ASHA never promoted)
INTERRUPTED = "interrupted"  # a signal stopped it, or it was killed (nobody trains it, and it did not say why it ended)
FAILED = "failed"  # an error ended its last train
RUNNING = "running"  # a process holds the experiment's lock now
NOT_STARTED = "not started"  # no checkpoint yet
CORRUPT = "corrupt"  # config.json cannot be read
NOT_AN_EXPERIMENT = "not an experiment"  # a folder without config.json

STATES_OF_STOPS = {
    metrics.MAX_EPOCHS: STOPPED_AT_MAX_EPOCHS,
    metrics.MAX_STEPS: STOPPED_AT_MAX_STEPS,
    metrics.EARLY_STOPPING: STOPPED_EARLY,
    metrics.OBSERVER: STOPPED_EARLY,
    metrics.PRUNED: PRUNED,
    metrics.INTERRUPTED: INTERRUPTED,
    metrics.FAILED: FAILED,
}

# torchexp 0.1 wrote why training ended only in verbose.log, in these words; experiments it
# trained have no "stop" lines, and are read this way. A stop by signal read "training stopped
# by SIGINT" and is no match.
LEGACY_STOP_PATTERN = re.compile(r"(?:early stopping|training stopped(?: early)?) after epoch (\d+)")
LOG_TAIL_BYTES = 64 * 1024  # the end of verbose.log holds the last run's closing lines


def read_state(experiment: Experiment, max_epochs: int) -> str:
    """Return the state of an experiment whose config asks for `max_epochs` epochs (or
    steps, for one trained by steps: checkpoint numbers count them): one of running,
    interrupted, not started, finished, stopped at --max-epochs (--max-steps), stopped
    early, pruned, failed."""
    if is_locked(experiment.lock_path):
        return RUNNING
    found = scan_checkpoint_names(experiment.checkpoints_path)
    if found.get("interrupt"):
        return INTERRUPTED
    done = max(found.get("standard", [0]))
    if done >= max_epochs:
        return FINISHED
    stop = metrics.read_last_stop(experiment.metrics_path)
    if stop is not None and stop.done == done:
        return STATES_OF_STOPS.get(stop.reason, INTERRUPTED)
    if done == 0:
        return NOT_STARTED
    if stop is None and read_legacy_stop_epoch(experiment.log_path) == done:
        return STOPPED_EARLY
    return INTERRUPTED


def scan_checkpoint_names(folder: str) -> dict[str, list[int]]:
    """Epochs of the checkpoints in `folder` by kind, from the file names alone."""
    found: dict[str, list[int]] = {}
    for name in os.listdir(folder) if os.path.isdir(folder) else []:
        parsed = checkpoints.parse_filename(name)
        if parsed is not None:
            found.setdefault(parsed[1], []).append(parsed[0])
    return found


def read_legacy_stop_epoch(log_path: str) -> int | None:
    """The epoch after which a torchexp 0.1 verbose.log last says training stopped early."""
    try:
        with open(log_path, "rb") as file:
            file.seek(max(0, os.path.getsize(log_path) - LOG_TAIL_BYTES))
            tail = file.read().decode("utf-8", errors="replace")
    except OSError:
        return None
    matches = LEGACY_STOP_PATTERN.findall(tail)
    return int(matches[-1]) if matches else None
