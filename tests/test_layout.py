"""The framework's shape, kept: the Runner holds only hooks, modules stay small, and the
dependencies point down (only the command-line layer knows click and the CLI context)."""

import ast
import os

from conftest import REPO

PACKAGE = os.path.join(REPO, "torchexp")
COMMAND_LINE = ("cli.py", "__main__.py", "commands/")  # the only layer that may import click or the CLI context
MAX_MODULE_LINES = 400
MAX_RUNNER_LINES = 250


def modules() -> list[str]:
    """Every module of the torchexp package, relative to it."""
    found = []
    for folder, _, names in os.walk(PACKAGE):
        found += [os.path.relpath(os.path.join(folder, name), PACKAGE) for name in names if name.endswith(".py")]
    return sorted(found)


def imported_modules(path: str) -> set[str]:
    """The modules a file imports, at any depth (lazy imports inside functions included)."""
    with open(path, encoding="utf-8") as file:
        tree = ast.parse(file.read())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found |= {node.module, *(f"{node.module}.{alias.name}" for alias in node.names)}
    return found


def test_only_the_command_line_layer_imports_click_or_the_cli():
    found = {}
    for module in modules():
        if not module.startswith(COMMAND_LINE):
            imported = imported_modules(os.path.join(PACKAGE, module))
            found[module] = sorted(name for name in imported if name == "click" or name.startswith(("click.", "torchexp.cli", "torchexp.commands")))
    assert {module: names for module, names in found.items() if names} == {}
    assert len(found) > 40  # every library module was read


def test_no_module_is_over_400_lines():
    sizes = {}
    for module in modules():
        with open(os.path.join(PACKAGE, module), encoding="utf-8") as file:
            sizes[module] = len(file.readlines())
    assert {module: lines for module, lines in sizes.items() if lines > MAX_MODULE_LINES} == {}


def test_the_runner_is_its_hooks_in_at_most_250_lines():
    with open(os.path.join(PACKAGE, "runner.py"), encoding="utf-8") as file:
        text = file.read()
    assert len(text.splitlines()) <= MAX_RUNNER_LINES
    runner = next(node for node in ast.parse(text).body if isinstance(node, ast.ClassDef) and node.name == "Runner")
    methods = [node.name for node in runner.body if isinstance(node, ast.FunctionDef)]
    hooks = {
        "init_model", "init_optimizer", "init_others", "train_step", "validation_step", "test",
        "train_before_epoch_tasks", "train_after_epoch_tasks", "train_early_stopping", "train_iteration_log",
        "train_epoch_log", "save_states_others", "load_states_others",
        "serve_example", "serve_preprocess", "serve_forward", "serve_postprocess", "serve_page",
    }  # fmt: skip
    deprecated = {"train", "run_test"}  # until torchexp 0.3 (CHANGELOG.md)
    assert set(methods) == hooks | deprecated | {"__init__", "get_conf"}
    documented = ast.get_docstring(runner)
    for hook in ("init_model", "train_before_epoch_tasks", "train_step", "validation_step", "train_epoch_log", "save_states_others", "train_early_stopping"):
        assert hook in documented, f"Runner's docstring does not place {hook} in the order of calls"


def find_import_circles(prefixes: tuple[str, ...]) -> list[list[str]]:
    """Return the import circles among the torchexp modules whose dotted names start with
    one of `prefixes`: imports inside functions count, those under `if TYPE_CHECKING:` do not."""
    names = {module_name(module): module for module in modules()}
    chosen = {name for name in names if name.startswith(prefixes)}
    graph = {name: sorted(runtime_imports(os.path.join(PACKAGE, names[name])) & chosen - {name}) for name in chosen}
    circles, done = [], set()

    def visit(name: str, path: list[str]) -> None:
        for imported in graph[name]:
            if imported in path:
                circles.append(path[path.index(imported):] + [imported])
            elif imported not in done:
                visit(imported, path + [imported])
        done.add(name)

    for name in sorted(chosen):
        if name not in done:
            visit(name, [name])
    return circles


def module_name(module: str) -> str:
    """torchexp's dotted name of a module path relative to the package, e.g. serving/server.py."""
    parts = ["torchexp", *module[: -len(".py")].split(os.sep)]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def runtime_imports(path: str) -> set[str]:
    """The modules a file imports when it runs: every import at any depth, less those in
    `if TYPE_CHECKING:` blocks."""
    with open(path, encoding="utf-8") as file:
        tree = ast.parse(file.read())
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            node.body = []
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found |= {node.module, *(f"{node.module}.{alias.name}" for alias in node.names)}
    return found


def test_serving_export_and_formats_import_no_module_back():
    prefixes = ("torchexp.serving", "torchexp.export", "torchexp.formats")
    assert find_import_circles(prefixes) == []
    assert {"torchexp.serving.launcher", "torchexp.formats.aoti"} <= {module_name(module) for module in modules()}
