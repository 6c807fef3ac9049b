"""Experiment configuration: JSON validated against a JSON schema, defaults filled in.

The user's schema describes their own sections; torchexp adds the `trainer` section it
reads itself (precision, gradient accumulation...), so those options are validated and
documented the same way.
"""

import copy
import json
import math
from typing import TYPE_CHECKING, Any

from torchexp.config_keys import check_key_declared
from torchexp.directions import MONITOR_OPTION
from torchexp.errors import ConfigError
from torchexp.files import read_json

if TYPE_CHECKING:
    from referencing.exceptions import Unresolvable

MAX_CONFIG_BYTES = 1024 * 1024  # a configuration is a few KiB; larger is a mistake

TRAINER_SCHEMA: dict = {
    "type": "object",
    "description": "Options of torchexp's training loop.",
    "additionalProperties": False,
    "default": {},
    "properties": {
        "max_epochs": {
            "type": "integer",
            "minimum": 1,
            "default": 10,
            "description": "Epochs `train` trains to, counting those already done; `train --max-epochs` overrides it. "
            "Not used when trainer.max_steps is set.",
        },
        "max_steps": {
            "type": ["integer", "null"],
            "minimum": 1,
            "default": None,
            "description": "Optimizer steps `train` trains to, counting those already done (a step is one group of "
            "trainer.grad_accumulation batches); `train --max-steps` overrides it. When set, the experiment trains "
            "by steps: validation, standard checkpoints and every record count steps, and the budget may end in the "
            "middle of an epoch. null trains by epochs (trainer.max_epochs).",
        },
        "validate_every_steps": {
            "type": ["integer", "null"],
            "minimum": 1,
            "default": None,
            "description": "With trainer.max_steps: steps between two validations, each followed by a standard "
            "checkpoint (what an epoch's end is to an experiment trained by epochs); null validates at the last "
            "step only.",
        },
        "checkpoint_every_steps": {
            "type": ["integer", "null"],
            "minimum": 1,
            "default": None,
            "description": "Optimizer steps between mid-epoch checkpoints (in the interrupt checkpoint's format, "
            "each replacing the last), beside trainer.checkpoint_every_minutes: whichever falls due first saves. "
            "null: by the clock only.",
        },
        "precision": {
            "enum": ["fp32", "auto", "bf16", "fp16"],
            "default": "fp32",
            "description": "Autocast precision: fp32 (off); auto (bf16 where the device computes it natively: "
            "CUDA with compute capability 8.0+, CPUs with AVX512-BF16, AMX or Arm BF16; fp32 elsewhere); "
            "bf16 (CPU and CUDA; emulated, and much slower than fp32, on other CPUs); fp16 (CUDA, with a grad scaler).",
        },
        "channels_last": {
            "type": "boolean",
            "default": False,
            "description": "Put the model and 4-D inputs in channels-last memory format.",
        },
        "compile": {"type": "boolean", "default": False, "description": "Wrap the model in torch.compile."},
        "strategy": {
            "enum": ["ddp", "fsdp"],
            "default": "ddp",
            "description": "How several processes (torchrun) share the model: ddp, each holds all of it and its "
            "optimizer state, checkpoints are one file; fsdp, FSDP2 shards parameters, gradients and optimizer state "
            "over them (for models larger than one device), checkpoints are folders of every rank's shards (DCP) that "
            "resume on any number of processes.",
        },
        "fsdp_modules": {
            "type": ["array", "null"],
            "items": {"type": "string", "minLength": 1},
            "minItems": 1,
            "default": None,
            "description": "Under trainer.strategy fsdp: class names of the modules sharded as units (e.g. "
            "[\"Block\"] for a transformer's blocks), each gathered only while it computes; null: the model's direct "
            "children.",
        },
        "async_checkpoint": {
            "type": "boolean",
            "default": False,
            "description": "Write checkpoints in a background thread: training waits only for their state's copy into "
            "CPU memory, at most one save is in flight, and a checkpoint counts only once it is whole.",
        },
        "deterministic": {
            "type": "boolean",
            "default": False,
            "description": "Make CUDA training bit-reproducible, resumes included: deterministic algorithms only, "
            "cuDNN's benchmark off, cuBLAS's fixed workspace (CUBLAS_WORKSPACE_CONFIG=:4096:8); slower on GPUs. "
            "CPU training is reproducible without it.",
        },
        "grad_accumulation": {
            "type": "integer",
            "minimum": 1,
            "default": 1,
            "description": "Number of batches whose gradients are summed before each optimizer step.",
        },
        "grad_clip_norm": {
            "type": ["number", "null"],
            "exclusiveMinimum": 0,
            "default": None,
            "description": "Clip the gradients' global L2 norm to this value; null disables clipping.",
        },
        "keep_freed_memory": {
            "type": ["boolean", "null"],
            "default": None,
            "description": "Keep memory freed between batches of train and test instead of returning it to the OS "
            "(glibc only): fewer page faults, faster CPU epochs; the process keeps its peak memory until it exits. "
            "false returns it (under trainer.strategy fsdp, every freed block of over 128 KiB at once); null: true, "
            "except under fsdp, whose point is memory.",
        },
        "checkpoint_every_minutes": {
            "type": ["number", "null"],
            "exclusiveMinimum": 0,
            "default": 30,
            "description": "Minutes between mid-epoch checkpoints, written at the next optimizer step in the interrupt "
            "checkpoint's format, so that a kill loses at most this much training; null writes checkpoints at epoch "
            "ends only. 30 minutes costs well under 1 % of the time for models of up to a few GB.",
        },
        "monitor": MONITOR_OPTION,
        "keep_checkpoints": {
            "type": ["integer", "null"],
            "minimum": 1,
            "default": None,
            "description": "Standard checkpoints kept: the last this many, and the best by trainer.monitor (releases "
            "always stay); null keeps them all. verify needs an epoch's previous checkpoint.",
        },
        "early_stopping_patience": {
            "type": ["integer", "null"],
            "minimum": 1,
            "default": None,
            "description": "Stop when trainer.monitor has not improved for this many epochs; null disables it.",
        },
    },
}


