"""A study's settings: study.json as earlier versions wrote it still opens and is checked
on every later run, and a changed setting is refused naming its option."""

import json
import os

import optuna
import pytest
from click.testing import CliRunner

import search_project
from conftest import CONFIG, SCHEMA
from search_project import search_args, write_space
from torchexp.config import load_schema
from torchexp.errors import ExperimentError
from torchexp.search.space import load_space
from torchexp.search.storage import open_journal
from torchexp.search.study import SearchSettings, StudyFolder

MOMENTA = {"training.momentum": {"choice": [0.1, 0.3]}}
# The options study.json below records, as a run gives them.
OPTIONS = ("--sampler", "grid", "--max-epochs", "2")


def write_todays_study(experiments: str, space_path: str) -> dict:
    """Write study "study" as torchexp wrote it before its options were declared once: a
    study.json of flat keys, and an Optuna journal holding the study; return the record."""
    folder = os.path.join(experiments, "study")
    os.makedirs(folder)
    record = {
        "format": 1,
        "name": "study",
        "space": load_space(space_path, CONFIG, load_schema(SCHEMA)).as_record(),
        "metric": "validation.loss",
        "direction": "minimize",
        "sampler": "grid",
        "pruner": "asha",
        "seed": 0,
        "max_epochs": 2,
        "min_epochs": 1,
        "reduction_factor": 3,
        "startup_trials": 5,
        "storage": {"kind": "journal", "file": "journal.log"},
        "created_at": "2025-06-01T12:00:00+00:00",
    }
    with open(os.path.join(folder, "study.json"), "w", encoding="utf-8") as file:
        json.dump(record, file, indent=2)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    optuna.create_study(storage=open_journal(folder), study_name="study", direction="minimize")
    return record


@pytest.fixture
def study(tmp_path):
    """A study of today's format under tmp_path/experiments; yields the search's arguments."""
    space = write_space(str(tmp_path), MOMENTA)
    write_todays_study(str(tmp_path / "experiments"), space)
    return space


def invoke(tmp_path, *args: str):
    base = ["--experiments-path", str(tmp_path / "experiments"), "--data-path", str(tmp_path / "data"), "--experiment-name", "study"]
    return CliRunner().invoke(search_project.cli, [*base, *args])


def read_study_json(tmp_path) -> bytes:
    return (tmp_path / "experiments" / "study" / "study.json").read_bytes()


def test_a_study_json_of_todays_format_opens_for_status(tmp_path, study):
    result = invoke(tmp_path, "search", "--status")
    assert result.exit_code == 0, result.output
    assert result.output.startswith("study study: 0 trials (none), 0 epochs trained; minimize validation.loss")


def test_a_study_json_of_todays_format_reads_as_its_settings(tmp_path, study):
    settings = StudyFolder(str(tmp_path / "experiments"), "study").read_settings()
    assert (settings.name, settings.sampler, settings.pruner, settings.max_epochs, settings.reduction_factor) == ("study", "grid", "asha", 2, 3)
    assert settings.storage == {"kind": "journal", "file": "journal.log"}


def test_a_study_json_of_todays_format_continues_with_the_same_options_unchanged(tmp_path, study):
    before = read_study_json(tmp_path)
    result = invoke(tmp_path, *search_args(study, *OPTIONS, "--trials", "2", "--timeout", "0", "--direction", "min"))
    assert result.exit_code == 0, result.output
    assert "--timeout 0 s reached" in result.output
    assert read_study_json(tmp_path) == before


@pytest.mark.parametrize(
    "change, message",
    [
        (("--reduction-factor", "2"), "was created with --reduction-factor 3, not --reduction-factor 2: run it with the same --reduction-factor"),
        (("--direction", "max"), "was created with --direction minimize, not --direction maximize: run it with the same --direction"),
        (("--pruner", "median"), "was created with --pruner asha, not --pruner median: run it with the same --pruner"),
        (("--seed", "1"), "was created with --seed 0, not --seed 1: run it with the same --seed"),
        (("--startup-trials", "1"), "was created with --startup-trials 5, not --startup-trials 1: run it with the same --startup-trials"),
        (("--storage", "sqlite:///{tmp}/other.db"), "was created with its journal file, not the database sqlite:///{tmp}/other.db: run it with the same --storage"),
    ],
)
def test_a_study_json_of_todays_format_refuses_a_changed_option_naming_it(tmp_path, study, change, message):
    before = read_study_json(tmp_path)
    change = tuple(text.format(tmp=tmp_path) for text in change)
    result = invoke(tmp_path, *search_args(study, *OPTIONS, "--trials", "2", "--timeout", "0", *change))
    assert result.exit_code == 2, result.output
    assert f"Error: study 'study' {message.format(tmp=tmp_path)}, or choose another --experiment-name" in result.output
    assert read_study_json(tmp_path) == before


def test_settings_record_as_today_and_read_back(tmp_path):
    record = write_todays_study(str(tmp_path), write_space(str(tmp_path), MOMENTA))
    del record["created_at"]
    settings = SearchSettings.from_record(record, "study.json")
    # A study recorded before budgets in steps has no unit: it counts epochs, and says so from then on.
    assert settings.unit == "epoch"
    assert list(settings.as_record().items()) == [*record.items(), ("unit", "epoch")]


def test_a_study_json_lacking_a_setting_is_refused_naming_it(tmp_path, study):
    path = tmp_path / "experiments" / "study" / "study.json"
    record = json.loads(path.read_text())
    del record["startup_trials"]
    path.write_text(json.dumps(record))
    with pytest.raises(ExperimentError, match=r"settings of study 'study' \(.*study.json\) lacks the setting 'startup_trials'"):
        StudyFolder(str(tmp_path / "experiments"), "study").read_settings()


def test_a_folder_holding_only_the_scheduler_lock_is_a_study_being_created(tmp_path):
    # A second search process started beside the first finds the folder the first made and
    # the lock it holds while it writes study.json: it must wait and join, not refuse.
    folder = StudyFolder(str(tmp_path), "study")
    os.makedirs(folder.path)
    open(folder.scheduler_lock_path, "w").close()
    folder.check_usable()


def test_a_folder_holding_anything_else_is_not_a_study(tmp_path):
    folder = StudyFolder(str(tmp_path), "study")
    os.makedirs(folder.path)
    open(folder.scheduler_lock_path, "w").close()
    open(os.path.join(folder.path, "notes.txt"), "w").close()
    with pytest.raises(ExperimentError, match="exists and is not a study; choose another --experiment-name"):
        folder.check_usable()
