"""Configuration: loading, overrides, defaults, validation and lookups."""

import json
import re
import urllib.request

import pytest

from conftest import CONFIG, SCHEMA
from torchexp.config import (
    MAX_CONFIG_BYTES,
    TRAINER_SCHEMA,
    Config,
    build_config,
    fill_defaults,
    load_config_file,
    load_schema,
    make_config,
    parse_override,
    parse_overrides,
    set_values,
    validate_config,
)
from torchexp.errors import ConfigError

SMALL_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "training": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "lr": {"type": "number", "exclusiveMinimum": 0, "default": 0.1},
                "epochs": {"type": "integer", "minimum": 1, "default": 3},
                "optimizer": {"enum": ["sgd", "adam"], "default": "sgd"},
            },
        },
        "model": {
            "type": "object",
            "properties": {"layers": {"type": "object", "properties": {"width": {"type": "integer", "default": 8}}}},
        },
        "name": {"type": "string", "default": "run"},
    },
}


def write_json(path, obj) -> str:
    path.write_text(json.dumps(obj))
    return str(path)


def test_validate_lists_every_error_with_key_path_value_and_rule():
    conf = {"training": {"lr": -1, "epochs": 0, "optimizer": "rmsprop"}}
    with pytest.raises(ConfigError) as caught:
        validate_config(conf, SMALL_SCHEMA)
    message = str(caught.value)
    assert "training.lr: -1 is less than or equal to the minimum of 0" in message
    assert "training.epochs: 0 is less than the minimum of 1" in message
    assert "training.optimizer: 'rmsprop' is not one of ['sgd', 'adam']" in message
    assert message.count("\n") == 3  # the heading and one line per error


def test_validate_names_the_section_of_an_unexpected_key():
    with pytest.raises(ConfigError, match=r"training: Additional properties are not allowed \('lrr' was unexpected\)"):
        validate_config({"training": {"lrr": 0.1}}, SMALL_SCHEMA)


def test_validate_reports_top_level_type_errors():
    with pytest.raises(ConfigError, match=r"\(top level\): \[\] is not of type 'object'"):
        validate_config([], {"type": "object"})


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_validate_refuses_non_finite_numbers_that_pass_every_bound(value):
    with pytest.raises(ConfigError, match=rf"training.lr: {value} is not a finite number"):
        validate_config({"training": {"lr": value}}, SMALL_SCHEMA)


def test_validate_accepts_a_valid_config():
    validate_config({"training": {"lr": 0.5, "epochs": 2}}, SMALL_SCHEMA)


def test_validate_follows_references_inside_the_schema_and_to_the_meta_schema():
    schema = {
        "$id": "https://example.com/root.json",
        "$defs": {"rate": {"type": "number", "exclusiveMinimum": 0}, "named": {"$id": "named.json", "type": "string"}},
        "properties": {"lr": {"$ref": "#/$defs/rate"}, "name": {"$ref": "named.json"}, "nested": {"$ref": "https://json-schema.org/draft/2020-12/schema"}},
    }
    validate_config({"lr": 0.5, "name": "run", "nested": {"type": "integer"}}, schema)
    with pytest.raises(ConfigError, match=r"^config is invalid:\n  lr: -1 is less than or equal to the minimum of 0\n  name: 3 is not of type 'string'$"):
        validate_config({"lr": -1, "name": 3}, schema)


@pytest.mark.parametrize("reference", ["https://example.com/schema.json", "file:///etc/hostname", "other.json"])
def test_validate_refuses_a_reference_outside_the_schema_without_fetching_it(monkeypatch, reference):
    fetched = []

    def refuse(request, *args, **kwargs):
        fetched.append(request)
        raise OSError("the tests reach no network")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    message = (
        f"the config schema's $ref '{reference}' is not in the schema: torchexp fetches no schema from files or the network; "
        "copy what it refers to under $defs"
    )
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}$"):
        validate_config({"data": {}}, {"properties": {"data": {"$ref": reference}}})
    assert fetched == []


@pytest.mark.parametrize("reference", ["#/$defs/missing", "#/properties/data/items", "#missing"])
def test_validate_names_a_reference_to_nothing_in_the_schema(reference):
    message = f"the config schema's $ref '{reference}' points to nothing in the schema"
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}$"):
        validate_config({"data": {}}, {"$defs": {"rate": {}}, "properties": {"data": {"$ref": reference}}})


