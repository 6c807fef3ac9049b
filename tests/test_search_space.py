"""The search space file and the search's options: a good space is read as written, and every
bad one is one sentence naming the key and the value, a non-zero exit, and nothing written."""

import json
import os

import pytest
from click.testing import CliRunner

from conftest import CONFIG, SCHEMA, snapshot
from mnist_classifier.__main__ import cli
from search_project import write_space
from torchexp.config import load_schema
from torchexp.errors import ConfigError
from torchexp.search.space import load_space

LR = {"training.lr": {"float": [0.0001, 0.01], "log": True}}


def run_search(tmp_path, *args: str):
    base = ["--experiments-path", str(tmp_path / "experiments"), "--data-path", str(tmp_path / "data"), "--experiment-name", "study"]
    return CliRunner().invoke(cli, [*base, "search", "--schema-path", SCHEMA, "--device", "cpu", *args])


def test_a_space_is_read_as_written(tmp_path):
    space = load_space(write_space(str(tmp_path), {**LR, "data.batch_size": {"int": [16, 64], "step": 16}, "model.name": {"choice": ["mlp", "cnn"]}}), CONFIG, load_schema(SCHEMA))
    assert [(p.key, p.kind) for p in space.parameters] == [("training.lr", "float"), ("data.batch_size", "int"), ("model.name", "choice")]
    assert (space.parameters[0].low, space.parameters[0].high, space.parameters[0].log) == (0.0001, 0.01, True)
    assert space.parameters[1].grid_values() == [16, 32, 48, 64]
    assert space.parameters[2].grid_values() == ["mlp", "cnn"]
    conf = space.build_config(load_schema(SCHEMA), {"model.name": "cnn", "training.lr": 0.005})
    assert (conf["model"]["name"], conf["training"]["lr"], conf["data"]["test_batch_size"]) == ("cnn", 0.005, 20)


@pytest.mark.parametrize("name", ["search.json", "architectures.json"])
def test_the_shipped_spaces_fit_the_schema_with_a_one_cycle_over_every_epoch(name):
    space = load_space(os.path.join(os.path.dirname(CONFIG), "configs", name), CONFIG, load_schema(SCHEMA))
    conf = space.build_config(load_schema(SCHEMA), {})
    assert conf["training"]["scheduler"] == "onecycle"
    assert conf["training"]["schedule_epochs"] == conf["trainer"]["max_epochs"]
    assert conf["data"]["val_split"] > 0  # the search's metric is a validation metric


def test_the_base_config_is_relative_to_the_space_file(tmp_path):
    os.makedirs(tmp_path / "spaces")
    with open(tmp_path / "base.json", "w") as file:
        json.dump({"model": {"name": "small_cnn"}}, file)
    with open(tmp_path / "spaces" / "space.json", "w") as file:
        json.dump({"config": "../base.json", "parameters": LR}, file)
    space = load_space(str(tmp_path / "spaces" / "space.json"), CONFIG, load_schema(SCHEMA))
    assert space.config_path == str(tmp_path / "base.json")
    assert space.build_config(load_schema(SCHEMA), {})["model"]["name"] == "small_cnn"


def test_set_fixes_a_value_over_the_space_files(tmp_path):
    space = load_space(write_space(str(tmp_path), LR), CONFIG, load_schema(SCHEMA), {"model.name": "cnn_bn"})
    assert space.build_config(load_schema(SCHEMA), {})["model"]["name"] == "cnn_bn"


BAD_PARAMETERS = [
    ({"training.lrr": {"float": [0.1, 1]}}, "unknown config key training.lrr: the schema does not declare it"),
    ({"model.name": {"choice": []}}, "parameter model.name: choice is empty"),
    ({"training.lr": {"float": [0.1, 0.01]}}, "parameter training.lr: low 0.1 is greater than high 0.01"),
    ({"training.lr": {"float": [0, 0.1], "log": True}}, "parameter training.lr: a log range must lie above zero, not [0.0, 0.1]"),
    ({"data.batch_size": {"int": [16.5, 64]}}, "parameter data.batch_size: int bounds must be whole numbers, not [16.5, 64]"),
    ({"data.batch_size": {"int": [16, 60], "step": 16}}, "the range [16, 60] is not a whole number of steps of 16"),
    ({"model.name": {"choice": ["mlp", "resnet"]}}, 'model.name = "resnet" does not fit the config schema: model.name: \'resnet\' is not one of'),
    ({"training.lr": {"float": [-1, 0.1]}}, "training.lr = -1.0 does not fit the config schema: training.lr: -1.0 is less than or equal to the minimum of 0"),
    ({"training.lr": {"uniform": [0.1, 1]}}, "parameter training.lr must name one distribution, float, int or choice"),
    ({"training.lr": {"float": [0.1, 1], "steps": 2}}, "parameter training.lr has unknown option 'steps' for a float (allowed: log)"),
    ({"training.lr": {"float": 0.1}}, "parameter training.lr: float must be [low, high], two numbers, not 0.1"),
    ({"model.name": {"choice": ["mlp", "mlp"]}}, "parameter model.name: choice lists 'mlp' twice"),
    ({}, "has no parameters"),
]