class Config:
    """A validated configuration; `get` fails loudly on unknown keys."""

    def __init__(self, data: dict):
        self.data = data

    def get(self, *keys: str) -> Any:
        """Return the value at a key path, e.g. `get("training", "lr")`.

        Raises:
            ConfigError: the path does not exist; the message names it.
        """
        node: Any = self.data
        for depth, key in enumerate(keys):
            if not isinstance(node, dict) or key not in node:
                raise ConfigError(f"config has no key {'.'.join(keys[: depth + 1])}")
            node = node[key]
        return node


def load_schema(path: str) -> dict:
    """Load a JSON schema (draft 2020-12), check it, and add torchexp's `trainer` section.

    Raises:
        ConfigError: the file is missing, not JSON, not an object or not a valid schema.
    """
    from jsonschema import Draft202012Validator, SchemaError

    schema = read_json(path, "schema file", ConfigError, MAX_CONFIG_BYTES)
    if not isinstance(schema, dict):
        raise ConfigError(f"schema file {path} must hold a JSON object, not {type(schema).__name__}")
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as error:
        raise ConfigError(f"schema file {path} is not a valid JSON schema: {error.message}") from error
    if "trainer" in schema.get("properties", {}):
        raise ConfigError(f"schema file {path} declares 'trainer', a section torchexp reserves for its own options")
    schema = copy.deepcopy(schema)
    schema.setdefault("properties", {})["trainer"] = TRAINER_SCHEMA
    return schema


def load_config_file(path: str) -> dict:
    """Load a configuration file, which must hold a JSON object.

    Raises:
        ConfigError: the file is missing, too large, not JSON or not an object.
    """
    conf = read_json(path, "config file", ConfigError, MAX_CONFIG_BYTES)
    if not isinstance(conf, dict):
        raise ConfigError(f"config file {path} must hold a JSON object, not {type(conf).__name__}")
    return conf


def parse_override(text: str) -> tuple[list[str], Any]:
    """Parse `training.lr=0.5` into (["training", "lr"], 0.5); values are JSON, else strings.

    Raises:
        ConfigError: there is no `=` or the key is empty.
    """
    key, sep, raw = text.partition("=")
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r} must look like section.key=value")
    try:
        value = json.loads(raw)
    except ValueError:
        value = raw
    return key.split("."), value


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """Parse `section.key=value` texts into {key path: value}; a key given again takes the
    later value and place, so the values apply in the order their texts last set them.

    Raises:
        ConfigError: a text is malformed.
    """
    values: dict[str, Any] = {}
    for text in overrides:
        keys, value = parse_override(text)
        path = ".".join(keys)
        values.pop(path, None)
        values[path] = value
    return values


def set_values(conf: dict, schema: dict, values: dict[str, Any]) -> dict:
    """Return a copy of `conf` with each key path of `values` (e.g. "training.lr") set,
    creating the sections it lacks.

    Raises:
        ConfigError: a key path the schema does not declare, or one through a value that
            is not a section.
    """
    conf = copy.deepcopy(conf)
    for path, value in values.items():
        keys = path.split(".")
        check_key_declared(schema, keys)
        node = conf
        for key in keys[:-1]:
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override '{path}={json.dumps(value)}': {key} is not a section")
        node[keys[-1]] = copy.deepcopy(value)
    return conf


def fill_defaults(conf: dict, schema: dict) -> dict:
    """Return a copy of `conf` with every missing key that has a schema default filled in.

    Sections (object properties) missing from `conf` are created when their own
    properties have defaults.
    """
    conf = copy.deepcopy(conf)
    for key, subschema in schema.get("properties", {}).items():
        if not isinstance(subschema, dict):
            continue
        if key not in conf and "default" in subschema:
            conf[key] = copy.deepcopy(subschema["default"])
        if key not in conf and "properties" in subschema:
            conf[key] = {}
        if isinstance(conf.get(key), dict) and "properties" in subschema:
            conf[key] = fill_defaults(conf[key], subschema)
    return conf


