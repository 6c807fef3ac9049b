"""Which process trains which trial: claims, the scheduler lock and the rules that pick work.

A trial is being worked on exactly when some process holds its claim, an flock on
`.claims/trial-NNNN.lock`; the kernel releases it when that process dies, so a killed
worker's trial is free again at once, without Optuna's heartbeats. Decisions are made
under the study-wide `.scheduler.lock`: pick work, take its claim, record its status,
release the lock, then train holding the claim. Under the lock a process picks, in order:

1. a trial that was being trained but whose claim is free (its worker died or was
   stopped): it resumes from its last checkpoint;
2. a paused trial that the pruner promotes (ASHA's);
3. a new trial, while the study has fewer trials than asked for, in any state;
4. otherwise it waits while other processes hold claims (their results may promote a
   paused trial);
5. then the pruner's last promotion (ASHA's leader, when no trial reached the last rung),
   or the search is done.
"""

import dataclasses
import os
from typing import Any, Literal

from torchexp.locks import FileLock, is_locked
from torchexp.metrics import PRUNED
from torchexp.search.asha import is_paused
from torchexp.search.samplers import make_sampler
from torchexp.search.study import Search, StudyFolder, record_stop

RUNNING_STATUS = "running"
PAUSED_STATUS = "paused"


def hold_scheduler_lock(folder: StudyFolder) -> FileLock:
    """The study's scheduler lock, to hold with `with`, waiting for it."""
    return FileLock(folder.scheduler_lock_path)


class Claim:
    """This process's claim on a trial: its lock, held until `release` or the process's end.

    Args:
        lock: the claim file's lock, taken.
        number: the trial's number.
    """

    def __init__(self, lock: FileLock, number: int):
        self.lock = lock
        self.number = number

    def release(self) -> None:
        """Give the trial up; releasing twice does nothing."""
        self.lock.release()


def claim_path(folder: StudyFolder, number: int) -> str:
    return os.path.join(folder.claims_path, f"{folder.trial_name(number)}.lock")


def try_claim(folder: StudyFolder, number: int) -> Claim | None:
    """Claim trial `number`, or return None when a process (this one included) holds it."""
    os.makedirs(folder.claims_path, exist_ok=True)
    lock = FileLock(claim_path(folder, number))
    return Claim(lock, number) if lock.acquire(blocking=False) else None


def is_claimed(folder: StudyFolder, number: int) -> bool:
    """Whether a process (this one included) holds trial `number`'s claim; read-only, so
    that `search --status` writes nothing."""
    return is_locked(claim_path(folder, number))


@dataclasses.dataclass
class Work:
    """A trial this process is to train, claimed.

    Attributes:
        number: the trial's number.
        trial_id: its Optuna id, for `optuna.trial.Trial(study, trial_id)`.
        kind: "resume", "promote" or "new".
        target_epochs: epochs to train it to.
        claim: the claim, to release when done.
    """

    number: int
    trial_id: int
    kind: str
    target_epochs: int
    claim: Claim


def pick_work(search: Search, total_trials: int) -> Work | Literal["wait", "done"]:
    """Apply the scheduling rules once; call it holding the scheduler lock.

    Args:
        search: the open study.
        total_trials: trials the study is to have in all.

    Returns:
        The claimed Work, "wait" while others train, or "done" (then paused trials,
        which nothing can promote any more, have been pruned).
    """
    study, folder = search.study, search.folder
    trials = study.get_trials(deepcopy=False)
    fail_unfinished_creations(study, trials)
    for trial in trials:
        if is_resumable(trial):
            claim = try_claim(folder, trial.number)
            if claim is not None:
                return Work(trial.number, trial._trial_id, "resume", trial.user_attrs["target_epochs"], claim)
    for trial, epochs in search.pruner.find_promotions(trials):
        claim = try_claim(folder, trial.number)
        if claim is not None:
            mark_running(study, trial._trial_id, epochs)
            return Work(trial.number, trial._trial_id, "promote", epochs, claim)
    if len(trials) < total_trials:
        return start_trial(search, len(trials))
    if any(is_resumable(trial) and is_claimed(folder, trial.number) for trial in trials):
        return "wait"
    last = search.pruner.find_last_promotion(trials)
    if last is not None:
        trial, epochs, why = last
        claim = try_claim(folder, trial.number)
        if claim is None:  # a paused trial's claim is free under this lock; were it not, pruning it would be wrong
            return "wait"
        search.logger.info(why)
        mark_running(study, trial._trial_id, epochs)
        return Work(trial.number, trial._trial_id, "promote", epochs, claim)
    for trial in trials:
        if is_paused(trial):
            prune_paused(search, trial)
    return "done"


def is_resumable(trial: Any) -> bool:
    """Whether a trial is unfinished and not paused: someone trains it, or should."""
    from optuna.trial import TrialState

    return trial.state == TrialState.RUNNING and trial.user_attrs.get("status") == RUNNING_STATUS


def start_trial(search: Search, count: int) -> Work:
    """Ask Optuna for trial number `count`, claim it, draw its parameters and record it."""
    study = search.study
    study.sampler = make_sampler(search.settings, search.space, count)
    trial = study.ask()
    claim = try_claim(search.folder, trial.number)
    assert claim is not None, "nobody else can hold the claim of a trial created under the scheduler lock"
    search.space.sample(trial)
    target = search.pruner.first_target()
    trial.set_user_attr("experiment", search.folder.trial_name(trial.number))
    mark_running(study, trial._trial_id, target)
    return Work(trial.number, trial._trial_id, "new", target, claim)


def mark_running(study: Any, trial_id: int, target_epochs: int) -> None:
    """Record that a trial is being trained to `target_epochs`; the status comes last, so a
    trial with a status is completely recorded."""
    import optuna

    trial = optuna.trial.Trial(study, trial_id)
    trial.set_user_attr("target_epochs", target_epochs)
    trial.set_user_attr("status", RUNNING_STATUS)


def fail_unfinished_creations(study: Any, trials: list[Any]) -> None:
    """Fail RUNNING trials without a status: their process died while creating them, under
    the scheduler lock this process now holds, so their parameters may be incomplete."""
    import optuna

    for trial in trials:
        if trial.state == optuna.trial.TrialState.RUNNING and "status" not in trial.user_attrs:
            optuna.trial.Trial(study, trial._trial_id).set_user_attr(
                "error", "its search process stopped while creating it"
            )
            study.tell(trial.number, state=optuna.trial.TrialState.FAIL)


def prune_paused(search: Search, trial: Any) -> None:
    """Tell Optuna a paused trial is PRUNED: nothing can promote it any more. Its value is its
    last reported metric (Optuna's rule for pruned trials). Its metrics.jsonl says so too."""
    import optuna

    reason = f"not promoted from rung {trial.user_attrs.get('rung')}"
    optuna.trial.Trial(search.study, trial._trial_id).set_user_attr("stopped", reason)
    search.study.tell(trial.number, state=optuna.trial.TrialState.PRUNED)
    record_stop(search.folder.trial_experiment(trial.number), PRUNED, reason, search.settings)
