"""The comparison of experiments: one summary per experiment, the columns worth showing,
and the table as text, JSON, CSV or Markdown (and a plot, through `torchexp.plots`).

Only JSON files are read: no torch import, and matplotlib only for a plot.
"""

import dataclasses
import json
from collections.abc import Callable
from typing import Any

from torchexp.config import fill_trainer_defaults
from torchexp.directions import direction_of, read_directions
from torchexp.errors import ConfigError, ExperimentError
from torchexp.experiments import Experiments
from torchexp.files import replace_non_finite
from torchexp.metrics import find_best, is_number, point_of
from torchexp.states import CORRUPT, NOT_AN_EXPERIMENT

MISSING = "-"  # a cell without a value, in text and Markdown
HIDDEN_TRAIN_METRICS = ("lr",)  # logged beside train metrics by torchexp; a setting, not a result


@dataclasses.dataclass
class Summary:
    """What `compare` shows of one experiment (or of a folder that is not one)."""

    name: str
    state: str
    problem: str | None = None  # why it is corrupt or not an experiment
    epochs: int | None = None
    max_epochs: int | None = None
    steps: int | None = None  # for an experiment trained by steps, as max_steps
    max_steps: int | None = None
    disk_bytes: int | None = None
    config: dict[str, Any] = dataclasses.field(default_factory=dict)  # every key, dotted (and provenance.*, with --all)
    # split -> metric -> {"value", "epoch" (or "step")}
    best: dict[str, dict[str, dict]] = dataclasses.field(default_factory=dict)
    train: dict[str, float] = dataclasses.field(default_factory=dict)  # the last epoch's
    test: dict | None = None  # {"epoch", "kind", "results"} of the latest test
    history: list[dict] = dataclasses.field(default_factory=list)  # for plots; not in the JSON

    def to_json(self, keys: list[str]) -> dict:
        """The row of `compare --json`, with the config keys compared."""
        return replace_non_finite(
            {
                "name": self.name,
                "state": self.state,
                "epochs": self.epochs,
                "max_epochs": self.max_epochs,
                "steps": self.steps,
                "max_steps": self.max_steps,
                "disk_bytes": self.disk_bytes,
                "config": {key: self.config.get(key) for key in keys},
                "best": self.best,
                "train": self.train,
                "test": self.test,
                "problem": self.problem,
            }
        )


Cell = Callable[[Summary], Any]  # reads one cell of a row from the row's summary


@dataclasses.dataclass(frozen=True)
class Column:
    """A column of the table: its name as printed, its value and, for metrics, the epoch
    the value comes from (shown as `0.0312 @9`, a column of its own in CSV)."""

    name: str
    value: Cell
    epoch: Cell | None = None
    numeric: bool = True
    cuttable: bool = False  # may be cut with "…" to fit a terminal (names and config values)


@dataclasses.dataclass
class Table:
    """Summaries in display order, the columns to show, and the config keys compared."""

    summaries: list[Summary]
    columns: list[Column]
    keys: list[str]


def summarize(
    experiments: Experiments, name: str, with_provenance: bool = False, directions: dict[str, str] | None = None
) -> Summary:
    """Read what `compare` shows of the experiment (or folder) `name`, with what produced its
    last run among its config keys when asked; never raises for a broken experiment, which
    becomes a summary that says what is wrong.

    A metric's best is the lowest or the highest as `directions` ({name: "minimize" or
    "maximize"}) says, else as the experiment's Runner declared it, else by its name.
    """
    if name not in experiments:
        return Summary(name, NOT_AN_EXPERIMENT, problem="the folder has no config.json")
    view = experiments[name]
    try:
        config, unit = view.config, view.unit
        max_epochs, max_steps = (view.max_epochs, None) if unit == "epoch" else (None, view.max_steps)
        declared = {**read_directions(view.experiment), **(directions or {})}
    except ExperimentError as error:
        return Summary(name, CORRUPT, problem=str(error))
    history = view.history
    validation_names = list(dict.fromkeys(metric for entry in history for metric in entry["validation"]))
    best = {}
    for metric in validation_names:
        found = find_best(view.series("validation", metric), direction_of(metric, declared))
        if found is not None:
            best[metric] = {"value": found[1], unit: found[0]}
    test = view.latest_test
    if test is not None:
        test["results"] = {key: value for key, value in test["results"].items() if is_number(value)}
    flat = flatten_config(fill_trainer_defaults(config))
    if with_provenance:
        flat.update(flatten_provenance(view.provenance or {}))
    return Summary(
        name,
        view.state,
        epochs=view.epochs,
        max_epochs=max_epochs,
        steps=view.steps,
        max_steps=max_steps,
        disk_bytes=view.disk_bytes,
        config=flat,
        best={"validation": best} if best else {},
        train=history[-1]["train"] if history else {},
        test=test,
        history=history,
    )