def fill_trainer_defaults(conf: dict) -> dict:
    """Return a copy of `conf` with the trainer options it lacks set to their defaults.

    An experiment created by an older torchexp lacks the options added since.
    """
    return fill_defaults(conf, {"properties": {"trainer": TRAINER_SCHEMA}})


def validate_config(conf: dict, schema: dict) -> None:
    """Validate a configuration, listing every error with its key path, value and rule.

    Raises:
        ConfigError: one line per error, e.g. `training.lr: -1 is less than the minimum of 0`.
    """
    from jsonschema import Draft202012Validator
    from referencing import Registry
    from referencing.exceptions import Unresolvable

    # Without a registry of its own, jsonschema fetches a `$ref` it does not hold from the
    # network (or a file URL): a schema refers only to itself, and to the JSON Schema
    # meta-schemas jsonschema ships.
    # referencing's own @frozen hides attrs' alias `retrieve` (of `_retrieve`) from mypy's attrs plugin.
    validator = Draft202012Validator(schema, registry=Registry(retrieve=refuse_retrieval))  # type: ignore[call-arg]
    try:
        errors = sorted(validator.iter_errors(conf), key=lambda e: list(map(str, e.absolute_path)))
    except Unresolvable as error:
        raise ConfigError(describe_unresolvable(error)) from error
    lines = [f"{'.'.join(map(str, e.absolute_path)) or '(top level)'}: {e.message}" for e in errors]
    # NaN and infinities pass every minimum and maximum (comparisons with NaN are false)
    # and are not JSON, so they are refused whatever the schema says.
    lines += [f"{path}: {value} is not a finite number" for path, value in find_non_finite(conf)]
    lines += find_trainer_conflicts(conf.get("trainer") if isinstance(conf, dict) else None)
    if lines:
        raise ConfigError("config is invalid:\n  " + "\n  ".join(lines))


def find_trainer_conflicts(trainer: Any) -> list[str]:
    """Lines for trainer options that contradict each other, which the schema cannot say."""
    if (
        not isinstance(trainer, dict)
        or trainer.get("validate_every_steps") is None
        or trainer.get("max_steps") is not None
    ):
        return []
    return [
        f"trainer.validate_every_steps: {trainer['validate_every_steps']} needs trainer.max_steps "
        "(an experiment trained by epochs validates at each epoch's end)"
    ]


def refuse_retrieval(uri: str):
    """The schema registry's retrieve function: nothing outside the schema is fetched.

    Raises:
        LookupError: always; referencing turns it into Unresolvable.
    """
    raise LookupError(f"{uri} is not in the schema")


def describe_unresolvable(error: "Unresolvable") -> str:
    """The sentence for a `$ref` that resolves to nothing, naming it as the schema writes it."""
    anchor = getattr(error, "anchor", None)  # NoSuchAnchor's; its ref is the resource's URI
    if anchor is not None or hasattr(error, "resource"):  # an anchor or a JSON pointer into the schema
        reference = f"#{anchor if anchor is not None else error.ref}"
        return f"the config schema's $ref '{reference}' points to nothing in the schema"
    return (
        f"the config schema's $ref '{error.ref}' is not in the schema: torchexp fetches no schema "
        f"from files or the network; copy what it refers to under $defs"
    )


def find_non_finite(node: Any, path: str = "") -> list[tuple[str, float]]:
    """Return (key path, value) of every NaN or infinite number in a configuration."""
    if isinstance(node, float) and not math.isfinite(node):
        return [(path or "(top level)", node)]
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else []
    return [found for key, value in items for found in find_non_finite(value, f"{path}.{key}" if path else str(key))]


def make_config(base: dict, schema: dict, values: dict[str, Any]) -> dict:
    """Build a validated configuration: `base` with `values` ({key path: value}) set, schema
    defaults filled in, validated, and integral floats made ints where the schema wants
    integers.

    Raises:
        ConfigError: a key path the schema does not declare, or a result that does not fit
            the schema (every error listed).
    """
    conf = fill_defaults(set_values(base, schema, values), schema)
    validate_config(conf, schema)
    return convert_integral_floats(conf, schema)


def build_config(config_path: str, schema_path: str, overrides: list[str]) -> dict:
    """Load the configuration and schema files and build the configuration with the
    `section.key=value` overrides (`--set`); the result is what `init` stores.

    Raises:
        ConfigError: a file is missing or invalid, an override malformed, or the result
            does not fit the schema.
    """
    schema = load_schema(schema_path)
    base = load_config_file(config_path)
    return make_config(base, schema, parse_overrides(overrides))


def convert_integral_floats(conf: dict, schema: dict) -> dict:
    """Return `conf` with floats such as 16.0 turned into ints where the schema asks for an
    integer: JSON Schema accepts them as integers, but Python code would not."""
    conf = dict(conf)
    for key, subschema in schema.get("properties", {}).items():
        value = conf.get(key)
        if not isinstance(subschema, dict):
            continue
        types = subschema.get("type")
        types = [types] if isinstance(types, str) else types or []
        if isinstance(value, float) and value.is_integer() and "integer" in types and "number" not in types:
            conf[key] = int(value)
        elif isinstance(value, dict):
            conf[key] = convert_integral_floats(value, subschema)
    return conf
