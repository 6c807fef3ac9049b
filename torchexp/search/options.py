"""The `search` command's options, each declared once: a dataclass field whose type and
default are the option's, and whose metadata is an `Option` (its flag, help and allowed
values).

`StudyOptions` define a study: study.json records them (resolved, as `SearchSettings`)
and every later run must give the same. `RunOptions` belong to one search process.
`torchexp.commands.search` builds the click options from these fields, the search takes
the two objects as its request, and messages name a setting by its field's flag.
Importing this module imports neither click nor optuna.
"""

import dataclasses
import types
import typing
from typing import Any

from torchexp.directions import DIRECTIONS
from torchexp.errors import ConfigError
from torchexp.metrics import is_number
from torchexp.search.pruners import PRUNERS

OPTION = "option"  # the key of a field's metadata that holds its Option
SAMPLERS = ("tpe", "random", "grid")
REQUIRED = "none; required to search"
TYPE_WORDS = {int: "a whole number", float: "a number", str: "a text", tuple: "a list of texts"}


@dataclasses.dataclass(frozen=True)
class Option:
    """How a field is given on the command line.

    Attributes:
        flag: the option's name, e.g. "--max-epochs".
        help: its help text; None for an option several commands share, whose help is
            theirs (`torchexp.commands.options`).
        choices: the values allowed, when they are a few words.
        minimum: the least value of a number.
        maximum: the greatest value of a number.
        default_text: the default in words, for a default that is not a value (None).
        metavar: how the help shows the value, e.g. KEY=VALUE.
    """

    flag: str
    help: str | None
    choices: tuple[str, ...] = ()
    minimum: int | float | None = None
    maximum: int | float | None = None
    default_text: str | None = None
    metavar: str | None = None


def option(default: Any, flag: str, help: str | None, **details: Any) -> Any:
    """A dataclass field declaring a command-line option; `details` are `Option`'s."""
    return dataclasses.field(default=default, metadata={OPTION: Option(flag, help, **details)})


@dataclasses.dataclass(frozen=True)
class StudyOptions:
    """The options that define a study: fixed when it is created, checked on every later run.

    Raises:
        ConfigError: a value outside its option's choices or range; the message names both.
    """

    metric: str = option("validation.loss", "--metric", "What a trial is judged by: split.name of the epoch metrics.")
    direction: str | None = option(
        None,
        "--direction",
        "Whether a lower or a higher metric is better.",
        choices=tuple(DIRECTIONS),
        default_text="as the Runner's metric_directions declares the metric, else by its name (minimize for a loss)",
    )
    sampler: str = option(
        "tpe", "--sampler", "How parameters are drawn; grid takes choices and int ranges.", choices=SAMPLERS
    )
    pruner: str = option(
        "asha",
        "--pruner",
        "asha pauses trials at rungs and promotes the best to train on; median stops trials below the median; "
        "none trains every trial to --max-epochs.",
        choices=tuple(PRUNERS),
    )
    seed: int = option(
        0,
        "--seed",
        "Seed of every trial (one validation split for all) and of the sampler.",
        minimum=0,
        maximum=2**63 - 1,
    )
    max_epochs: int | None = option(
        None,
        "--max-epochs",
        "Epochs a trial trains at most (steps, when the space trains by steps: trainer.max_steps).",
        minimum=1,
        default_text="the space's trainer.max_epochs (trainer.max_steps)",
    )
    min_epochs: int = option(
        1,
        "--min-epochs",
        "asha: epochs (or steps) of the first rung; median: epochs (or steps) before a trial may be stopped.",
        minimum=1,
    )
    reduction_factor: int = option(
        3,
        "--reduction-factor",
        "asha: rungs lie at min-epochs x factor^k, and each promotes its best 1/factor.",
        minimum=2,
    )
    startup_trials: int = option(
        5, "--startup-trials", "median: trials that complete before the pruner stops any.", minimum=0
    )

    def __post_init__(self) -> None:
        check_values(self)