def test_fill_defaults_fills_missing_keys_and_nested_sections():
    filled = fill_defaults({"training": {"lr": 0.5}}, SMALL_SCHEMA)
    assert filled == {
        "training": {"lr": 0.5, "epochs": 3, "optimizer": "sgd"},
        "model": {"layers": {"width": 8}},
        "name": "run",
    }


def test_fill_defaults_does_not_modify_its_input_or_the_schema():
    conf = {"training": {}}
    schema_before = json.dumps(SMALL_SCHEMA)
    filled = fill_defaults(conf, SMALL_SCHEMA)
    filled["training"]["lr"] = 9
    assert conf == {"training": {}}
    assert json.dumps(SMALL_SCHEMA) == schema_before


@pytest.mark.parametrize(
    "text, keys, value",
    [
        ("training.lr=0.5", ["training", "lr"], 0.5),
        ("training.epochs=4", ["training", "epochs"], 4),
        ("data.augment=true", ["data", "augment"], True),
        ("trainer.grad_clip_norm=null", ["trainer", "grad_clip_norm"], None),
        ("model.name=mlp", ["model", "name"], "mlp"),  # not JSON: kept as a string
        ('model.name="7"', ["model", "name"], "7"),
        ("model.sizes=[1, 2]", ["model", "sizes"], [1, 2]),
        ("a.b=x=y", ["a", "b"], "x=y"),
        ("name=", ["name"], ""),
    ],
)
def test_parse_override_reads_json_values_else_strings(text, keys, value):
    assert parse_override(text) == (keys, value)


@pytest.mark.parametrize("text", ["training.lr", "=1", "training..lr=1", ".lr=1", "training.=1"])
def test_parse_override_refuses_malformed_text(text):
    with pytest.raises(ConfigError, match=rf"override '{text}' must look like section.key=value"):
        parse_override(text)


def test_set_values_sets_overrides_in_a_copy():
    conf = {"training": {"lr": 0.1}}
    result = set_values(conf, SMALL_SCHEMA, parse_overrides(["training.lr=0.5", "training.epochs=7", "model.layers.width=3"]))
    assert result == {"training": {"lr": 0.5, "epochs": 7}, "model": {"layers": {"width": 3}}}
    assert conf == {"training": {"lr": 0.1}}


@pytest.mark.parametrize(
    "override, unknown", [("training.lrr=1", "training.lrr"), ("trainin.lr=1", "trainin"), ("training.lr.x=1", "training.lr.x")]
)
def test_set_values_refuses_keys_the_schema_does_not_declare(override, unknown):
    with pytest.raises(ConfigError, match=rf"unknown config key {unknown}: the schema does not declare it"):
        set_values({}, SMALL_SCHEMA, parse_overrides([override]))


@pytest.mark.parametrize(
    "override, message",
    [
        ("training.lrr=1", "unknown config key training.lrr: the schema does not declare it (did you mean 'training.lr'?)"),
        ("trainig.lr=1", "unknown config key trainig: the schema does not declare it (did you mean 'training.lr'?)"),
        ("model.layers.widht=3", "unknown config key model.layers.widht: the schema does not declare it (did you mean 'model.layers.width'?)"),
        ("trainig.lrr=1", "unknown config key trainig: the schema does not declare it (did you mean 'training.lr'?)"),
        ("training.lr.x=1", "unknown config key training.lr.x: the schema does not declare it"),
        ("training.momentum=0.9", "unknown config key training.momentum: the schema does not declare it"),  # none near it
    ],
)
def test_an_unknown_key_names_the_declared_key_nearest_to_it(override, message):
    with pytest.raises(ConfigError) as refused:
        set_values({}, SMALL_SCHEMA, parse_overrides([override]))
    assert str(refused.value) == message


def test_an_unknown_trainer_option_names_the_nearest_one():
    with pytest.raises(ConfigError) as refused:
        build_config(CONFIG, SCHEMA, ["trainer.max_epoch=3"])
    assert str(refused.value) == "unknown config key trainer.max_epoch: the schema does not declare it (did you mean 'trainer.max_epochs'?)"


def test_set_values_refuses_a_key_under_a_value_that_is_not_a_section():
    with pytest.raises(ConfigError, match=r"override 'model.layers.width=3': layers is not a section"):
        set_values({"model": {"layers": 5}}, SMALL_SCHEMA, parse_overrides(["model.layers.width=3"]))


