"""The search space: a JSON file naming config keys and the distributions their values are
drawn from, checked against the project's schema before any trial starts.

```json
{
  "config": "../config.default.json",
  "fixed": {"data.val_split": 0.1, "trainer.precision": "auto"},
  "parameters": {
    "training.lr": {"float": [0.0005, 0.01], "log": true},
    "data.batch_size": {"int": [64, 256], "step": 64},
    "model.name": {"choice": ["small_cnn", "cnn_bn"]}
  }
}
```

`config` is the base configuration, relative to the space file (default: the project's
`init` default); `fixed` sets values every trial shares; `parameters` maps a key path to
one distribution: `float` [low, high] (optional `log`), `int` [low, high] (optional `step`
or `log`) or `choice` [values]. Every value a distribution can produce (both ends of a
range, every choice) is validated against the schema, so a search never starts a trial
the schema would refuse.
"""

import dataclasses
import json
import math
import os
from typing import Any

from torchexp.config import check_key_declared, load_config_file, make_config
from torchexp.errors import ConfigError
from torchexp.files import read_json
from torchexp.search.options import flag

MAX_SPACE_BYTES = 1024 * 1024  # a space is a few hundred bytes; larger is a mistake
SPACE_KEYS = ("config", "fixed", "parameters")
OPTIONS = {"float": ("log",), "int": ("step", "log"), "choice": ()}
EXAMPLE = '"parameters": {"training.lr": {"float": [0.0001, 0.1], "log": true}}'


@dataclasses.dataclass(frozen=True)
class Parameter:
    """One searched config key and its distribution.

    Attributes:
        key: the config key path, e.g. "training.lr"; also the Optuna parameter's name.
        kind: "float", "int" or "choice".
        low, high: the range's ends (float and int).
        log: sample the range on a log scale.
        step: spacing of int values.
        choices: the values of a choice.
    """

    key: str
    kind: str
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: int | None = None
    choices: tuple = ()

    def as_json(self) -> dict[str, Any]:
        """The entry as a space file writes it."""
        if self.kind == "choice":
            return {"choice": list(self.choices)}
        entry: dict[str, Any] = {self.kind: [self.low, self.high]}
        if self.log:
            entry["log"] = True
        if self.step is not None:
            entry["step"] = self.step
        return entry

    def edges(self) -> list[Any]:
        """The values worth validating: every choice, or both ends of the range."""
        return list(self.choices) if self.kind == "choice" else [self.low, self.high]

    def grid_values(self) -> list[Any]:
        """Every value of a grid over this parameter: the choices, or each step of an int range.

        Raises:
            ConfigError: a float range, which has no finite grid.
        """
        if self.kind == "choice":
            return list(self.choices)
        if self.kind == "int" and not self.log:
            assert isinstance(self.low, int) and isinstance(self.high, int), (
                "parse_range makes an int range's ends ints"
            )
            return list(range(self.low, self.high + 1, self.step or 1))
        raise ConfigError(
            f"the grid sampler needs choices or int ranges with a step, but parameter {self.key} is a "
            f"{'log ' if self.log else ''}{self.kind} range: make it a choice, or use {flag('sampler')} tpe or random"
        )

    def suggest(self, trial: Any) -> Any:
        """Draw this parameter's value for an Optuna trial."""
        if self.kind == "choice":
            return trial.suggest_categorical(self.key, list(self.choices))
        if self.kind == "int":
            return trial.suggest_int(self.key, self.low, self.high, step=self.step or 1, log=self.log)
        return trial.suggest_float(self.key, self.low, self.high, log=self.log)