@dataclasses.dataclass(frozen=True)
class RunOptions:
    """The options of one search process; `space` and `storage` also determine the study's
    space and storage records, which later runs must match.

    Raises:
        ConfigError: a value outside its option's choices or range; the message names both.
    """

    space: str | None = option(
        None,
        "--space",
        "Search space file (JSON): the config keys to search and their distributions.",
        default_text=REQUIRED,
    )
    trials: int | None = option(
        None,
        "--trials",
        "Trials the study is to have in all, counting earlier runs' (capped by a grid's size).",
        minimum=1,
        default_text=REQUIRED,
    )
    timeout: float | None = option(
        None,
        "--timeout",
        "Seconds after which no new work starts; the trial in progress finishes.",
        minimum=0,
        default_text="none",
    )
    storage: str | None = option(
        None,
        "--storage",
        "An Optuna database URL (postgresql://, mysql://, sqlite:///) shared by search processes on several machines.",
        default_text="a journal file in the study folder",
    )
    config_path: str = option(
        "config.default.json", "--config-path", "Base configuration when the space file names none."
    )
    schema_path: str = option("config.schema.json", "--schema-path", "JSON schema of the configuration.")
    overrides: tuple[str, ...] = option(
        (), "--set", "Fix a config value in every trial, e.g. model.name=mlp (repeatable).", metavar="KEY=VALUE"
    )
    log_period: int = option(100, "--log-period", "Iterations between iteration logs.", minimum=1)
    device: str = option("auto", "--device", None)
    num_workers: int = option(0, "--num-workers", None, minimum=0)

    def __post_init__(self) -> None:
        check_values(self)


def resolved_option(name: str) -> Any:
    """A required field with the option of `StudyOptions`' field `name`, for a setting resolved
    from that option: its value is checked as the option's, and it may not be None."""
    spec = next(field for field in declared_fields(StudyOptions) if field.name == name).metadata
    return dataclasses.field(metadata=spec)


def declared_fields(cls: type) -> list[dataclasses.Field]:
    """The fields of `cls` that declare an option, in declaration order."""
    return [field for field in dataclasses.fields(cls) if OPTION in field.metadata]


def find_option(name: str) -> Option:
    """The option of the study or run field `name`, e.g. "max_epochs" -> --max-epochs.

    Raises:
        KeyError: no option has that name.
    """
    for cls in (StudyOptions, RunOptions):
        for field in declared_fields(cls):
            if field.name == name:
                return field.metadata[OPTION]
    raise KeyError(name)


def flag(name: str) -> str:
    """The flag of the study or run field `name`, for messages: "max_epochs" -> "--max-epochs"."""
    return find_option(name).flag


def value_type(field: dataclasses.Field) -> type:
    """The type of a field's value, without None: int, float, str, or tuple (a repeatable option)."""
    kinds = (
        [kind for kind in typing.get_args(field.type) if kind is not type(None)] if allows_none(field) else [field.type]
    )
    kind = typing.get_origin(kinds[0]) or kinds[0]
    assert isinstance(kind, type), f"{field.name} is annotated with a type, not {kind!r}"
    return kind


def allows_none(field: dataclasses.Field) -> bool:
    """Whether a field's type is `X | None`: the option may be left out."""
    return isinstance(field.type, types.UnionType) and type(None) in typing.get_args(field.type)


def split_options(values: dict[str, Any]) -> tuple[StudyOptions, RunOptions]:
    """The study's and the run's options from one mapping of field names to values (the
    click command's keyword arguments); other keys are ignored."""
    return (
        StudyOptions(
            **{field.name: values[field.name] for field in declared_fields(StudyOptions) if field.name in values}
        ),
        RunOptions(**{field.name: values[field.name] for field in declared_fields(RunOptions) if field.name in values}),
    )


def check_values(options: Any) -> None:
    """Raise ConfigError for the first field of `options` whose value its Option refuses.

    The command line checks the same first; this is for callers from Python.
    """
    for field in declared_fields(type(options)):
        value = getattr(options, field.name)
        if value is None and not allows_none(field):
            raise ConfigError(f"{field.metadata[OPTION].flag} needs a value, not None")
        if value is not None:
            check_value(field.metadata[OPTION], value_type(field), value)


def check_value(spec: Option, kind: type, value: Any) -> None:
    """Raise ConfigError unless `value` is a `kind` within the option's choices and range."""
    if kind is tuple:
        fits = isinstance(value, (tuple, list)) and all(isinstance(item, str) for item in value)
    elif kind is float:
        fits = is_number(value)
    else:
        fits = isinstance(value, kind) and not isinstance(value, bool)
    if not fits:
        raise ConfigError(f"{spec.flag} {value!r} is not {TYPE_WORDS[kind]}")
    if spec.choices and value not in spec.choices:
        raise ConfigError(f"{spec.flag} {value!r} is not one of {', '.join(spec.choices)}")
    if spec.minimum is not None and value < spec.minimum:
        raise ConfigError(f"{spec.flag} {value} is less than {spec.minimum}")
    if spec.maximum is not None and value > spec.maximum:
        raise ConfigError(f"{spec.flag} {value} is more than {spec.maximum}")