def test_config_get_returns_nested_values_and_names_unknown_key_paths():
    config = Config({"training": {"lr": 0.5}, "name": "run"})
    assert config.get("training", "lr") == 0.5
    assert config.get("training") == {"lr": 0.5}
    with pytest.raises(ConfigError, match=r"config has no key training\.lrr$"):
        config.get("training", "lrr")
    with pytest.raises(ConfigError, match=r"config has no key data$"):
        config.get("data", "batch_size")
    with pytest.raises(ConfigError, match=r"config has no key name\.length$"):
        config.get("name", "length")


def test_config_get_returns_none_only_when_the_value_is_null():
    assert Config({"trainer": {"grad_clip_norm": None}}).get("trainer", "grad_clip_norm") is None


def test_load_schema_adds_the_trainer_section(tmp_path):
    schema = load_schema(write_json(tmp_path / "schema.json", SMALL_SCHEMA))
    assert schema["properties"]["trainer"] == TRAINER_SCHEMA
    assert "trainer" not in SMALL_SCHEMA["properties"]
    filled = fill_defaults({}, schema)
    assert filled["trainer"] == {
        "precision": "fp32",
        "channels_last": False,
        "compile": False,
        "grad_accumulation": 1,
        "grad_clip_norm": None,
        "keep_freed_memory": None,
        "early_stopping_patience": None,
        "monitor": "validation.loss",
        "checkpoint_every_minutes": 30,
        "keep_checkpoints": None,
        "max_epochs": 10,
        "max_steps": None,
        "validate_every_steps": None,
        "checkpoint_every_steps": None,
        "deterministic": False,
        "strategy": "ddp",
        "fsdp_modules": None,
        "async_checkpoint": False,
    }


def test_validating_every_steps_needs_a_budget_in_steps(tmp_path):
    schema = load_schema(write_json(tmp_path / "schema.json", SMALL_SCHEMA))
    with pytest.raises(ConfigError, match=r"trainer.validate_every_steps: 50 needs trainer.max_steps"):
        validate_config(fill_defaults({"trainer": {"validate_every_steps": 50}}, schema), schema)
    validate_config(fill_defaults({"trainer": {"validate_every_steps": 50, "max_steps": 200}}, schema), schema)


def test_trainer_section_is_validated(tmp_path):
    schema = load_schema(write_json(tmp_path / "schema.json", SMALL_SCHEMA))
    conf = fill_defaults({"trainer": {"precision": "fp8", "grad_accumulation": 0}}, schema)
    with pytest.raises(ConfigError) as caught:
        validate_config(conf, schema)
    assert "trainer.precision: 'fp8' is not one of ['fp32', 'auto', 'bf16', 'fp16']" in str(caught.value)
    assert "trainer.grad_accumulation: 0 is less than the minimum of 1" in str(caught.value)


def test_load_schema_refuses_an_invalid_schema(tmp_path):
    path = write_json(tmp_path / "schema.json", {"type": "nonsense"})
    with pytest.raises(ConfigError, match=r"schema file .*schema.json is not a valid JSON schema: 'nonsense' is not valid"):
        load_schema(path)


def test_load_schema_refuses_a_schema_that_is_not_an_object(tmp_path):
    with pytest.raises(ConfigError, match=r"schema file .*schema.json must hold a JSON object, not list"):
        load_schema(write_json(tmp_path / "schema.json", []))


def test_load_schema_names_a_missing_file(tmp_path):
    with pytest.raises(ConfigError, match=r"schema file .*nowhere.json is missing"):
        load_schema(str(tmp_path / "nowhere.json"))


def test_load_config_file_refuses_text_that_is_not_json(tmp_path):
    path = tmp_path / "config.json"
    path.write_text("{training: 1}")
    with pytest.raises(ConfigError, match=r"config file .*config.json is not valid JSON: Expecting property name"):
        load_config_file(str(path))


@pytest.mark.parametrize("value, kind", [([1, 2], "list"), ("text", "str"), (3, "int"), (None, "NoneType")])
def test_load_config_file_refuses_json_that_is_not_an_object(tmp_path, value, kind):
    with pytest.raises(ConfigError, match=rf"config file .*config.json must hold a JSON object, not {kind}"):
        load_config_file(write_json(tmp_path / "config.json", value))


