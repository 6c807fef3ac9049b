"""Experiments as data: a read-only view of an experiments folder, from Python.

```python
import torchexp

experiments = torchexp.Experiments("experiments")
e = experiments["mnist"]                  # an ExperimentView
e.config, e.seed, e.versions              # config.json
e.history                                 # per-epoch (or per-validation-step) train and validation metrics
e.results                                 # test results by (epoch, kind)
e.checkpoints                             # checkpoints with their records
e.best("validation", "loss")              # (epoch, value)
model = e.load_model()                    # the project's torch.nn.Module, in eval mode
```

Everything but `load_model` and `predictor` reads JSON alone: no torch import, and nothing
is ever written into an experiment, not even its `.lock`. Each attribute reads the files
afresh, so a view of an experiment that is training shows its latest epochs.

A search study is a folder holding `study.json` and one experiment per trial; its trials
are named `STUDY/trial-0003`.
"""

import difflib
import fnmatch
import os
import warnings
from collections.abc import Iterator
from typing import Any

from torchexp import checkpoints
from torchexp.budget import read_limit, unit_of
from torchexp.config import fill_trainer_defaults
from torchexp.directions import direction_of, read_directions
from torchexp.errors import ExperimentError
from torchexp.files import read_json_lines
from torchexp.folder import STUDY_FILE, Experiment, scan_folders
from torchexp.locks import is_locked
from torchexp.metrics import Stop, find_best, is_number, point_of, read_last_stop, read_metric_lines
from torchexp.provenance import read_last
from torchexp.results import read_reports
from torchexp.states import CORRUPT, read_state, scan_checkpoint_names


