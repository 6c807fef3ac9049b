"""`torchexp create`: a project that runs, tests and passes its own tests before any change."""

import csv
import errno
import importlib.util
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
from xml.etree import ElementTree

import pytest
from click.testing import CliRunner

import torchexp.scaffold
from conftest import REPO, read_package_data, snapshot
from torchexp.cli import main
from torchexp.errors import ConfigError, DataError

TEMPLATES = os.path.join(REPO, "torchexp", "templates")


def create(*args: str):
    return CliRunner().invoke(main, ["create", *args], catch_exceptions=False)


def run_python(*args: str, cwd: str, path: str | None = None) -> subprocess.CompletedProcess:
    """Run `python ARGS` in `cwd`, one thread as in the suite.

    Args:
        args: python's arguments.
        cwd: the working folder.
        path: a folder to import the project from, put first on PYTHONPATH; None leaves the
            project out. The suite's own PYTHONPATH stays, so that torchexp is this checkout's.
    """
    python_path = os.pathsep.join(filter(None, [path, os.environ.get("PYTHONPATH")]))
    # No bytecode: the project's folder keeps the files create wrote, and nothing else.
    env = {**os.environ, "PYTHONPATH": python_path, "OMP_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def edit(path: pathlib.Path, old: str, new: str) -> None:
    """Replace the one occurrence of `old` in the file at `path` with `new`."""
    text = path.read_text()
    assert text.count(old) == 1, f"{path} holds {old!r} {text.count(old)} times"
    path.write_text(text.replace(old, new))


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> str:
    """A project `demo` created by the command line in a temporary folder."""
    folder = str(tmp_path_factory.mktemp("projects"))
    result = create("--name", "demo", "--path", folder)
    assert result.exit_code == 0, result.output
    # What to do next starts with installing it; a folder above the working one is named whole.
    steps = result.output.split("next:\n")[1].splitlines()
    assert steps[0] == f"  cd {os.path.join(folder, 'demo')}" and steps[1].startswith("  make install")
    return os.path.join(folder, "demo")


@pytest.fixture(scope="module")
def elsewhere(project, tmp_path_factory) -> str:
    """A folder outside the project in which its command line, run with the project on the
    import path, inited, trained and tested experiment `x`: experiments/ and data/."""
    folder = str(tmp_path_factory.mktemp("elsewhere"))
    for command in ("init", "train", "test"):
        done = run_python("-m", "demo", "--experiment-name", "x", command, cwd=folder, path=project)
        assert done.returncode == 0, done.stderr
    return folder


@pytest.fixture(scope="module")
def installed(project, tmp_path_factory) -> str:
    """A folder pip installed the project in (built as a wheel, not editable), from a copy:
    the build leaves files in the folder it builds from."""
    copy = shutil.copytree(project, tmp_path_factory.mktemp("copy") / "demo")
    target = str(tmp_path_factory.mktemp("installed"))
    done = run_python(
        "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--target", target, str(copy), cwd=target,
    )
    assert done.returncode == 0, done.stderr
    return target


def write_csv(path: pathlib.Path, data_set: str) -> pathlib.Path:
    """Write scikit-learn's `data_set` ("diabetes", "digits") to `path` as a user's CSV file:
    a header, then each row's features and its target."""
    import sklearn.datasets

    features, targets = getattr(sklearn.datasets, f"load_{data_set}")(return_X_y=True)
    with open(path, "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow([*(f"f{index}" for index in range(features.shape[1])), "target"])
        writer.writerows([*row, target] for row, target in zip(features.tolist(), targets.tolist()))
    return path


def create_on_csv(folder: pathlib.Path, name: str, task: str, data_set: str) -> pathlib.Path:
    """Create project `name` of `task` in `folder`, its data set scikit-learn's `data_set` as
    a CSV file that SOURCE names, as a user brings their own; return its root."""
    assert create("--name", name, "--path", str(folder), "--task", task).exit_code == 0
    source = write_csv(folder / f"{data_set}.csv", data_set)
    edit(folder / name / name / "data.py", "SOURCE: str | None = None", f"SOURCE: str | None = {str(source)!r}")
    return folder / name


def change_the_network(root: pathlib.Path) -> None:
    """Give the classification project `root` another network, with a configuration key of
    its own, as a user would."""
    package = root / root.name
    (package / "model.py").write_text(
        "from torch import nn\n\n\n"
        "def build_model(features: int, classes: int, hidden: int, dropout: float) -> nn.Module:\n"
        "    return nn.Sequential(\n"
        "        nn.Linear(features, hidden), nn.BatchNorm1d(hidden), nn.Tanh(), nn.Dropout(dropout), nn.Linear(hidden, classes)\n"
        "    )\n"
    )
    edit(package / "runner.py", 'self.get_conf("model", "hidden"))', 'self.get_conf("model", "hidden"), self.get_conf("model", "dropout"))')
    edit(package / "config.default.json", '"hidden": 32', '"hidden": 16,\n    "dropout": 0.1')
    edit(
        package / "config.schema.json",
        '"description": "Units in each of the two hidden layers."}',
        '"description": "Units of the hidden layer."},\n'
        '        "dropout": {"type": "number", "minimum": 0, "exclusiveMaximum": 1, "default": 0.1, "description": "Dropout after the hidden layer."}',
    )


def run_own_tests(roots: list[str], folder: str) -> dict[str, dict[str, str]]:
    """Run the own tests of the projects at `roots` in one pytest process (each process
    spends seconds importing torch, pytest's plugins, FastAPI and onnxruntime); return
    project name -> test name -> "passed", or what went wrong."""
    report = os.path.join(folder, "report.xml")
    tests = [os.path.join(root, "tests") for root in roots]
    pytest_args = ["-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={report}", *tests]
    done = run_python(*pytest_args, cwd=folder, path=os.pathsep.join(roots))
    assert os.path.isfile(report), done.stdout + done.stderr
    outcomes: dict[str, dict[str, str]] = {}
    for case in ElementTree.parse(report).iter("testcase"):
        project = case.get("classname", "").rsplit(".", 1)[-1].removeprefix("test_")  # tests/test_NAME.py
        problems = [child for child in case if child.tag in ("failure", "error", "skipped")]
        outcome = "; ".join(f"{problem.tag}: {problem.get('message')}" for problem in problems) or "passed"
        outcomes.setdefault(project, {})[case.get("name")] = outcome
    return outcomes


@pytest.fixture(scope="module")
def own_tests(project, tmp_path_factory) -> dict[str, dict[str, str]]:
    """The outcomes of the own tests of four projects (`run_own_tests`): `demo` and
    `regressor` as created, `digits`, a classification project changed as a user would
    (scikit-learn's digits as its CSV, 10 classes of 64 features, and another network with
    a configuration key of its own) and `diabetes`, a regression project on scikit-learn's
    diabetes CSV (10 features, whole-number targets from 25 to 346)."""
    folder = tmp_path_factory.mktemp("own")
    assert create("--name", "regressor", "--path", str(folder), "--task", "regression").exit_code == 0
    digits = create_on_csv(folder, "digits", "classification", "digits")
    change_the_network(digits)
    diabetes = create_on_csv(folder, "diabetes", "regression", "diabetes")
    return run_own_tests([project, str(folder / "regressor"), str(digits), str(diabetes)], str(folder))


def load_data_module(project: str) -> object:
    """Import the data module of the project at `project` (its data.py imports nothing of
    the project's), as `NAME.data`, without putting the project on the import path."""
    name = os.path.basename(project)
    spec = importlib.util.spec_from_file_location(f"{name}.data", os.path.join(project, name, "data.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# load_model from a folder outside the project: the model's class and where its Runner was
# imported from, or torchexp's one sentence.
LOAD_MODEL = """
import sys

import torchexp

try:
    model = torchexp.Experiments(sys.argv[1])["x"].load_model()
except torchexp.TorchexpError as error:
    sys.exit(f"Error: {error}")
print(type(model).__name__, model.training, sys.modules["demo.runner"].__file__)
"""


def test_create_writes_the_package_its_configuration_its_tests_and_a_makefile(project):
    written = sorted(os.path.relpath(os.path.join(folder, name), project) for folder, _, names in os.walk(project) for name in names)
    package = ["__init__.py", "__main__.py", "config.default.json", "config.schema.json", "data.py", "model.py", "runner.py"]
    expected = [".gitignore", "Makefile", "README.md", "pyproject.toml", "tests/test_demo.py", *(f"demo/{name}" for name in package)]
    assert written == sorted(expected)
    package_path = pathlib.Path(project, "demo")
    schema = json.loads((package_path / "config.schema.json").read_text())
    keys = {f"{section}.{key}": value for section, spec in schema["properties"].items() for key, value in spec["properties"].items()}
    assert keys and all(value["description"] and "default" in value for value in keys.values()), keys
    assert json.loads((package_path / "config.default.json").read_text())["trainer"]["max_epochs"] <= 5
    assert "class DemoRunner(torchexp.Runner)" in (package_path / "runner.py").read_text()


def test_the_makefile_installs_the_project_into_the_active_environment_and_runs_its_commands(project):
    # A dry run (-n) prints what each target runs: the Makefile parses, and installs with the
    # environment's own python. The suite itself may run under make (CI's `make test`), whose
    # MAKEFLAGS and MAKELEVEL would make this make print "Entering directory" lines: drop them.
    env = {name: value for name, value in os.environ.items() if name not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}
    done = subprocess.run(
        ["make", "-n", "install", "test", "train", "PYTHON=python"], cwd=project, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "python -m pip install -e '.[test]'",
        "python -m pytest -q",
        "python -m demo --experiment-name first info > /dev/null 2>&1 || \\",
        "  python -m demo --experiment-name first init",
        "python -m demo --experiment-name first train --device auto",
    ]
    makefile = pathlib.Path(project, "Makefile").read_text()
    targets = [line.split(":")[0] for line in makefile.splitlines() if re.match(r"^[a-z]+:", line)]
    assert targets == ["install", "test", "train", "evaluate", "release", "serve", "export"]
    # Each target has its comment above it, and its line in the README.
    blocks = makefile.split("\n\n")
    assert all(any(block.startswith("#") and f"\n{target}:" in block for block in blocks) for target in targets)
    readme = pathlib.Path(project, "README.md").read_text()
    assert all(f"`make {target}`" in readme for target in targets)


def test_the_project_inits_trains_and_tests_from_another_folder(elsewhere):
    with open(os.path.join(elsewhere, "experiments", "x", "results", "5.standard.test.json")) as file:
        results = json.load(file)["results"]
    assert results["accuracy"] > 0.8 and results["samples"] == 400
    with open(os.path.join(elsewhere, "data", "points.csv")) as file:
        assert next(file) == "x0,x1,class\n" and sum(1 for _ in file) == 2000


def test_the_installed_project_holds_its_configuration(installed):
    assert {"__main__.py", "config.default.json", "config.schema.json"} <= set(os.listdir(os.path.join(installed, "demo")))


def test_load_model_works_from_any_folder_once_the_project_is_installed(elsewhere, installed, tmp_path):
    done = run_python("-c", LOAD_MODEL, os.path.join(elsewhere, "experiments"), cwd=str(tmp_path), path=installed)
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"Sequential False {os.path.join(installed, 'demo', 'runner.py')}\n"


def test_load_model_of_a_project_not_installed_names_its_root_and_the_fix(project, elsewhere, tmp_path):
    done = run_python("-c", LOAD_MODEL, os.path.join(elsewhere, "experiments"), cwd=str(tmp_path))
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr == (
        "Error: the project classes of experiment 'x' cannot be imported: demo.runner:DemoRunner cannot be imported "
        f"(No module named 'demo'); the project is in {project}: install it with pip install -e {project}, or run from that folder\n"
    )


@pytest.mark.parametrize("name", ["demo", "regressor"])
def test_the_projects_own_tests_pass(own_tests, name):
    assert list(own_tests[name].values()) == ["passed"] * 6, own_tests[name]


def test_a_project_changed_as_a_user_would_passes_its_own_tests(own_tests):
    """10 classes of 64 features from the user's CSV instead of 2 of 2 synthetic, another
    network with a configuration key of its own: the project's tests know nothing of the
    sizes, and pass unchanged."""
    assert list(own_tests["digits"].values()) == ["passed"] * 6, own_tests["digits"]


def test_a_regression_project_passes_its_own_tests_on_a_csv_of_whole_numbers(own_tests):
    assert list(own_tests["diabetes"].values()) == ["passed"] * 6, own_tests["diabetes"]


def test_a_regression_project_has_the_files_of_a_classification_one(tmp_path):
    result = create("--name", "regressor", "--path", str(tmp_path), "--task", "regression")
    root = tmp_path / "regressor"
    assert result.exit_code == 0 and result.output.startswith(f"created regression project regressor in {root}:\n")
    written = [os.path.relpath(os.path.join(folder, name), root) for folder, _, files in os.walk(root) for name in files]
    assert sorted(written) == sorted(torchexp.scaffold.render_project("regressor", "classification"))
    assert 'metric_directions = {"r2": "max"}' in (root / "regressor" / "runner.py").read_text()


def test_an_unknown_task_is_refused_writing_nothing(tmp_path):
    result = create("--name", "demo", "--path", str(tmp_path), "--task", "ranking")
    assert result.exit_code == 2
    assert "Error: Invalid value for '--task': 'ranking' is not one of 'classification', 'regression'." in result.output
    with pytest.raises(ConfigError, match="^task 'ranking' is not one torchexp create writes: use classification or"):
        torchexp.scaffold.create_project("demo", str(tmp_path), "ranking")
    assert os.listdir(tmp_path) == []


TO_PREDICT = "for numbers to predict, create a regression project: torchexp create --task regression"


@pytest.mark.parametrize(
    "data_set, message",
    [
        (
            "diabetes",
            "makes 347 classes (its class column's largest value + 1) of 442 rows, fewer than 10 rows per class "
            f"(ROWS_PER_CLASS in demo.data): {TO_PREDICT}",
        ),
        ("fractions", f"has 0.5 in its class column, not a class 0, 1, ...: {TO_PREDICT}"),
    ],
)
def test_a_classification_project_refuses_numbers_to_predict_naming_regression(project, tmp_path, data_set, message):
    path = tmp_path / "points.csv"
    if data_set == "fractions":
        path.write_text("x0,class\n1.0,0\n2.0,0.5\n3.0,1\n")
    else:
        write_csv(path, data_set)
    with pytest.raises(DataError) as refused:
        load_data_module(project).read_data_file(str(tmp_path))
    assert str(refused.value) == f"the data file {path} {message}"


def test_a_missing_source_is_one_sentence_naming_it(project, tmp_path):
    data = load_data_module(project)
    data.SOURCE = str(tmp_path / "mine.csv")
    with pytest.raises(DataError) as refused:
        data.write_data_file(str(tmp_path / "data"))
    assert str(refused.value) == (
        f"the data set's source {data.SOURCE} is missing: set SOURCE in demo.data to your CSV file"
    )
    assert os.listdir(tmp_path) == []


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
