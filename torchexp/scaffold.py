"""A new project from templates: what `torchexp create` writes.

The templates live in `torchexp/templates/project/` as real files with a `.tmpl` suffix
(so that pytest and linters leave them alone), filled with `string.Template`: `${name}`
is the package's name, `${prefix}` the prefix of its class names. A folder named
`PACKAGE` becomes the package's folder, and `PACKAGE` in a file name the package's name.
A template of one task names it before its extension (`PACKAGE/runner.regression.py.tmpl`):
only a project of that task gets it, as `runner.py`. The project is built in a temporary
folder beside the target and renamed into place, so a failure leaves nothing behind.
"""

import importlib.resources
import importlib.util
import keyword
import os
import shutil
import string
import sys
import tempfile
from typing import Any

from torchexp.errors import ConfigError, StorageError
from torchexp.files import current_umask
from torchexp.version import __version__

TEMPLATE_SUFFIX = ".tmpl"
PACKAGE_PLACEHOLDER = "PACKAGE"  # in template paths, the package's name
RENAMED = {"gitignore": ".gitignore"}  # hidden files are stored visible: package data globs skip them
# What a project predicts, with the words its shared templates use for it (`${summary}`,
# `${outputs}`, `${columns}`); the first is the default.
TASKS = {
    "classification": {"summary": "a classifier of points", "outputs": "classes", "columns": "the class, 0, 1, ..."},
    "regression": {
        "summary": "a model that predicts numbers from points (a regression)",
        "outputs": "targets",
        "columns": "the TARGETS numbers to predict",
    },
}


def check_project_name(name: str) -> None:
    """Raise ConfigError unless `name` can be the project's package: a Python identifier,
    not a keyword, and no module that Python already finds (torch, torchexp, json,
    test...), which the project's package would shadow or be shadowed by.
    """
    if not name.isidentifier():
        raise ConfigError(
            f"project name {name!r} is not a Python identifier: use letters, digits and '_', not starting with a digit"
        )
    if not name.isascii():
        raise ConfigError(
            f"project name {name!r} has letters outside ASCII, which a package name should not: choose another name"
        )
    if keyword.iskeyword(name) or keyword.issoftkeyword(name):
        raise ConfigError(f"project name {name!r} is a Python keyword: choose another name")
    if name == "tests":
        raise ConfigError("project name 'tests' is the name of the project's own tests folder: choose another name")
    if name in sys.stdlib_module_names or name in sys.builtin_module_names:
        raise ConfigError(
            f"project name {name!r} is the name of a module of Python's standard library: choose another name"
        )
    where: str | None
    try:
        found = importlib.util.find_spec(name)
        where = None if found is None else found.origin or "this environment"
    except (ImportError, ValueError):
        where = "this environment"
    if where is not None:
        raise ConfigError(f"project name {name!r} is taken by an installed module ({where}): choose another name")


def make_class_prefix(name: str) -> str:
    """Return the prefix of the project's class names: `digit_classifier` -> `DigitClassifier`."""
    return "".join(part[:1].upper() + part[1:] for part in name.split("_")) or "Project"


def list_templates(folder: Any, relative: str = "") -> list[tuple[str, Any]]:
    """Return (path relative to the project template, template) for every template file.

    Args:
        folder: an importlib.resources Traversable, which a zipped package has too.
        relative: the path of `folder` in the project template, ending with "/".
    """
    found = []
    for entry in sorted(folder.iterdir(), key=lambda entry: entry.name):
        path = f"{relative}{entry.name}"
        if entry.is_dir():
            found += list_templates(entry, f"{path}/")
        elif entry.name.endswith(TEMPLATE_SUFFIX):
            found.append((path, entry))
    return found


def find_template_task(template_path: str) -> str | None:
    """Return the task a template is written for (`x.regression.py.tmpl` -> regression), or
    None for a template of every task."""
    names = os.path.basename(template_path).split(".")[1:]
    return next((task for task in names if task in TASKS), None)


def make_target_path(template_path: str, name: str) -> str:
    """Return where a template's file goes in the project: `PACKAGE/x.py.tmpl` and
    `PACKAGE/x.TASK.py.tmpl` -> `NAME/x.py`."""
    parts = template_path[: -len(TEMPLATE_SUFFIX)].replace(PACKAGE_PLACEHOLDER, name).split("/")
    first, *others = parts[-1].split(".")
    parts[-1] = ".".join([first, *(other for other in others if other not in TASKS)])
    parts[-1] = RENAMED.get(parts[-1], parts[-1])
    return os.path.join(*parts)


def render_project(name: str, task: str = "classification") -> dict[str, str]:
    """Return the files of a project of `task`, path (relative to the project folder) to text."""
    values = {"name": name, "prefix": make_class_prefix(name), "torchexp_version": __version__, **TASKS[task]}
    templates = importlib.resources.files("torchexp") / "templates" / "project"
    return {
        make_target_path(path, name): string.Template(template.read_text(encoding="utf-8")).substitute(values)
        for path, template in list_templates(templates)
        if find_template_task(path) in (None, task)
    }


def create_project(name: str, folder: str = ".", task: str = "classification") -> tuple[str, list[str]]:
    """Write a new project `folder/name`, all or nothing.

    Args:
        name: the project's name, which is also its package's name.
        folder: an existing folder to create the project in.
        task: what the project predicts, one of `TASKS`: "classification" (a class and
            its probabilities) or "regression" (numbers).

    Returns:
        The project's path and the paths of its files, relative to it.

    Raises:
        ConfigError: the name or the task is not usable, `folder` is not a folder, or
            `folder/name` exists; nothing is written.
        StorageError: the project could not be written; nothing is left behind.
    """
    check_project_name(name)
    if task not in TASKS:
        raise ConfigError(f"task {task!r} is not one torchexp create writes: use {' or '.join(TASKS)}")
    target = os.path.join(folder, name)
    if not os.path.isdir(folder):
        kind = "a file, not a folder" if os.path.exists(folder) else "missing"
        raise ConfigError(f"folder {folder} is {kind}: pass --path an existing folder")
    if os.path.lexists(target):
        raise ConfigError(f"{target} already exists: choose another name or --path")
    files = render_project(name, task)
    try:
        staging = tempfile.mkdtemp(dir=folder, prefix=f".{name}.creating-")
    except OSError as error:
        raise StorageError(f"folder {folder} is not writable: {error.strerror or error}") from error
    try:
        os.chmod(staging, 0o777 & ~current_umask())
        write_files(staging, files)
        # rename() would silently replace an empty folder created since the check.
        if os.path.lexists(target):
            raise ConfigError(f"{target} already exists: choose another name or --path")
        os.rename(staging, target)
    except OSError as error:
        raise StorageError(f"project {target} could not be written: {error.strerror or error}") from error
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target, sorted(files)


def write_files(root: str, files: dict[str, str]) -> None:
    """Write `files` (relative path to text) under `root`, creating their folders."""
    for path, text in files.items():
        full = os.path.join(root, path)
        os.makedirs(os.path.dirname(full), exist_ok=True)
        with open(full, "w", encoding="utf-8") as file:
            file.write(text)
