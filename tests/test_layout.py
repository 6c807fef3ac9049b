"""The framework's shape, kept: the Runner holds only hooks, modules stay small, and the
dependencies point down (only the command-line layer knows click and the CLI context)."""

import ast
import os

from conftest import REPO

PACKAGE = os.path.join(REPO, "torchexp")
COMMAND_LINE = ("cli.py", "__main__.py", "commands/")  # the only layer that may import click or the CLI context
MAX_MODULE_LINES = 400
MAX_RUNNER_LINES = 260  # its hooks and their docstrings: serve_schema and metric_directions took it past 250


def modules() -> list[str]:
    """Every module of the torchexp package, relative to it."""
    found = []
    for folder, _, names in os.walk(PACKAGE):
        found += [os.path.relpath(os.path.join(folder, name), PACKAGE) for name in names if name.endswith(".py")]
    return sorted(found)


def imported_modules(path: str) -> set[str]:
    """The modules a file imports, at any depth (lazy imports inside functions included),
    but those under `if TYPE_CHECKING:`, which never run."""
    with open(path, encoding="utf-8") as file:
        tree = ast.parse(file.read())
    typing_only = {
        id(inner) for node in ast.walk(tree) if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
        for statement in node.body for inner in ast.walk(statement)
    }  # fmt: skip
    found = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
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


def module_name(module: str) -> str:
    """"serving/server.py" as "torchexp.serving.server", a package's __init__.py as the package."""
    return "torchexp." + module.removesuffix(".py").removesuffix("/__init__").replace("/", ".")


def find_circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    circles = []

    def visit(name: str) -> None:
        index[name] = low[name] = len(index)
        stack.append(name)
        for other in graph[name]:
            if other not in index:
                visit(other)
                low[name] = min(low[name], low[other])
            elif other in stack:
                low[name] = min(low[name], index[other])
        if low[name] == index[name]:
            component = stack[stack.index(name) :]
            del stack[stack.index(name) :]
            if len(component) > 1:
                circles.append(sorted(component))

    for name in graph:
        if name not in index:
            visit(name)
    return circles


def import_graph() -> dict[str, set[str]]:
    """Which torchexp modules each torchexp module imports (packages' __init__ left out:
    `from torchexp import checkpoints` imports the module, and torchexp's __init__ is lazy)."""
    names = {module_name(module): module for module in modules() if not module.endswith("__init__.py")}
    return {name: imported_modules(os.path.join(PACKAGE, module)) & set(names) - {name} for name, module in names.items()}


def test_no_modules_import_each_other_in_a_circle():
    graph = import_graph()
    assert find_circles(graph) == []
    assert find_circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]  # the finder finds one


def test_nothing_below_the_command_line_imports_the_mlflow_mirror():
    graph = import_graph()
    below = [name for name in graph if not name.startswith(("torchexp.cli", "torchexp.commands", "torchexp.mirror", "torchexp.__main__"))]
    assert {name: sorted(graph[name]) for name in below if any(other.startswith("torchexp.mirror") for other in graph[name])} == {}
    assert "torchexp.mirror.target" in graph["torchexp.cli"]  # the graph sees what the command line imports


def test_no_module_is_over_400_lines():
    sizes = {}
    for module in modules():
        with open(os.path.join(PACKAGE, module), encoding="utf-8") as file:
            sizes[module] = len(file.readlines())
    assert {module: lines for module, lines in sizes.items() if lines > MAX_MODULE_LINES} == {}


def test_the_runner_is_its_hooks_in_at_most_260_lines():
    with open(os.path.join(PACKAGE, "runner.py"), encoding="utf-8") as file:
        text = file.read()
    assert len(text.splitlines()) <= MAX_RUNNER_LINES
    runner = next(node for node in ast.parse(text).body if isinstance(node, ast.ClassDef) and node.name == "Runner")
    methods = [node.name for node in runner.body if isinstance(node, ast.FunctionDef)]
    hooks = {
        "init_model", "init_optimizer", "init_others", "train_step", "validation_step", "test",
        "train_before_epoch_tasks", "train_after_epoch_tasks", "train_early_stopping", "train_iteration_log",
        "train_epoch_log", "save_states_others", "load_states_others",
        "serve_example", "serve_schema", "serve_preprocess", "serve_forward", "serve_postprocess", "serve_page",
    }  # fmt: skip
    deprecated = {"train", "run_test"}  # until torchexp 0.3 (CHANGELOG.md)
    assert set(methods) == hooks | deprecated | {"__init__", "get_conf"}
    documented = ast.get_docstring(runner)
    for hook in ("init_model", "train_before_epoch_tasks", "train_step", "validation_step", "train_epoch_log", "save_states_others", "train_early_stopping"):
        assert hook in documented, f"Runner's docstring does not place {hook} in the order of calls"