class ExperimentView:
    """One experiment, read-only: what `Experiments[name]` returns.

    Args:
        experiment: the experiment's folder.
        name: how the experiments folder names it (`STUDY/trial-0003` for a trial);
            default: the folder's name.
    """

    def __init__(self, experiment: Experiment, name: str | None = None):
        self.experiment = experiment
        self.name = name or experiment.name
        self.path = experiment.path

    def __repr__(self) -> str:
        return f"ExperimentView({self.name!r})"

    @property
    def definition(self) -> dict:
        """config.json, the experiment's definition: {"seed", "versions", "classes", "config"}.

        Raises:
            ExperimentError: config.json is missing, unreadable or not an experiment's definition.
        """
        definition = self.experiment.read_definition()
        if not isinstance(definition, dict) or not isinstance(definition.get("config"), dict):
            raise ExperimentError(
                f'config of experiment {self.name!r} ({self.experiment.config_path}) has no "config" object'
            )
        return definition

    @property
    def record(self) -> dict:
        """Deprecated name of `definition`, until torchexp 0.3."""
        message = "ExperimentView.record is deprecated: use ExperimentView.definition"
        warnings.warn(message, DeprecationWarning, stacklevel=2)
        return self.definition

    @property
    def config(self) -> dict:
        """The validated configuration the experiment was created with."""
        return self.definition["config"]

    @property
    def seed(self) -> int | None:
        return self.definition.get("seed")

    @property
    def versions(self) -> dict:
        """Versions of torchexp, Python, torch... recorded at init."""
        return self.definition.get("versions") or {}

    @property
    def classes(self) -> dict:
        """The project's {"data": "module:Class", "runner": "module:Class"}; {} if unrecorded (old experiments)."""
        return self.definition.get("classes") or {}

    @property
    def unit(self) -> str:
        """What checkpoint numbers, history and `best` count: "epoch", or "step" (trainer.max_steps set)."""
        return unit_of(self.config)

    @property
    def max_epochs(self) -> int:
        """The epochs `train` trains to: the config's trainer.max_epochs.

        Raises:
            ExperimentError: config.json is unreadable, or its trainer section is not valid.
        """
        return read_limit(fill_trainer_defaults(self.config), "epoch", f"config of experiment {self.name!r}")

    @property
    def max_steps(self) -> int | None:
        """The optimizer steps `train` trains to (trainer.max_steps); None when trained by
        epochs. Raises ExperimentError as `max_epochs` does."""
        if self.unit != "step":
            return None
        return read_limit(fill_trainer_defaults(self.config), "step", f"config of experiment {self.name!r}")

    @property
    def history(self) -> list[dict]:
        """Per-epoch metrics, oldest first: `{"epoch", "train", "validation", "seconds"}`;
        for an experiment trained by steps, one per validation, `{"step", ...}`.

        Read from metrics.jsonl rather than the checkpoints: it holds every epoch, with the
        learning rate and duration, when old checkpoints are deleted. A resumed run has
        removed the lines a killed run logged again; should an epoch appear twice all the
        same, its last line wins.
        """
        points: dict[int, dict] = {}
        for entry in read_metric_lines(self.experiment.metrics_path):
            point = point_of(entry)
            if entry.get("kind") not in ("train", "validation") or not isinstance(point, int):
                continue
            unit = entry.get("unit", "epoch")
            found = points.setdefault(point, {unit: point, "train": {}, "validation": {}, "seconds": None})
            found[entry["kind"]] = entry.get("metrics") or {}
            if entry["kind"] == "train":
                found["seconds"] = entry.get("seconds")
        return [points[point] for point in sorted(points)]

    @property
    def results(self) -> dict[tuple[int, str], dict]:
        """Test results by (epoch, kind), kind "standard" or "release", oldest first: what
        `test` returned (accuracy, loss...). Unreadable result files are left out."""
        return {key: report["results"] for key, report, _ in read_reports(self.experiment)}

    @property
    def latest_test(self) -> dict | None:
        """The latest test report, `{"epoch", "kind", "results"}`: highest epoch, then most
        recently written; None when the experiment was never tested."""
        reports = [(key, os.path.getmtime(path), report) for key, report, path in read_reports(self.experiment)]
        if not reports:
            return None
        (epoch, kind), _, report = max(reports, key=lambda found: (found[0][0], found[1]))
        return {"epoch": epoch, "kind": kind, "results": report["results"]}

    @property
    def provenance(self) -> dict | None:
        """What produced the experiment, as its last `init` or `train` recorded it: code,
        data, environment, settings (`torchexp.provenance`); None before any was recorded."""
        return read_last(self.experiment.provenance_path)

    @property
    def verifications(self) -> list[dict]:
        """What each `verify` found, oldest first: {"time", "epoch", "iteration",
        "checkpoint", "identical", "tensors", ...}."""
        return list(read_json_lines(self.experiment.verifications_path))

    @property
    def disk_bytes(self) -> int:
        """Bytes the experiment's files take on disk."""
        return self.experiment.disk_bytes()

    @property
    def checkpoints(self) -> list[checkpoints.Checkpoint]:
        """Every checkpoint (standard, release, interrupt) with its sidecar, oldest first."""
        return checkpoints.list_checkpoints(self.experiment.checkpoints_path)

    @property
    def epochs(self) -> int:
        """Epochs done: the furthest standard checkpoint, where `train` would resume, from
        file names alone (cheap over many experiments); trained by steps, as its sidecar says."""
        if self.unit == "epoch" or not self.steps:
            return max(scan_checkpoint_names(self.experiment.checkpoints_path).get("standard", [0]))
        sidecar = checkpoints.find_sidecar(self.experiment.checkpoints_path, self.steps, "standard") or {}
        return int((sidecar.get("counters") or {}).get("epoch", 0))

    @property
    def steps(self) -> int | None:
        """Optimizer steps done (the furthest standard checkpoint) when trained by steps; else None."""
        if self.unit != "step":
            return None
        return max(scan_checkpoint_names(self.experiment.checkpoints_path).get("standard", [0]))

    @property
    def running(self) -> bool:
        """Whether a process holds the experiment's lock now (it is training)."""
        return is_locked(self.experiment.lock_path)

    @property
    def state(self) -> str:
        """One of finished, stopped early, stopped at --max-epochs (--max-steps), interrupted,
        failed, running, not started, corrupt (`torchexp.states`)."""
        try:
            limit = read_limit(fill_trainer_defaults(self.config), self.unit, "")
        except ExperimentError:
            return CORRUPT
        return read_state(self.experiment, limit)

    @property
    def stop(self) -> Stop | None:
        """Why the last `train` ended (reason, epoch, max_epochs, detail), as metrics.jsonl
        records it; None when no train has ended yet."""
        return read_last_stop(self.experiment.metrics_path)

    def series(self, split: str, metric: str) -> list[tuple[int, float]]:
        """(epoch, value) of one metric over the epochs, e.g. `series("validation", "loss")`
        ((step, value) when trained by steps); where it is missing or not finite, left out."""
        check_split(split)
        return [
            (point, entry[split][metric])
            for entry in self.history
            if is_number(entry[split].get(metric)) and isinstance(point := point_of(entry), int)
        ]

    def best(
        self, split: str = "validation", metric: str = "loss", direction: str | None = None, mode: str | None = None
    ) -> tuple[int, float]:
        """Return (epoch, value) of the best epoch by one metric ((step, value) for an
        experiment trained by steps).

        Args:
            split: "validation" or "train".
            metric: a metric the project logs, e.g. "loss" or "accuracy".
            direction: "minimize" or "maximize" ("min", "max"); default: as the Runner's metric_directions
                says (recorded by `train`), else by the name: accuracy-like "maximize", the rest "minimize".
            mode: deprecated name of `direction`, until torchexp 0.3.

        Raises:
            ExperimentError: no such metric (the message lists those it has), or a broken directions.json.
        """
        if mode is not None:
            message = "ExperimentView.best(mode=...) is deprecated: use direction="
            warnings.warn(message, DeprecationWarning, stacklevel=2)
            direction = direction or mode
        direction = direction or direction_of(metric, read_directions(self.experiment))
        found = find_best(self.series(split, metric), direction)
        if found is None:
            names = sorted({name for entry in self.history for name in entry[split]})
            if not names:
                raise ExperimentError(f"experiment {self.name!r} has no {split} metrics yet: train it first")
            raise ExperimentError(
                f"experiment {self.name!r} has no {split} metric {metric!r} (its {split} metrics: {', '.join(names)})"
            )
        return found

    def load_model(
        self, epoch: int | str | None = None, device: str = "cpu", runner_class: Any = None, data_class: Any = None
    ) -> Any:
        """Return the project's model with the weights of a checkpoint, in eval mode.

        The model is built by the project's own `Runner.init_model`, from the classes
        `init` recorded, and filled through the verified `weights_only=True` load that
        `test` uses. The caller's random generators are left as they were.

        Args:
            epoch: N for epoch N, "release" for the latest release, None for the latest.
            device: "cpu", "cuda", "cuda:N" or "auto".
            runner_class: the project's Runner class (or "module:Class"), needed only by
                experiments created before torchexp recorded it.
            data_class: likewise for Data, for runners whose init_model reads it.

        Raises:
            CheckpointError: no such checkpoint, or it is corrupt or does not fit.
            ExperimentError: the project's classes are unknown or cannot be imported.
        """
        from torchexp.inference import load_inference_runner

        return load_inference_runner(self.experiment, epoch, device, runner_class, data_class).model

    def predictor(self, checkpoint: int | str = "release", **options: Any) -> Any:
        """Return a `torchexp.Predictor` whose `predict(instances)` answers as `serve` does; the
        arguments (checkpoint, device, max_batch_size) are `torchexp.load_predictor`'s."""
        from torchexp.predictor import open_predictor

        return open_predictor(self.experiment, checkpoint, name=self.name, **options)


