"""A project's declared request instance: checked before its `serve_preprocess`, shown in OpenAPI.

A Runner's `serve_schema` hook may return a pydantic model (or any type pydantic's
TypeAdapter reads: a dataclass, a TypedDict, `list[float]`, an `Annotated` type) or a JSON
Schema (a dict). The pipeline then checks each request's instances on the batch thread,
before `serve_preprocess` sees them:

    pydantic     one call of pydantic's compiled validator for the request's instances,
                 a few µs an instance
    JSON Schema  jsonschema, instance by instance: pure Python, 0.1-0.2 ms for an
                 object of 30 numbers (benchmarks/serve_schema.py)

Either way the check is a gate: `serve_preprocess` receives each instance as the client sent
it (JSON data), not what pydantic would make of it, so that every caller of the hook
(`export`, which traces the model with the example, included) gives it the same thing. The
first fault is one sentence naming the field's path, what is wrong and the value, e.g.
`field "mean radius" must be a valid number, got "abc"`; the pipeline puts the instance's
index in front. The schema documents the predict route's instances in /openapi.json.
"""

import json
import re
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from torchexp.errors import ProjectError, first_line
from torchexp.hooks import describe_failure

# Where OpenAPI keeps named schemas; the declared schema's references are rewritten to point there.
COMPONENTS = "#/components/schemas/"
SHOWN_CHARACTERS = 40  # longer values are cut in a sentence
JSON_TYPES = {
    "object": "an object",
    "array": "an array",
    "string": "a string",
    "number": "a number",
    "integer": "an integer",
    "boolean": "true or false",
    "null": "null",
}
# What a JSON Schema keyword requires, as the end of "field X must ..."; {} is the keyword's value.
JSON_SCHEMA_RULES = {
    "minimum": "be at least {}",
    "maximum": "be at most {}",
    "exclusiveMinimum": "be more than {}",
    "exclusiveMaximum": "be less than {}",
    "multipleOf": "be a multiple of {}",
    "minItems": "hold at least {} items",
    "maxItems": "hold at most {} items",
    "uniqueItems": "hold no item twice",
    "minLength": "be at least {} characters long",
    "maxLength": "be at most {} characters long",
    "pattern": "match the pattern {}",
    "enum": "be one of {}",
    "const": "be {}",
    "minProperties": "hold at least {} fields",
    "maxProperties": "hold at most {} fields",
    "anyOf": "match one of the schema's alternatives",
    "oneOf": "match exactly one of the schema's alternatives",
    "not": "not match {}",
}


class InvalidInstance(ValueError):
    """An instance its project's schema refuses; the message is one sentence naming the fault.

    Attributes:
        index: the instance's position in the request.
    """

    def __init__(self, index: int, message: str):
        super().__init__(message)
        self.index = index


class InstanceSchema(Protocol):
    """A declared instance: checks a request's instances and describes them for OpenAPI."""

    def validate(self, instances: list[Any]) -> None:
        """Raise InvalidInstance for the first instance that does not fit."""

    def openapi(self) -> tuple[dict, dict[str, dict]]:
        """Return the instance's JSON Schema and the named schemas it refers to (OpenAPI
        components, which its references point at)."""


class PydanticSchema:
    """An instance declared as a pydantic model or any type pydantic's TypeAdapter reads.

    Args:
        declared: the type.

    Raises:
        ProjectError: pydantic cannot build a validator for it (from `load_schema`).
    """

    def __init__(self, declared: Any):
        from pydantic import TypeAdapter

        self.declared = declared
        # One adapter for the whole list: pydantic's validator loops over the instances in Rust.
        self.adapter = TypeAdapter(list[declared])

    def validate(self, instances: list[Any]) -> None:
        from pydantic import ValidationError

        try:
            self.adapter.validate_python(instances)
        except ValidationError as error:
            faults = error.errors(include_url=False)
            index, *path = faults[0]["loc"]  # a list's errors start at the instance's index
            assert isinstance(index, int), "pydantic places a list's errors under the index"
            others = sum(1 for fault in faults[1:] if fault["loc"][0] == index)
            more = f" (and {others} more problem{'s' * (others > 1)})" if others else ""
            raise InvalidInstance(index, describe_pydantic_fault(tuple(path), faults[0]) + more) from None

    def openapi(self) -> tuple[dict, dict[str, dict]]:
        from pydantic import TypeAdapter

        try:
            return split_definitions(TypeAdapter(self.declared).json_schema(ref_template=COMPONENTS + "{model}"))
        except Exception:  # a type pydantic validates but cannot write as JSON Schema: OpenAPI shows any JSON
            return {}, {}


