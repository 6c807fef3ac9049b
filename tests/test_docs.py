"""The documentation: the site builds with --strict, every command line in it parses, and
the README stays an entry page.

The site is built once per test run (a few seconds, no network). --strict turns every
warning into a failure: a link to a missing page or anchor, a page left out of the
navigation, an API reference (`::: torchexp...`) or cross-reference that no longer
resolves. Without mkdocs the site tests are skipped saying why, unless
TORCHEXP_REQUIRE_DOCS=1, where that is a failure.
"""

import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys

import click
import pytest

from mnist_classifier.__main__ import cli
from torchexp.cli import main as torchexp_main
from torchexp.config import TRAINER_SCHEMA

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(REPO, "README.md")
DOCS = os.path.join(REPO, "docs")
README_MAX_LINES = 300
WORKPLACE_DATA = "../shared/datasets"  # this repository's machines' MNIST; users pass their own
# A command line of the docs: the project's (also under torchrun) or the torchexp script's.
COMMAND = re.compile(r"(?:python -m |torchrun .*?-m )mnist_classifier\b(?P<project>.*)|^torchexp (?P<torchexp>.*)")

# The API reference must document these, at paths that do not move.
REFERENCE_IDS = [
    "torchexp.data.Data",
    "torchexp.runner.Runner",
    "torchexp.runner.Runner.train_step",
    "torchexp.runner.Runner.serve_page",
    "torchexp.loop.train",
    "torchexp.metrics.Stop",
    "torchexp.checkpoints.Checkpoint",
    "torchexp.experiments.Experiments",
    "torchexp.experiments.ExperimentView",
    "torchexp.experiments.ExperimentView.best",
    "torchexp.predictor.load_predictor",
    "torchexp.predictor.Predictor",
    "torchexp.config.Config",
    "torchexp.config.build_config",
    "torchexp.config.load_schema",
    "torchexp.loaders.TensorLoader",
    "torchexp.loaders.SeededDataLoader",
    "torchexp.errors.TorchexpError",
    "torchexp.cli.make_cli",
    "torchexp.commands.context.App",
    "torchexp.commands.context.pass_app",
    "torchexp.project.Project",
]


def require_mkdocs() -> None:
    """Skip (or, under TORCHEXP_REQUIRE_DOCS=1, fail) when the [docs] extra is missing."""
    missing = [name for name in ("mkdocs", "material", "mkdocstrings_handlers.python") if not find_module(name)]
    if not missing:
        return
    reason = f"{', '.join(missing)} not installed: pip install -e '.[docs]' to build the documentation"
    if os.environ.get("TORCHEXP_REQUIRE_DOCS") == "1":
        pytest.fail(f"{reason}, and TORCHEXP_REQUIRE_DOCS=1 requires the documentation test to run")
    pytest.skip(reason)


def find_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:  # a parent package is missing
        return False


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> str:
    """Build the site with --strict into a temporary folder, with torch made unimportable:
    the API reference is read from the source, and the build must not need torch."""
    require_mkdocs()
    root = tmp_path_factory.mktemp("docs")
    blocker = root / "no_torch" / "torch"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text('raise ImportError("building the documentation must not import torch")\n')
    site_dir = root / "site"
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(blocker.parent), env.get("PYTHONPATH")]))
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site_dir)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{result.stdout}{result.stderr}"
    return str(site_dir)


def read(path: str) -> str:
    with open(path, encoding="utf-8") as file:
        return file.read()


def page_ids(site: str, page: str) -> set[str]:
    """The element ids of a built page (`reference.md` -> site/reference/index.html)."""
    name = os.path.splitext(page)[0]
    html = os.path.join(site, "index.html" if name == "index" else os.path.join(name, "index.html"))
    return set(re.findall(r'id="([^"]+)"', read(html)))


def test_site_builds_with_strict(site):
    for page in sorted(os.listdir(DOCS)):
        if page.endswith(".md"):
            assert page_ids(site, page), f"{page} was not built"


def test_api_reference_documents_the_public_api(site):
    ids = page_ids(site, "reference.md")
    missing = [name for name in REFERENCE_IDS if name not in ids]
    assert not missing, f"the API reference lacks {missing}"