def test_load_config_file_refuses_a_file_too_large(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(" " * MAX_CONFIG_BYTES + "{}")
    with pytest.raises(ConfigError, match=rf"config file .*config.json is {MAX_CONFIG_BYTES + 2} bytes, more than the {MAX_CONFIG_BYTES} allowed"):
        load_config_file(str(path))


def test_load_config_file_refuses_a_folder(tmp_path):
    with pytest.raises(ConfigError, match=r"config file .* is a folder, not a file"):
        load_config_file(str(tmp_path))


def test_build_config_overrides_fills_and_validates_the_project_files():
    conf = build_config(CONFIG, SCHEMA, ["training.lr=0.5", "model.name=mlp", "trainer.precision=bf16"])
    assert conf["training"]["lr"] == 0.5
    assert conf["model"]["name"] == "mlp"
    assert conf["training"]["momentum"] == 0.9  # a schema default absent from config.default.json
    assert conf["trainer"]["precision"] == "bf16"
    assert conf["trainer"]["grad_accumulation"] == 1


def test_build_config_reports_every_invalid_override_at_once():
    with pytest.raises(ConfigError) as caught:
        build_config(CONFIG, SCHEMA, ["training.lr=-1", "data.batch_size=0", "model.name=resnet"])
    message = str(caught.value)
    assert "training.lr: -1 is less than or equal to the minimum of 0" in message
    assert "data.batch_size: 0 is less than the minimum of 1" in message
    assert "model.name: 'resnet' is not one of" in message


def test_build_config_refuses_nan_given_on_the_command_line():
    with pytest.raises(ConfigError, match=r"training.lr: nan is not a finite number"):
        build_config(CONFIG, SCHEMA, ["training.lr=NaN"])


def test_parse_overrides_keeps_the_last_value_of_a_key_in_the_place_it_was_last_set():
    values = parse_overrides(["training.lr=0.5", "training={\"lr\": 0.1}", "training.lr=0.2"])
    assert list(values.items()) == [("training", {"lr": 0.1}), ("training.lr", 0.2)]
    assert set_values({}, SMALL_SCHEMA, values) == {"training": {"lr": 0.2}}


def test_make_config_from_values_equals_build_config_from_set_texts():
    texts = ["training.lr=0.5", "model.name=mlp", "data.batch_size=16.0", "trainer.grad_clip_norm=null", "data.augment=true"]
    values = {"training.lr": 0.5, "model.name": "mlp", "data.batch_size": 16.0, "trainer.grad_clip_norm": None, "data.augment": True}
    conf = make_config(load_config_file(CONFIG), load_schema(SCHEMA), values)
    assert conf == build_config(CONFIG, SCHEMA, texts)
    assert conf["data"]["batch_size"] == 16 and isinstance(conf["data"]["batch_size"], int)


def test_make_config_leaves_its_base_and_values_unchanged():
    base, values = {"model": {"name": "cnn"}}, {"model.sizes": [1, 2]}
    conf = make_config(base, {"properties": {"model": {"type": "object", "properties": {"name": {}, "sizes": {}}}}}, values)
    conf["model"]["sizes"].append(3)
    assert base == {"model": {"name": "cnn"}} and values == {"model.sizes": [1, 2]}


def test_make_config_refuses_an_invalid_value_naming_it():
    with pytest.raises(ConfigError, match=r"training.lr: -1 is less than or equal to the minimum of 0"):
        make_config({}, SMALL_SCHEMA, {"training.lr": -1})


def test_project_schema_documents_every_key_with_a_default_and_description():
    schema = load_schema(SCHEMA)

    def check(node, path):
        for key, sub in node.get("properties", {}).items():
            assert "description" in sub, f"{path}{key} has no description"
            if "properties" in sub:
                check(sub, f"{path}{key}.")
            else:
                assert "default" in sub, f"{path}{key} has no default"

    check(schema, "")
    # The shipped default config is valid as it is.
    validate_config(fill_defaults(load_config_file(CONFIG), schema), schema)


def test_a_schema_declaring_the_reserved_trainer_section_is_refused(tmp_path):
    path = tmp_path / "schema.json"
    path.write_text('{"type": "object", "properties": {"trainer": {"type": "object"}}}')
    with pytest.raises(ConfigError, match="declares 'trainer', a section torchexp reserves"):
        load_schema(str(path))