@dataclasses.dataclass(frozen=True)
class SearchSpace:
    """A validated search space.

    Attributes:
        path: the space file.
        config_path: the base configuration file.
        base: the base configuration as read, before `fixed`.
        fixed: key path -> value set in every trial.
        parameters: the searched keys.
    """

    path: str
    config_path: str
    base: dict
    fixed: dict[str, Any]
    parameters: tuple[Parameter, ...]

    def as_record(self) -> dict[str, Any]:
        """What study.json records of the space: enough to see what every trial was drawn from."""
        return {
            "file": self.path,
            "config": self.config_path,
            "base": self.base,
            "fixed": self.fixed,
            "parameters": {parameter.key: parameter.as_json() for parameter in self.parameters},
        }

    def build_config(self, schema: dict, values: dict[str, Any]) -> dict:
        """Return the validated configuration of a trial: base, then `fixed`, then `values`.

        Raises:
            ConfigError: the result does not fit the schema.
        """
        return make_config(self.base, schema, {**self.fixed, **values})

    def grid(self) -> dict[str, list[Any]]:
        """The grid sampler's search space: every parameter's values."""
        return {parameter.key: parameter.grid_values() for parameter in self.parameters}

    def grid_size(self) -> int:
        """The number of points of the grid."""
        return math.prod(len(values) for values in self.grid().values())

    def sample(self, trial: Any) -> dict[str, Any]:
        """Draw every parameter's value for an Optuna trial."""
        return {parameter.key: parameter.suggest(trial) for parameter in self.parameters}


def load_space(
    path: str, default_config_path: str, schema: dict, overrides: dict[str, Any] | None = None
) -> SearchSpace:
    """Read and validate a search space file; nothing is written.

    Args:
        path: the space file (JSON).
        default_config_path: the base configuration when the file names none.
        schema: the project's schema (`torchexp.config.load_schema`).
        overrides: more fixed values (key path -> value), e.g. from `--set`; they win.

    Raises:
        ConfigError: one sentence naming the file, the key and the value at fault.
    """
    raw = read_json(path, "search space file", ConfigError, MAX_SPACE_BYTES)
    where = f"search space {path}"
    if not isinstance(raw, dict):
        raise ConfigError(f"search space file {path} must hold a JSON object, not {type(raw).__name__}")
    unknown = sorted(set(raw) - set(SPACE_KEYS))
    if unknown:
        raise ConfigError(f"{where} has unknown key {unknown[0]!r}: use config, fixed and parameters")
    entries = raw.get("parameters")
    if not isinstance(entries, dict) or not entries:
        raise ConfigError(f"{where} has no parameters: add {EXAMPLE}")
    fixed = raw.get("fixed", {})
    if not isinstance(fixed, dict):
        raise ConfigError(f"{where}: fixed must be an object of key paths and values, not {type(fixed).__name__}")
    fixed = {**fixed, **(overrides or {})}
    config_path = resolve_config_path(path, raw.get("config"), default_config_path)
    for key in [*fixed, *entries]:
        check_key(where, schema, key)
    parameters = tuple(parse_parameter(where, key, entry) for key, entry in entries.items())
    both = sorted(set(fixed) & set(entries))
    if both:
        raise ConfigError(f"{where}: {both[0]} is both fixed and a parameter; keep one")
    space = SearchSpace(path, config_path, load_config_file(config_path), fixed, parameters)
    check_fits_schema(space, schema)
    return space


def resolve_config_path(space_path: str, named: Any, default: str) -> str:
    """The base configuration's path: `named` relative to the space file's folder, or `default`."""
    if named is None:
        return default
    if not isinstance(named, str) or not named:
        raise ConfigError(f"search space {space_path}: config must be the path of a configuration file, not {named!r}")
    return os.path.normpath(os.path.join(os.path.dirname(space_path), named))


def check_key(where: str, schema: dict, key: Any) -> None:
    """Raise ConfigError unless `key` is a key path the schema declares."""
    if not isinstance(key, str) or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"{where}: {key!r} is not a key path such as training.lr")
    try:
        check_key_declared(schema, key.split("."))
    except ConfigError as error:
        raise ConfigError(f"{where}: {error}") from None


def parse_parameter(where: str, key: str, entry: Any) -> Parameter:
    """Turn one `parameters` entry into a Parameter, checking its distribution."""
    kinds = [kind for kind in OPTIONS if isinstance(entry, dict) and kind in entry]
    if len(kinds) != 1:
        raise ConfigError(
            f'{where}: parameter {key} must name one distribution, float, int or choice, e.g. {{"float": [0.001, 0.1]}}'
        )
    kind = kinds[0]
    unknown = sorted(set(entry) - {kind, *OPTIONS[kind]})
    if unknown:
        allowed = ", ".join(OPTIONS[kind]) or "none"
        raise ConfigError(
            f"{where}: parameter {key} has unknown option {unknown[0]!r} for a {kind} (allowed: {allowed})"
        )
    if kind == "choice":
        return Parameter(key, kind, choices=parse_choices(where, key, entry["choice"]))
    low, high = parse_range(where, key, kind, entry[kind])
    log = entry.get("log", False)
    if not isinstance(log, bool):
        raise ConfigError(f"{where}: parameter {key}: log must be true or false, not {log!r}")
    if log and low <= 0:
        raise ConfigError(f"{where}: parameter {key}: a log range must lie above zero, not [{low}, {high}]")
    step = parse_step(where, key, entry, low, high, log) if kind == "int" else None
    return Parameter(key, kind, low=low, high=high, log=log, step=step)