def build_table(
    experiments: Experiments,
    patterns: tuple[str, ...] = (),
    all_keys: bool = False,
    directions: dict[str, str] | None = None,
) -> Table:
    """Summarize the experiments that `patterns` select (all by default), and choose the
    columns: the config keys that differ (all with `all_keys`), epochs, best validation
    metrics, the last epoch's train metrics, the latest test metrics, and the state.

    Args:
        experiments: the experiments folder.
        patterns: names or shell-style patterns; none selects every experiment.
        all_keys: show every config key, not only those that differ.
        directions: {metric: "minimize" or "maximize"} above what the experiments recorded
            (`compare --direction`, `torchexp.directions.parse_direction_overrides`).

    Raises:
        ExperimentError: a pattern matches nothing, or there is nothing to compare.
        ConfigError: `directions` names a metric that no compared experiment has validated.
    """
    names = experiments.select(patterns)
    if not names:
        raise ExperimentError(f"no experiments to compare in {experiments.path}")
    summaries = [summarize(experiments, name, all_keys, directions) for name in names]
    check_direction_names(summaries, directions or {})
    keys = list_config_keys(summaries, all_keys)
    return Table(summaries, make_columns(summaries, keys), keys)


def check_direction_names(summaries: list[Summary], directions: dict[str, str]) -> None:
    """Raise ConfigError for a direction given for a metric that none of the compared
    experiments has validated (a typo would change nothing, silently)."""
    validated = {metric for summary in summaries for entry in summary.history for metric in entry["validation"]}
    unknown = [metric for metric in directions if metric not in validated]
    if unknown and validated:
        what = f"--direction names {unknown[0]!r}, which no compared experiment validates"
        raise ConfigError(f"{what} (they validate {', '.join(sorted(validated))})")


