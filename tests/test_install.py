"""The lean install: the wheel of torchexp, installed without extras, trains, and every
command that needs an extra says which one in one sentence.

The wheel is built from this checkout and installed into a fresh virtual environment that
sees only the core packages (torch, torchvision, tensorboard, jsonschema, click, tqdm,
numpy, filelock) and what they need: they are linked from this environment into a folder its `.pth`
names, so that nothing is downloaded and optuna, FastAPI, onnx and matplotlib stay out of
reach. pip then installs the wheel with no index: were a service package among the wheel's
requirements, it could not be found and the install would fail.
"""

import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import sysconfig

import pytest
from packaging.requirements import Requirement

from conftest import CONFIG, REPO, SCHEMA, write_mnist

CORE = ("torch", "torchvision", "tensorboard", "jsonschema", "click", "tqdm", "numpy", "filelock")
EXTRA_SENTENCES = {
    ("search", "--space", "space.json", "--trials", "1"): "search needs optuna, which is not installed: pip install 'torchexp[search]'",
    ("serve",): "serve needs fastapi, which is not installed: pip install 'torchexp[serve]'",
    ("export", "--format", "onnx"): "export needs onnx, which is not installed: pip install 'torchexp[export]'",
    ("compare", "--plot", "curves.png"): "compare --plot needs matplotlib, which is not installed: pip install 'torchexp[plots]'",
}


def closure(names: tuple[str, ...]) -> list[importlib.metadata.Distribution]:
    """The installed distributions of `names` and of everything they require, with the
    extras each requirement asks for (torch's `cuda-toolkit[cublas,...]`) and no others."""
    found: dict[str, importlib.metadata.Distribution] = {}
    followed: set[tuple[str, str]] = set()
    pending = [(name, "") for name in names]
    while pending:
        name, extra = pending.pop()
        key = re.sub(r"[-_.]+", "-", name).lower()
        if (key, extra) in followed:
            continue
        followed.add((key, extra))
        try:
            distribution = found.get(key) or importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            continue  # a requirement for another platform or Python
        found[key] = distribution
        for text in distribution.requires or []:
            requirement = Requirement(text)
            if requirement.marker is None or requirement.marker.evaluate({"extra": extra}):
                pending += [(requirement.name, wanted) for wanted in ("", *requirement.extras)]
    return list(found.values())


def link_core_packages(folder: str) -> None:
    """Link every top-level file and folder of the core packages' closure into `folder`."""
    site = sysconfig.get_paths()["purelib"]
    os.makedirs(folder)
    for distribution in closure(CORE):
        tops = {str(path).split("/")[0] for path in distribution.files or []}
        for top in tops - {"..", ""}:
            source, target = os.path.join(site, top), os.path.join(folder, top)
            if os.path.exists(source) and not os.path.lexists(target):
                os.symlink(source, target)


def run(command: list[str], cwd: str) -> subprocess.CompletedProcess:
    """Run a command in `cwd`, a folder outside the checkout: from the checkout, Python
    would import its torchexp instead of the installed one."""
    return subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=cwd)


@pytest.fixture(scope="module")
def lean(tmp_path_factory) -> str:
    """The python of a fresh environment with the torchexp wheel and the core packages only."""
    root = tmp_path_factory.mktemp("lean")
    source = root / "source"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(".venv", ".git", "experiments", "data", "build", "*.egg-info", "tests", "docs"))
    built = run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--wheel-dir", str(root / "dist"), str(source)], root)
    assert built.returncode == 0, built.stderr
    # Without pip (and the old setuptools it brings): this environment's pip installs into it.
    run([sys.executable, "-m", "venv", "--without-pip", str(root / "venv")], root).check_returncode()
    python = str(root / "venv" / "bin" / "python")
    venv_site = run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], root).stdout.strip()
    link_core_packages(str(root / "core"))
    with open(os.path.join(venv_site, "core.pth"), "w") as file:
        file.write(str(root / "core") + "\n")
    installed = run([sys.executable, "-m", "pip", "--python", python, "install", "--no-index", "--find-links", str(root / "dist"), "torchexp"], root)
    assert installed.returncode == 0, installed.stdout + installed.stderr
    return python


def test_the_wheel_requires_only_the_core_and_keeps_the_services_out_of_reach(lean, tmp_path):
    requires = run([lean, "-c", "import importlib.metadata as m; print('\\n'.join(m.requires('torchexp')))"], tmp_path).stdout.splitlines()
    assert sorted(Requirement(text).name for text in requires if "extra ==" not in text) == sorted(CORE)
    missing = run([lean, "-c", "import importlib.util as u; print([m for m in ('optuna', 'fastapi', 'onnx', 'matplotlib', 'mlflow') if u.find_spec(m)])"], tmp_path)
    assert missing.stdout.strip() == "[]"


def test_it_trains_and_tests_the_mnist_classifier_without_extras(lean, tmp_path):
    data = write_mnist(str(tmp_path / "data"))
    base = [lean, "-m", "mnist_classifier", "--experiments-path", str(tmp_path / "experiments"), "--data-path", data, "--experiment-name", "x"]
    settings = ["--set", "model.name=mlp", "--set", "data.batch_size=16", "--set", "trainer.max_epochs=1"]
    for command in (["init", "--config-path", CONFIG, "--schema-path", SCHEMA, *settings], ["train", "--device", "cpu"], ["test", "--device", "cpu"]):
        done = run([*base, *command], tmp_path)
        assert done.returncode == 0, done.stderr
    assert os.path.isfile(tmp_path / "experiments" / "x" / "results" / "1.standard.test.json")


@pytest.mark.parametrize("arguments", list(EXTRA_SENTENCES), ids=lambda arguments: arguments[0])
def test_a_command_whose_extra_is_missing_says_which_to_install_and_its_help_works(lean, tmp_path, arguments):
    base = [lean, "-m", "mnist_classifier", "--experiments-path", str(tmp_path), "--experiment-name", "x"]
    helped = run([*base, arguments[0], "--help"], tmp_path)
    assert helped.returncode == 0 and "Usage:" in helped.stdout, helped.stderr
    done = run([*base, *arguments], tmp_path)
    assert done.returncode == 10
    assert done.stderr.strip() == f"Error: {EXTRA_SENTENCES[arguments]}"


def test_a_predictor_without_the_serve_extra_says_which_to_install(lean, tmp_path):
    script = "import torchexp\ntry:\n    torchexp.Predictor\nexcept torchexp.TorchexpError as error:\n    print(type(error).__name__, error)"
    done = run([lean, "-c", script], tmp_path)
    expected = "torchexp.Predictor needs orjson, which is not installed: pip install 'torchexp[serve]'"
    assert done.stdout.strip() == f"MissingExtraError {expected}", done.stderr


def test_tracking_without_mlflow_says_which_extra_to_install(lean, tmp_path):
    base = [lean, "-m", "mnist_classifier", "--experiments-path", str(tmp_path), "--mlflow-uri", "http://127.0.0.1:5000"]
    done = run([*base, "sync"], tmp_path)
    assert done.returncode == 10
    expected = "mirroring to MLflow (--mlflow-uri or MLFLOW_TRACKING_URI) needs mlflow, which is not installed: pip install 'torchexp[mlflow]'"
    assert done.stderr.strip() == f"Error: {expected}"