@pytest.mark.parametrize("parameters, message", BAD_PARAMETERS, ids=[message[:40] for _, message in BAD_PARAMETERS])
def test_a_bad_parameter_is_one_sentence_and_writes_nothing(tmp_path, parameters, message):
    space = write_space(str(tmp_path), parameters)
    before = snapshot(str(tmp_path))
    result = run_search(tmp_path, "--space", space, "--trials", "2")
    assert result.exit_code == 2, result.output
    assert result.output.startswith("Error: search space ") and message in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1
    assert snapshot(str(tmp_path)) == before


def bad_file(tmp_path, text: str) -> str:
    path = str(tmp_path / "space.json")
    with open(path, "w") as file:
        file.write(text)
    return path


@pytest.mark.parametrize(
    "text, message",
    [
        ('{"parameters": {"training.lr": }', "search space file {path} is not valid JSON: Expecting value: line 1"),
        ("[1, 2]", "search space file {path} must hold a JSON object, not list"),
        ('{"parameters": {"training.lr": {"float": [0.1, 1]}}, "base": {}}', "search space {path} has unknown key 'base': use config, fixed and parameters"),
        ('{"fixed": {"training.lrr": 1}, "parameters": {"training.lr": {"float": [0.1, 1]}}}', "search space {path}: unknown config key training.lrr"),
        ('{"fixed": {"training.lr": 1}, "parameters": {"training.lr": {"float": [0.1, 1]}}}', "search space {path}: training.lr is both fixed and a parameter"),
    ],
)
def test_a_bad_space_file_is_one_sentence_and_writes_nothing(tmp_path, text, message):
    path = bad_file(tmp_path, text)
    before = snapshot(str(tmp_path))
    result = run_search(tmp_path, "--space", path, "--trials", "2")
    assert result.exit_code == 2, result.output
    assert "Error: " + message.format(path=path) in result.output
    assert snapshot(str(tmp_path)) == before


@pytest.mark.parametrize(
    "options, message, code",
    [
        (("--trials", "0"), "Error: Invalid value for '--trials': 0 is not in the range x>=1.", 2),
        (("--trials", "2", "--sampler", "grid"), "the grid sampler needs choices or int ranges with a step, but parameter training.lr is a log float range", 2),
        (("--trials", "2", "--metric", "accuracy"), "metric 'accuracy' must look like split.name with split train or validation", 2),
        (("--trials", "2", "--max-epochs", "2", "--min-epochs", "3"), "--min-epochs 3 is more than --max-epochs 2", 2),
        (("--trials", "2", "--storage", "postgresql://user:secret@/nodb?host=/nonexistent"), "storage postgresql://user:***@/nodb?host=/nonexistent cannot be used: (psycopg2.OperationalError) connection to server on socket", 8),
        (("--trials", "2", "--storage", "nonsense"), "storage nonsense cannot be used: ", 8),
        (("--trials", "2", "--set", "training.lrr=1"), "unknown config key training.lrr", 2),
        ((), "pass --space FILE and --trials N to run a search", 2),
    ],
)
def test_bad_options_are_one_sentence_and_write_nothing(tmp_path, options, message, code):
    space = write_space(str(tmp_path), LR)
    before = snapshot(str(tmp_path))
    result = run_search(tmp_path, *(("--space", space) if options else ()), *options)
    assert result.exit_code == code, result.output
    assert message in result.output and "secret" not in result.output and "Traceback" not in result.output, result.output
    assert snapshot(str(tmp_path)) == before


def test_status_of_a_study_that_does_not_exist_is_refused(tmp_path):
    result = run_search(tmp_path, "--status")
    assert result.exit_code == 3
    assert "Error: study 'study' does not exist in" in result.output and "start it with search --space FILE --trials N" in result.output


def test_a_search_cannot_take_the_name_of_an_experiment(tmp_path, invoke):
    from conftest import init_args

    assert invoke(*init_args("--set", "model.name=mlp"), name="study").exit_code == 0
    space = write_space(str(tmp_path), LR)
    before = snapshot(str(tmp_path))
    result = run_search(tmp_path, "--space", space, "--trials", "2")
    assert result.exit_code == 3
    assert "'study' in " in result.output and "is an experiment, not a study; choose another --experiment-name" in result.output
    assert snapshot(str(tmp_path)) == before


def test_load_space_raises_config_error_naming_the_file(tmp_path):
    with pytest.raises(ConfigError, match="search space file .* is missing"):
        load_space(str(tmp_path / "missing.json"), CONFIG, load_schema(SCHEMA))