def flatten_config(config: dict, prefix: str = "") -> dict[str, Any]:
    """{"training": {"lr": 1.0}} -> {"training.lr": 1.0}; lists are values."""
    flat = {}
    for key, value in config.items():
        if isinstance(value, dict) and value:
            flat.update(flatten_config(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def flatten_provenance(provenance: dict) -> dict[str, Any]:
    """The provenance fields that tell runs apart, as `provenance.*` columns: the code's
    commit and dirtiness, the data's digest, the versions, the CPU and GPU, the settings."""
    code, data, environment = (
        provenance.get("code") or {},
        provenance.get("data") or {},
        provenance.get("environment") or {},
    )
    flat = {
        "provenance.code": (code.get("commit") or code.get("source_sha256") or "")[:12]
        + (" (dirty)" if code.get("dirty") else ""),
        "provenance.data": (data.get("sha256") or "")[:12],
    }
    flat.update({f"provenance.{key}": environment.get(key) for key in ("python", "torch", "cuda", "cpu", "gpu")})
    return flat


def list_config_keys(summaries: list[Summary], all_keys: bool) -> list[str]:
    """The config keys to show, in config order: those whose values differ between the
    experiments (a key some lack differs), or every key."""
    configs = [summary.config for summary in summaries if summary.state not in (CORRUPT, NOT_AN_EXPERIMENT)]
    keys = list(dict.fromkeys(key for config in configs for key in config))
    if all_keys:
        return keys
    # JSON text compares 1 and 1.0 as different, as a config file would show them.
    return [
        key for key in keys if len({json.dumps(config.get(key, MISSING), sort_keys=True) for config in configs}) > 1
    ]


def make_columns(summaries: list[Summary], keys: list[str]) -> list[Column]:
    """Every column of the table, in order."""
    columns = [Column("name", lambda s: s.name, numeric=False, cuttable=True)]
    for key in keys:
        numeric = all(is_number(s.config[key]) for s in summaries if s.config.get(key) is not None)
        columns.append(Column(key, read_config(key), numeric=numeric, cuttable=not numeric))
    columns.append(Column("epochs", lambda s: s.epochs))
    if any(s.steps is not None for s in summaries):
        columns.append(Column("steps", lambda s: s.steps))
    columns.append(Column("disk MB", lambda s: None if s.disk_bytes is None else round(s.disk_bytes / 1e6, 1)))
    for metric in collect_names(s.best.get("validation", {}) for s in summaries):
        columns.append(Column(f"best validation {metric}", *read_best(metric)))
    for metric in collect_names(s.train for s in summaries):
        if metric not in HIDDEN_TRAIN_METRICS:
            columns.append(Column(f"train {metric}", read_train(metric)))
    # Counts (ints, like the number of test samples) are not results worth a column.
    test_metrics = collect_names(
        {k: v for k, v in s.test["results"].items() if isinstance(v, float)} for s in summaries if s.test
    )
    for metric in test_metrics:
        columns.append(Column(f"test {metric}", *read_test(metric)))
    columns.append(Column("state", lambda s: s.state, numeric=False))
    return columns


# The readers of a key's or a metric's cells, made by a call so that each keeps its own (a
# lambda written in make_columns' loop would read the loop's last one).
def read_config(key: str) -> Cell:
    """The cells of config key `key`."""
    return lambda s: s.config.get(key)


def read_best(metric: str) -> tuple[Cell, Cell]:
    """The cells of the best validation `metric`: its value, and its epoch (or step)."""
    return (
        lambda s: s.best.get("validation", {}).get(metric, {}).get("value"),
        lambda s: point_of(s.best.get("validation", {}).get(metric, {})),
    )


def read_train(metric: str) -> Cell:
    """The cells of train `metric`, the last epoch's."""
    return lambda s: s.train.get(metric)


def read_test(metric: str) -> tuple[Cell, Cell]:
    """The cells of test `metric` in the latest test: its value, and the epoch tested."""
    return (
        lambda s: s.test["results"].get(metric) if s.test else None,
        lambda s: s.test["epoch"] if s.test and metric in s.test["results"] else None,
    )


def collect_names(dicts: Any) -> list[str]:
    """The keys of several dicts, in order of first appearance."""
    return list(dict.fromkeys(key for values in dicts for key in values))


def sort_table(table: Table, column: str, descending: bool = False) -> None:
    """Sort the table's rows by a column as printed (or any config key); rows without a
    value come last either way.

    Raises:
        ConfigError: no such column; the message lists the columns.
    """
    by_name = {c.name: c.value for c in table.columns}
    by_name.update({key: read_config(key) for s in table.summaries for key in s.config if key not in by_name})
    if column not in by_name:
        listed = ", ".join(repr(c.name) for c in table.columns)
        raise ConfigError(f"--sort-by {column!r} is not a column; the columns are {listed}")
    value = by_name[column]
    present = [s for s in table.summaries if value(s) is not None]
    absent = [s for s in table.summaries if value(s) is None]
    # Numbers before text, so that mixed columns still sort.
    present.sort(
        key=lambda s: (0, value(s), "") if is_number(value(s)) else (1, 0, format_value(value(s))), reverse=descending
    )
    table.summaries = present + absent


def format_value(value: Any) -> str:
    """A value as a cell shows it: numbers to 4 significant digits, text as it is, other
    JSON values as JSON."""
    if value is None:
        return MISSING
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, str):
        return value
    return json.dumps(value)


def format_cell(column: Column, summary: Summary) -> str:
    """The text of one cell: the value, then `@epoch` for metrics that have one."""
    text = format_value(column.value(summary))
    epoch = column.epoch(summary) if column.epoch else None
    return f"{text} @{epoch}" if epoch is not None and text != MISSING else text


def plot_table(table: Table, split: str, path: str) -> None:
    """Write the compared experiments' `split` metrics per epoch to `path` (PNG or SVG),
    each line labelled by its experiment's name and the config keys that differ.

    Raises:
        ConfigError: `path` is not .png or .svg.
        ExperimentError: no compared experiment has `split` metrics yet.
        StorageError: the file cannot be written.
    """
    from torchexp import plots

    plots.check_plot_path(path)
    differing = list_config_keys(table.summaries, all_keys=False)
    curves = []
    for summary in table.summaries:
        series: dict[str, list[tuple[int, float]]] = {}
        for entry in summary.history:
            for metric, value in entry[split].items():
                if is_number(value):
                    series.setdefault(metric, []).append((point_of(entry), value))
        if series:
            curves.append((label_summary(summary, differing), series))
    metrics = [metric for metric in collect_names(series for _, series in curves) if metric not in HIDDEN_TRAIN_METRICS]
    if not metrics:
        raise ExperimentError(f"nothing to plot: none of the compared experiments has {split} metrics yet")
    by_steps = {summary.steps is not None for summary in table.summaries if summary.history}
    x_label = (
        "step"
        if by_steps == {True}
        else "epoch (step, for experiments trained by steps)"
        if True in by_steps
        else "epoch"
    )
    plots.save_figure(plots.comparison_figure(curves, metrics, split, x_label), path)


def label_summary(summary: Summary, keys: list[str]) -> str:
    """`name (training.lr=0.01, model.name=cnn)`: the experiment and what sets it apart."""
    settings = ", ".join(f"{key}={format_value(summary.config.get(key))}" for key in keys)
    return f"{summary.name} ({settings})" if settings else summary.name
