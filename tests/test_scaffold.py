"""`torchexp create`: a project that runs, tests and passes its own tests before any change."""

import errno
import json
import os
import pathlib
import subprocess
import sys
import zipfile

import pytest
from click.testing import CliRunner

import torchexp.scaffold
from conftest import REPO, read_package_data, snapshot
from torchexp.cli import main

TEMPLATES = os.path.join(REPO, "torchexp", "templates")


def create(*args: str):
    return CliRunner().invoke(main, ["create", *args], catch_exceptions=False)


def run_python(*args: str, cwd: str, project: str) -> subprocess.CompletedProcess:
    """Run `python ARGS` in `cwd` with the project importable, one thread as in the suite."""
    env = {**os.environ, "PYTHONPATH": project, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> str:
    """A project `demo` created by the command line in a temporary folder."""
    folder = str(tmp_path_factory.mktemp("projects"))
    result = create("--name", "demo", "--path", folder)
    assert result.exit_code == 0, result.output
    return os.path.join(folder, "demo")


def test_create_writes_the_package_its_configuration_and_its_tests(project):
    written = sorted(os.path.relpath(os.path.join(folder, name), project) for folder, _, names in os.walk(project) for name in names)
    package = ["__init__.py", "__main__.py", "config.default.json", "config.schema.json", "data.py", "model.py", "runner.py"]
    assert written == sorted([".gitignore", "README.md", "pyproject.toml", "tests/test_demo.py", *(f"demo/{name}" for name in package)])
    package_path = pathlib.Path(project, "demo")
    schema = json.loads((package_path / "config.schema.json").read_text())
    assert schema["properties"]["data"]["properties"]["samples"]["description"]
    assert json.loads((package_path / "config.default.json").read_text())["trainer"]["max_epochs"] <= 5
    assert "class DemoRunner(torchexp.Runner)" in (package_path / "runner.py").read_text()


def test_the_project_inits_trains_and_tests_from_another_folder(project, tmp_path):
    for command in ("init", "train", "test"):
        done = run_python("-m", "demo", "--experiment-name", "x", command, cwd=str(tmp_path), project=project)
        assert done.returncode == 0, done.stderr
    with open(tmp_path / "experiments" / "x" / "results" / "5.standard.test.json") as file:
        results = json.load(file)["results"]
    assert results["accuracy"] > 0.8 and results["samples"] == 400


def test_the_projects_own_tests_pass(project):
    done = run_python("-m", "pytest", "-q", "-p", "no:cacheprovider", cwd=project, project=project)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 passed" in done.stdout


def test_the_project_builds_a_wheel_holding_its_configuration(project, tmp_path):
    done = run_python(
        "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "--wheel-dir", str(tmp_path), project,
        cwd=str(tmp_path), project=project,
    )
    assert done.returncode == 0, done.stderr
    (wheel,) = [name for name in os.listdir(tmp_path) if name.endswith(".whl")]
    names = zipfile.ZipFile(tmp_path / wheel).namelist()
    assert {"demo/__main__.py", "demo/config.default.json", "demo/config.schema.json"} <= set(names)


def test_the_templates_are_installed_as_package_data():
    installed = read_package_data()["torchexp"]
    on_disk = [
        os.path.relpath(os.path.join(folder, name), os.path.join(REPO, "torchexp"))
        for folder, _, names in os.walk(TEMPLATES)
        for name in names
        if name.endswith(".tmpl")
    ]
    assert on_disk and sorted(installed) == sorted(on_disk)


@pytest.mark.parametrize(
    "name, message",
    [
        ("1demo", "project name '1demo' is not a Python identifier"),
        ("my-project", "project name 'my-project' is not a Python identifier"),
        ("", "project name '' is not a Python identifier"),
        ("café", "project name 'café' has letters outside ASCII"),
        ("class", "project name 'class' is a Python keyword"),
        ("test", "project name 'test' is taken by an installed module"),
        ("json", "project name 'json' is the name of a module of Python's standard library"),
        ("torch", "project name 'torch' is taken by an installed module"),
        ("torchexp", "project name 'torchexp' is taken by an installed module"),
        ("tests", "project name 'tests' is the name of the project's own tests folder"),
    ],
)
def test_an_unusable_name_is_refused_in_one_sentence_writing_nothing(tmp_path, name, message):
    before = snapshot(str(tmp_path))
    result = create("--name", name, "--path", str(tmp_path))
    assert result.exit_code == 2
    assert result.output.startswith(f"Error: {message}") and result.output.count("\n") == 1, result.output
    assert snapshot(str(tmp_path)) == before


def test_an_existing_folder_is_refused_and_left_as_it_was(tmp_path):
    (tmp_path / "demo").mkdir()
    (tmp_path / "demo" / "mine.txt").write_text("keep me")
    before = snapshot(str(tmp_path))
    result = create("--name", "demo", "--path", str(tmp_path))
    assert result.exit_code == 2
    assert result.output == f"Error: {tmp_path / 'demo'} already exists: choose another name or --path\n"
    assert snapshot(str(tmp_path)) == before


@pytest.mark.parametrize("kind", ["missing", "a file, not a folder"])
def test_a_path_that_is_not_a_folder_is_refused(tmp_path, kind):
    path = tmp_path / "elsewhere"
    if kind != "missing":
        path.write_text("")
    before = snapshot(str(tmp_path))
    result = create("--name", "demo", "--path", str(path))
    assert result.exit_code == 2
    assert result.output == f"Error: folder {path} is {kind}: pass --path an existing folder\n"
    assert snapshot(str(tmp_path)) == before


def test_an_unwritable_folder_is_refused(tmp_path, monkeypatch):
    # Tests may run as root, whom permissions do not stop: the refusal is simulated.
    def refuse(**kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(torchexp.scaffold.tempfile, "mkdtemp", refuse)
    result = create("--name", "demo", "--path", str(tmp_path))
    assert result.exit_code == 8
    assert result.output == f"Error: folder {tmp_path} is not writable: Permission denied\n"
    assert os.listdir(tmp_path) == []


def test_a_failed_write_leaves_nothing_behind(tmp_path, monkeypatch):
    def fill_the_disk(root, files):
        with open(os.path.join(root, "half-written.py"), "w") as file:
            file.write("import")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torchexp.scaffold, "write_files", fill_the_disk)
    result = create("--name", "demo", "--path", str(tmp_path))
    assert result.exit_code == 8
    assert result.output == f"Error: project {tmp_path / 'demo'} could not be written: No space left on device\n"
    assert os.listdir(tmp_path) == []


def test_class_names_are_the_project_name_in_camel_case():
    assert torchexp.scaffold.make_class_prefix("digit_classifier") == "DigitClassifier"
    assert torchexp.scaffold.make_class_prefix("demo") == "Demo"