class JsonSchema:
    """An instance declared as a JSON Schema (a dict), checked by jsonschema.

    Args:
        schema: the JSON Schema; its `$schema` picks the draft (default: the latest).

    Raises:
        ProjectError: the schema itself is invalid (from `load_schema`).
    """

    def __init__(self, schema: dict):
        from jsonschema.validators import validator_for

        self.schema = schema
        validator_class = validator_for(schema)
        validator_class.check_schema(schema)
        self.validator = validator_class(schema)

    def validate(self, instances: list[Any]) -> None:
        from jsonschema.exceptions import best_match

        for index, instance in enumerate(instances):
            # best_match goes over the errors iter_errors finds: none for a valid instance.
            error = best_match(self.validator.iter_errors(instance))
            if error is not None:
                raise InvalidInstance(index, describe_json_schema_error(error))

    def openapi(self) -> tuple[dict, dict[str, dict]]:
        schema = {key: value for key, value in self.schema.items() if key not in ("$schema", "$id")}
        return split_definitions(point_references_at_components(schema))


def load_schema(runner: Any) -> InstanceSchema | None:
    """Return the instance schema the project's Runner declares in `serve_schema`, or None.

    Raises:
        ProjectError: the hook failed, or returned neither a JSON Schema nor a type pydantic reads.
    """
    hook = f"{type(runner).__name__}.serve_schema"
    try:
        declared = runner.serve_schema()
    except Exception as error:
        raise ProjectError(describe_failure(error, inference=True) or f"{hook} failed: {first_line(error)}") from error
    if declared is None:
        return None
    if isinstance(declared, dict):
        from jsonschema.exceptions import SchemaError

        try:
            return JsonSchema(declared)
        except SchemaError as error:
            where = f'at "{format_path(error.path)}", ' if error.path else ""
            raise ProjectError(f"{hook} returned an invalid JSON Schema: {where}{error.message}") from error
    try:
        return PydanticSchema(declared)
    except Exception as error:  # pydantic's own (PydanticSchemaGenerationError, ...) or a TypeError
        raise ProjectError(
            f"{hook} returned {short_repr(declared)}, which is neither a JSON Schema (a dict) nor a type pydantic can "
            f"validate: {first_line(error)}"
        ) from error


def describe_pydantic_fault(path: tuple, fault: Mapping[str, Any], whole: str = "the instance") -> str:
    """One sentence for one of pydantic's errors at `path` (field names and list indexes);
    `whole` names what an empty path is."""
    where = name_location(path, whole)
    kind, message = fault["type"], fault["msg"]
    if kind == "missing":
        return f"{where} is missing"
    if kind == "extra_forbidden":
        return f"{where} is unknown"
    if kind in ("value_error", "assertion_error"):  # the project's own validator's sentence
        sentence = message.split(", ", 1)[-1]
        return f"{where}: {sentence}" if path else sentence
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return f"{where} must be an object, got {describe_value(fault.get('input'))}"
    if kind in ("too_short", "too_long"):
        return f"{where}: {message[:1].lower()}{message[1:].replace(' after validation', '')}"
    if message.startswith("Input should be "):
        return f"{where} must be {message[len('Input should be ') :]}, got {describe_value(fault.get('input'))}"
    return f"{where}: {message[:1].lower()}{message[1:]}, got {describe_value(fault.get('input'))}"