class Experiments:
    """The experiments of a folder, read-only: iterable, `len()`, `in`, and `[name]`.

    Only folders holding config.json are experiments; a folder holding study.json is a
    search study, whose trials are experiments named `STUDY/trial-0003`. Hidden folders
    and names `init` cannot create (spaces, a leading `_`) are not listed.

    Args:
        path: the experiments folder.

    Raises:
        ExperimentError: `path` is not a folder.
    """

    def __init__(self, path: str = "experiments"):
        if not os.path.isdir(path):
            what = "is a file, not a folder" if os.path.exists(path) else "does not exist"
            raise ExperimentError(f"experiments folder {path} {what}")
        self.path = path

    def __repr__(self) -> str:
        return f"Experiments({self.path!r})"

    def names(self) -> list[str]:
        """Names of the experiments, sorted; a study's trials as `STUDY/trial-0003`."""
        return [name for name, is_experiment in scan_folders(self.path) if is_experiment]

    def other_folders(self) -> list[str]:
        """Names of the folders that are neither experiments nor studies."""
        return [name for name, is_experiment in scan_folders(self.path) if not is_experiment]

    def __iter__(self) -> Iterator[ExperimentView]:
        return (self.view(name) for name in self.names())

    def __len__(self) -> int:
        return len(self.names())

    def __contains__(self, name: object) -> bool:
        try:
            self.locate(name)
        except ExperimentError:
            return False
        return True

    def __getitem__(self, name: str) -> ExperimentView:
        """Return the experiment `name`.

        Raises:
            ExperimentError: there is no such experiment; the message names it.
        """
        return self.view(name)

    def view(self, name: str) -> ExperimentView:
        """Return the experiment `name` (`STUDY/trial-0003` for a trial).

        Raises:
            ExperimentError: there is no such experiment; the message names it, and the
                closest names when there are some.
        """
        try:
            experiment = self.locate(name)
        except ExperimentError:
            close = difflib.get_close_matches(str(name), self.names(), n=3)
            hint = f" (did you mean {', '.join(map(repr, close))}?)" if close else ""
            raise ExperimentError(f"experiment {name!r} does not exist in {self.path}{hint}") from None
        return ExperimentView(experiment, name)

    def locate(self, name: object) -> Experiment:
        """Return the Experiment of a name, which must hold config.json."""
        parts = name.split("/") if isinstance(name, str) else []
        if len(parts) == 2 and os.path.isfile(os.path.join(self.path, parts[0], STUDY_FILE)):
            experiment = Experiment(os.path.join(self.path, parts[0]), parts[1])
        elif len(parts) == 1:
            experiment = Experiment(self.path, parts[0])
        else:
            raise ExperimentError(f"experiment {name!r} does not exist in {self.path}")
        experiment.check_exists()
        return experiment

    def select(self, patterns: tuple[str, ...] | list[str] = ()) -> list[str]:
        """Return the names, experiments or other folders, that shell-style patterns match
        (`lr-*`, `STUDY/*`; a study's name selects its trials), in the order of the patterns;
        every name when there are none.

        Raises:
            ExperimentError: a pattern matches nothing; the message names it.
        """
        every = [name for name, _ in scan_folders(self.path)]
        if not patterns:
            return every
        chosen: dict[str, None] = {}
        for pattern in patterns:
            matched = [name for name in every if any(fnmatch.fnmatchcase(name, p) for p in (pattern, pattern + "/*"))]
            if not matched:
                what = "no experiment matches" if any(char in pattern for char in "*?[") else "there is no experiment"
                raise ExperimentError(f"{what} {pattern!r} in {self.path}")
            chosen.update(dict.fromkeys(matched))
        return list(chosen)


def check_split(split: str) -> None:
    if split not in ("train", "validation"):
        raise ExperimentError(f"split {split!r} is not valid: use 'train' or 'validation'")