def test_readme_links_reach_pages_and_anchors(site):
    links = re.findall(r"\]\((?!https?://)([^)#\s]+)(?:#([^)\s]+))?\)", read(README))
    assert links, "the README links into the documentation"
    for target, anchor in links:
        assert os.path.exists(os.path.join(REPO, target)), f"README links to {target}, which does not exist"
        if anchor and target.startswith("docs/") and target.endswith(".md"):
            assert anchor in page_ids(site, target[len("docs/") :]), f"README links to {target}#{anchor}, which has no such anchor"


def test_readme_is_an_entry_page():
    text = read(README)
    lines = text.splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines, more than {README_MAX_LINES}: move the rest into docs/"
    first_block = re.search(r"^```[^\n]*\n(.*?)^```", text, re.S | re.M)
    assert first_block, "README.md has no command block"
    commands = [line.split("#")[0].strip() for line in first_block.group(1).splitlines()]
    assert commands == ["make main", "make test"], f"README.md's first commands are {commands}, not make main and make test"
    first_section = text.find("\n## ")
    assert first_section == -1 or first_block.start() < first_section, "the two commands come before the README's sections"


def test_trainer_options_are_documented_with_their_defaults():
    page = read(os.path.join(DOCS, "configuration.md"))
    for key, option in TRAINER_SCHEMA["properties"].items():
        row = f"| `trainer.{key}` | `{json.dumps(option['default'])}` |"
        assert row in page, f"docs/configuration.md lacks the row of trainer.{key} with its default: {row}"


def test_only_the_development_page_names_the_workplace_data():
    for page in sorted(os.listdir(DOCS)):
        if page.endswith(".md") and page != "development.md":
            assert WORKPLACE_DATA not in read(os.path.join(DOCS, page)), f"docs/{page} names {WORKPLACE_DATA}: write /path/to/datasets"
    for line in read(README).splitlines():
        assert WORKPLACE_DATA not in line or "DATA" in line, f"README.md names {WORKPLACE_DATA} outside the make variable: {line}"


def test_command_examples_match_the_command_line():
    """Every `python -m mnist_classifier ...`, `torchrun ... -m mnist_classifier ...` and
    `torchexp ...` line of the README and docs parses: its commands and options exist and
    their values are valid (nothing is run)."""
    checked = 0
    for path in [README, *sorted(os.path.join(DOCS, page) for page in os.listdir(DOCS) if page.endswith(".md"))]:
        for line in command_lines(read(path)):
            found = COMMAND.search(line.removeprefix("$ "))
            if not found or "..." in line or "--help" in line:
                continue
            group, name = (cli, "mnist_classifier") if found["project"] is not None else (torchexp_main, "torchexp")
            args = (found["project"] if found["project"] is not None else found["torchexp"]).split(" #")[0].split(" > ")[0]
            try:
                parse_command(group, name, shlex.split(args))
            except click.ClickException as error:
                pytest.fail(f"{os.path.relpath(path, REPO)}: {line}\n  {error.format_message()}")
            checked += 1
    assert checked > 50, f"only {checked} command lines found in the documentation"



def command_lines(text: str) -> list[str]:
    """The lines of a Markdown text's code blocks, continuation lines (`\\`) joined."""
    lines, joined = [], ""
    for block in re.findall(r"^```[^\n]*\n(.*?)^```", text, re.S | re.M):
        for line in block.splitlines():
            joined += line.rstrip()
            if joined.endswith("\\"):
                joined = joined[:-1] + " "
                continue
            lines.append(joined.strip())
            joined = ""
    return lines


def parse_command(group: click.Group, name: str, args: list[str]) -> None:
    """Parse a command line as click would run it, without running it.

    Raises:
        click.ClickException: an unknown command or option, or an invalid value.
    """
    context = group.make_context(name, args)
    # click 8.2 renamed protected_args (deprecated since) to _protected_args: the command's name.
    protected = getattr(context, "_protected_args", None)
    protected = context.protected_args if protected is None else protected
    command_name, command, rest = group.resolve_command(context, [*protected, *context.args])
    command.make_context(command_name, rest, parent=context)
