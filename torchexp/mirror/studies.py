"""A search in MLflow: the study is a parent run, each trial a run nested in it.

A trial's run holds its experiment as any run does (`runs`), and its state in the search:
paused trials carry a `paused` tag and their `rung`; pruned ones end KILLED with a `pruned`
tag; failed ones end FAILED with their `error`. The parent holds the study's settings as
parameters and the best trial's number and value as tags. Nothing here imports optuna:
the caller passes the Optuna study it has open.
"""

import os
from typing import Any

from torchexp.folder import Experiment
from torchexp.mirror import records
from torchexp.mirror.records import FAILED_STATUS, FINISHED, KILLED, RUNNING, SCHEDULED
from torchexp.mirror.runs import RunMirror, calling_mlflow, find_experiment_id, open_folder_run
from torchexp.mirror.target import MlflowTarget

TRIAL_TAGS = ("paused", "rung", "pruned", "error")  # the tags of a trial's state, removed when it moves on
PAUSED_STATUS = "paused"  # torchexp.search.scheduler's user attribute of a paused trial


def make_run_mirror(client: Any, target: MlflowTarget, experiment: Experiment, definition: dict) -> RunMirror:
    """The run mirror of an experiment, nested in its study's run when it is a trial."""
    if not records.is_trial(definition):
        return RunMirror(client, target, experiment)
    study = StudyMirror(client, target, experiment.experiments_path)  # a trial's experiments folder is its study
    return RunMirror(client, target, experiment, parent_run_id=study.open_run)


class StudyMirror:
    """Sends a study and its trials to MLflow.

    Args:
        client: an `mlflow.MlflowClient`.
        target: the tracking URI and MLflow experiment name.
        path: the study's folder.
    """

    def __init__(self, client: Any, target: MlflowTarget, path: str):
        self.client = client
        self.target = target
        self.path = os.path.abspath(path)
        self.name = os.path.basename(self.path)
        self.run_id: str | None = None

    def open_run(self) -> str:
        """The study's run id, the run created on first use."""
        if self.run_id is None:
            experiment_id = find_experiment_id(
                self.client, self.target, self.target.experiment_for(os.path.dirname(self.path))
            )
            self.run_id = open_folder_run(
                self.client, self.target, self.path, experiment_id, self.name, {"torchexp.study": self.name}
            )
        return self.run_id

    def sync(self, study: Any, settings: dict, status: str | None, trials: tuple[int, ...] | None = None) -> int:
        """Send the study's settings, best trial and status, and its trials' runs.

        Args:
            study: the Optuna study.
            settings: study.json's settings.
            status: the study run's status; None decides from the trials (`study_status`).
            trials: the numbers of the trials to send; None for all.

        Returns:
            How many trial runs were sent anything.

        Raises:
            TrackingError: the server cannot be reached or refuses a request.
        """
        from mlflow.entities import Param, RunTag

        frozen = study.get_trials(deepcopy=False)
        run_id = self.open_run()
        changed = 0
        for trial in frozen:
            experiment = Experiment(self.path, f"trial-{trial.number:04d}")
            if (trials is None or trial.number in trials) and experiment.exists():
                trial_status, tags = describe_trial(trial)
                removed = tuple(key for key in TRIAL_TAGS if key not in tags)
                mirror = RunMirror(self.client, self.target, experiment, parent_run_id=self.open_run)
                changed += not mirror.sync(status=trial_status, tags=tags, removed_tags=removed).is_nothing()
        with calling_mlflow(self.target, f"mirror study {self.name!r}"):
            run = self.client.get_run(run_id)
            params = {
                key: value
                for key, value in records.flatten(settings).items()
                if key not in run.data.params and key != "created_at"
            }
            tags = {
                key: value
                for key, value in describe_best(frozen, settings.get("direction")).items()
                if run.data.tags.get(key) != value
            }
            self.client.log_batch(
                run_id,
                params=[Param(key, value) for key, value in params.items()],
                tags=[RunTag(key, value) for key, value in tags.items()],
            )
            wanted = status or study_status(frozen)
            if wanted != run.info.status:
                if wanted == RUNNING:
                    self.client.update_run(run_id, status=wanted)
                else:
                    self.client.set_terminated(run_id, status=wanted)
        return changed


def describe_trial(trial: Any) -> tuple[str | None, dict[str, str]]:
    """A trial's run status and tags from its Optuna state; None leaves the status to its folder
    (RUNNING while trained, KILLED when its process died)."""
    state, attrs = trial.state.name, trial.user_attrs
    if state == "COMPLETE":
        return FINISHED, {}
    if state == "PRUNED":
        return KILLED, {"pruned": str(attrs.get("stopped") or "true")}
    if state == "FAIL":
        return FAILED_STATUS, {"error": str(attrs.get("error") or "failed")}
    if attrs.get("status") == PAUSED_STATUS:
        return SCHEDULED, {"paused": "true", "rung": str(attrs.get("rung"))}
    return None, {}


def describe_best(trials: list[Any], direction: str | None) -> dict[str, str]:
    """The best complete trial's number and value, as the study run's tags; {} without one."""
    complete = [trial for trial in trials if trial.state.name == "COMPLETE" and trial.value is not None]
    if not complete:
        return {}
    sign = -1 if direction == "maximize" else 1
    best = min(complete, key=lambda trial: (sign * trial.value, trial.number))
    return {"best_trial": str(best.number), "best_value": repr(best.value)}


def study_status(trials: list[Any]) -> str:
    """FINISHED when every trial has ended (complete, pruned or failed), else KILLED: a
    search stopped with trials left (a timeout, Ctrl-C) ends until run again."""
    ended = all(trial.state.name in ("COMPLETE", "PRUNED", "FAIL") for trial in trials)
    return FINISHED if trials and ended else KILLED
