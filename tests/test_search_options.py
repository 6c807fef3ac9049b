"""The search's options are declared once: the click command has exactly the declared
options, with their flags, defaults and help, and the library refuses what click would."""

import dataclasses
import re

import click
import pytest
from click.testing import CliRunner

from conftest import CONFIG, SCHEMA
from mnist_classifier.__main__ import cli
from search_project import write_space
from torchexp.commands.search import search
from torchexp.config import load_schema
from torchexp.errors import ConfigError
from torchexp.search.options import OPTION, RunOptions, StudyOptions, declared_fields, find_option, split_options
from torchexp.search.pruners import PRUNERS
from torchexp.search.run import make_settings
from torchexp.search.space import load_space

LOOK_OPTIONS = {"status", "dashboard", "host", "port"}  # look at a study instead of running one
DECLARED = [*declared_fields(RunOptions), *declared_fields(StudyOptions)]


def test_the_command_has_exactly_the_declared_options_and_those_that_look_at_a_study():
    names = [param.name for param in search.params if param.name != "help"]
    assert names == [field.name for field in DECLARED] + ["status", "dashboard", "host", "port"]


@pytest.mark.parametrize("field", DECLARED, ids=[field.name for field in DECLARED])
def test_each_click_option_has_its_fields_flag_default_help_and_values(field):
    param = next(param for param in search.params if param.name == field.name)
    spec = field.metadata[OPTION]
    assert param.opts == [spec.flag]
    assert param.default == field.default
    assert param.help
    if spec.help is not None:
        assert param.help == spec.help
    if spec.choices:
        assert tuple(param.type.choices) == spec.choices
    if spec.minimum is not None:
        assert (param.type.min, param.type.max) == (spec.minimum, spec.maximum)
    assert param.multiple == (field.name == "overrides")
    assert param.multiple or param.show_default == (spec.default_text or True)


def test_help_shows_every_option_with_its_default():
    context = click.Context(search)
    for field in DECLARED:
        spec = field.metadata[OPTION]
        names, text = next(param for param in search.params if param.name == field.name).get_help_record(context)
        assert names.startswith(spec.flag)
        if field.name == "overrides":
            assert names == "--set KEY=VALUE"
        elif spec.default_text:
            assert f"[default: ({spec.default_text})" in text, text
        else:
            assert f"[default: {field.default}" in text, text


def test_the_pruner_choices_are_the_pruners():
    assert find_option("pruner").choices == tuple(PRUNERS) == ("asha", "median", "none")


def test_split_options_gives_each_field_to_its_class():
    values = {field.name: field.default for field in DECLARED} | {"metric": "train.loss", "trials": 4, "status": True}
    options, run = split_options(values)
    assert options == StudyOptions(metric="train.loss")
    assert run == RunOptions(trials=4)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: StudyOptions(sampler="grids"), "--sampler 'grids' is not one of tpe, random, grid"),
        (lambda: StudyOptions(pruner="hyperband"), "--pruner 'hyperband' is not one of asha, median, none"),
        (lambda: StudyOptions(direction="up"), "--direction 'up' is not one of minimize, maximize, min, max"),
        (lambda: StudyOptions(reduction_factor=1), "--reduction-factor 1 is less than 2"),
        (lambda: StudyOptions(seed=2**63), f"--seed {2**63} is more than {2**63 - 1}"),
        (lambda: StudyOptions(max_epochs=True), "--max-epochs True is not a whole number"),
        (lambda: RunOptions(trials=0), "--trials 0 is less than 1"),
        (lambda: StudyOptions(metric=None), "--metric needs a value, not None"),
        (lambda: RunOptions(timeout="1"), "--timeout '1' is not a number"),
        (lambda: RunOptions(overrides="model.name=mlp"), "--set 'model.name=mlp' is not a list of texts"),
    ],
)
def test_options_made_in_python_are_checked_as_the_command_line_checks_them(make, message):
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}$"):
        make()


def test_options_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError, match=r"^cannot assign to field 'metric'$"):
        StudyOptions().metric = "train.loss"


@pytest.mark.parametrize("direction, normalized", [("min", "minimize"), ("max", "maximize"), ("maximize", "maximize")])
def test_the_settings_hold_the_direction_normalized_and_max_epochs_resolved(tmp_path, direction, normalized):
    schema = load_schema(SCHEMA)
    space = load_space(write_space(str(tmp_path), {"training.momentum": {"choice": [0.1, 0.3]}}), CONFIG, schema)
    settings = make_settings("study", space, schema, StudyOptions(direction=direction), None)
    assert settings.direction == normalized
    assert settings.max_epochs == space.build_config(schema, {})["trainer"]["max_epochs"]
    assert settings.storage == {"kind": "journal", "file": "journal.log"}


def test_a_direction_click_refuses_is_one_sentence():
    result = CliRunner().invoke(cli, ["search", "--direction", "up"])
    assert result.exit_code == 2
    assert "Invalid value for '--direction': 'up' is not one of 'minimize', 'maximize', 'min', 'max'." in result.output