def parse_choices(where: str, key: str, choices: Any) -> tuple:
    """Check a choice's values: a non-empty list of distinct JSON scalars."""
    if not isinstance(choices, list):
        raise ConfigError(f"{where}: parameter {key}: choice must be a list of values, not {choices!r}")
    if not choices:
        raise ConfigError(f"{where}: parameter {key}: choice is empty; list at least one value")
    for value in choices:
        if not (
            value is None or isinstance(value, (bool, int, str)) or (isinstance(value, float) and math.isfinite(value))
        ):
            raise ConfigError(
                f"{where}: parameter {key}: choice value {value!r} is not a number, string, boolean or null"
            )
        if sum(1 for other in choices if other == value and type(other) is type(value)) > 1:
            raise ConfigError(f"{where}: parameter {key}: choice lists {value!r} twice")
    return tuple(choices)


def parse_range(where: str, key: str, kind: str, bounds: Any) -> tuple[Any, Any]:
    """Check a float or int range: [low, high], finite, low <= high, whole for ints."""
    numbers = (
        isinstance(bounds, list)
        and len(bounds) == 2
        and all(isinstance(b, (int, float)) and not isinstance(b, bool) for b in bounds)
    )
    if not numbers:
        raise ConfigError(
            f"{where}: parameter {key}: {kind} must be [low, high], two numbers, not {json.dumps(bounds)}"
        )
    low, high = bounds
    if not all(math.isfinite(bound) for bound in bounds):
        raise ConfigError(f"{where}: parameter {key}: the range [{low}, {high}] must be finite")
    if low > high:
        raise ConfigError(f"{where}: parameter {key}: low {low} is greater than high {high}")
    if kind == "int":
        if not all(float(bound).is_integer() for bound in bounds):
            raise ConfigError(f"{where}: parameter {key}: int bounds must be whole numbers, not [{low}, {high}]")
        return int(low), int(high)
    return float(low), float(high)


def parse_step(where: str, key: str, entry: dict, low: int, high: int, log: bool) -> int | None:
    """Check an int range's step: a positive whole number that divides the range."""
    step = entry.get("step")
    if step is None:
        return None
    if isinstance(step, bool) or not isinstance(step, int) or step < 1:
        raise ConfigError(f"{where}: parameter {key}: step must be a whole number of at least 1, not {step!r}")
    if log:
        raise ConfigError(
            f"{where}: parameter {key}: log and step cannot be combined (Optuna samples one or the other)"
        )
    if (high - low) % step:
        raise ConfigError(
            f"{where}: parameter {key}: the range [{low}, {high}] is not a whole number of steps of {step}"
        )
    return step


def check_fits_schema(space: SearchSpace, schema: dict) -> None:
    """Build a trial's configuration with the base and fixed values alone, then with every
    edge value of every parameter, and validate each against the schema."""
    try:
        space.build_config(schema, {})
    except ConfigError as error:
        raise ConfigError(
            f"search space {space.path}: the base configuration {space.config_path} with the fixed values "
            f"does not fit the schema: {error_lines(error)}"
        ) from None
    for parameter in space.parameters:
        for value in parameter.edges():
            try:
                space.build_config(schema, {parameter.key: value})
            except ConfigError as error:
                raise ConfigError(
                    f"search space {space.path}: {parameter.key} = {json.dumps(value)} "
                    f"does not fit the config schema: {error_lines(error)}"
                ) from None


def error_lines(error: ConfigError) -> str:
    """The errors of validate_config's message on one line."""
    lines = str(error).splitlines()
    return "; ".join(line.strip() for line in lines[1:]) or lines[0]