def describe_json_schema_error(error: Any) -> str:
    """One sentence for the error of jsonschema's `best_match`."""
    path, kind, value, instance = tuple(error.absolute_path), error.validator, error.validator_value, error.instance
    if kind == "required":
        missing = next((name for name in value if name not in instance), value[0])
        return f'field "{format_path((*path, missing))}" is missing'
    if kind == "additionalProperties" and value is False:
        known, patterns = error.schema.get("properties", {}), error.schema.get("patternProperties", {})
        unknown = next(
            (name for name in instance if name not in known and not any(re.search(p, name) for p in patterns)), None
        )
        if unknown is not None:
            return f'field "{format_path((*path, unknown))}" is unknown'
    where = name_location(path, "the instance")
    if kind == "type":
        expected = " or ".join(JSON_TYPES.get(name, name) for name in ([value] if isinstance(value, str) else value))
        return f"{where} must be {expected}, got {describe_value(instance)}"
    rule = JSON_SCHEMA_RULES.get(kind)
    if rule is None:
        return f"{where}: {first_line(error)}"
    return f"{where} must {rule.format(short_json(value))}, got {describe_value(instance)}"


def name_location(path: tuple, whole: str) -> str:
    """Name where in an instance a fault is: `field "a.b[2]"`, `value [3][4]` inside an
    array, or `whole` (e.g. "the instance") for an empty path."""
    if not path:
        return whole
    return f"value {format_path(path)}" if isinstance(path[0], int) else f'field "{format_path(path)}"'


def format_path(path: Any) -> str:
    """A field's path as a sentence shows it: `a.b[2].c`."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else f".{part}"
    return text.lstrip(".")


def describe_value(value: Any) -> str:
    """A JSON value as a sentence shows it: short JSON for a scalar, its kind for a container."""
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, (list, tuple)):
        return f"an array of {len(value)} item{'s' * (len(value) != 1)}"
    return short_json(value)


def short_json(value: Any) -> str:
    """`value` as JSON, cut to SHOWN_CHARACTERS."""
    try:
        text = json.dumps(value, default=repr)
    except ValueError:  # a number too large for the JSON writer
        text = repr(value)
    return text if len(text) <= SHOWN_CHARACTERS else text[: SHOWN_CHARACTERS - 3] + "..."


def short_repr(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= SHOWN_CHARACTERS else text[: SHOWN_CHARACTERS - 3] + "..."


def point_references_at_components(schema: Any) -> Any:
    """Return a copy of a JSON Schema whose `$defs` and `definitions` are moved under one
    `$defs` and whose local references to them point at OpenAPI's components instead."""
    if isinstance(schema, list):
        return [point_references_at_components(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    copy = {}
    for key, value in schema.items():
        if key == "$ref" and isinstance(value, str):
            value = re.sub(r"^#/(\$defs|definitions)/", COMPONENTS, value)
        copy["$defs" if key == "definitions" else key] = point_references_at_components(value)
    return copy


def split_definitions(schema: dict) -> tuple[dict, dict[str, dict]]:
    """Return a schema without its top-level `$defs`, and those `$defs`."""
    schema = dict(schema)
    return schema, schema.pop("$defs", {})


def add_openapi_definitions(app: Any, definitions: dict[str, dict]) -> None:
    """Put named schemas among the app's OpenAPI components, where references to them point."""
    if not definitions:
        return
    build: Callable[[], dict] = app.openapi

    def openapi() -> dict:
        document = build()  # FastAPI builds the document once and keeps it
        document.setdefault("components", {}).setdefault("schemas", {}).update(definitions)
        return document

    app.openapi = openapi


def describe_name_parameter(name: str) -> list[dict[str, Any]]:
    """OpenAPI's `{name}` path parameter of the model routes: documented as the one name served
    (FastAPI does not check it: the routes answer 404 for another)."""
    return [
        {
            "name": "name",
            "in": "path",
            "required": True,
            "schema": {"type": "string", "enum": [name]},
            "description": "The model's name.",
        }
    ]
