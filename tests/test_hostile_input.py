"""Hostile input: every bad name, file, option or path is one clean error that changes nothing.

A clean error is an exit code other than 0, an `Error:` sentence and no traceback; the
experiments folder (and everything else under the test's root) is left byte for byte as
it was. A property-based test feeds `init` random and nearly valid configurations.
"""

import copy
import itertools
import json
import os
import socket
import urllib.request
from typing import Callable

import pytest
from click.testing import CliRunner, Result
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from conftest import CONFIG, SCHEMA, snapshot, write_mnist
from mnist_classifier.__main__ import cli
from torchexp.config import TRAINER_SCHEMA


def invoke(root: str, *args: str, name: str | None = "x", data: str | None = None):
    base = ["--experiments-path", os.path.join(root, "experiments"), "--data-path", data or os.path.join(root, "data")]
    if name is not None:
        base += ["--experiment-name", name]
    return CliRunner().invoke(cli, [*base, *args], catch_exceptions=True)


def assert_clean_error(result, *fragments: str) -> None:
    assert result.exit_code not in (0, None), result.output
    assert isinstance(result.exception, SystemExit), f"{result.exception!r}\n{result.output}"
    assert "Error: " in result.output and "Traceback" not in result.output, result.output
    for fragment in fragments:
        assert fragment in result.output, result.output


INIT = ("init", "--config-path", CONFIG, "--schema-path", SCHEMA, "--set", "model.name=mlp", "--set", "data.batch_size=16")


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> str:
    """Tiny data and an experiment `x` trained one epoch."""
    root = str(tmp_path_factory.mktemp("hostile"))
    write_mnist(os.path.join(root, "data"))
    assert invoke(root, *INIT).exit_code == 0
    result = invoke(root, "train", "--max-epochs", "1", "--device", "cpu")
    assert result.exit_code == 0, result.output
    return root


@pytest.fixture
def unchanged(root):
    """Assert the test left everything under the root as it found it."""
    before = snapshot(root)
    yield root
    assert snapshot(root) == before


# Experiment names ----------------------------------------------------------------------

BAD_NAMES = {
    "parent": ("../x", "is not allowed"),
    "grandparent": ("../../escape", "is not allowed"),
    "nested": ("x/../../y", "is not allowed"),
    "absolute": ("/tmp/torchexp-absolute-name", "is not allowed"),
    "empty": ("", "no experiment name given"),
    "dot": (".", "is not allowed"),
    "dot-dot": ("..", "is not allowed"),
    "hidden": (".x", "is not allowed"),
    "dash": ("-x", "is not allowed"),
    "very long": ("a" * 300, "300 characters long, more than the 128 allowed"),
    "newline": ("x\n", "is not allowed"),
    "tab": ("x\ty", "is not allowed"),
    "nul": ("x\x00y", "is not allowed"),
    "escape sequence": ("x\x1b[2J", "is not allowed"),
    "backslash": ("..\\x", "is not allowed"),
    "space": ("x y", "is not allowed"),
    "unicode digits": ("x\u0663", "is not allowed"),
}
NAMED_COMMANDS = {
    "init": INIT,
    "info": ("info",),
    "train": ("train", "--max-epochs", "2", "--device", "cpu"),
    "test": ("test", "--epoch", "1", "--device", "cpu"),
    "create_release": ("create_release", "--epoch", "1"),
}


@pytest.mark.parametrize("command", NAMED_COMMANDS)
@pytest.mark.parametrize("case", BAD_NAMES)
def test_names_escaping_the_experiments_folder_are_refused(unchanged, case, command):
    name, message = BAD_NAMES[case]
    assert_clean_error(invoke(unchanged, *NAMED_COMMANDS[command], name=name), message)
    assert not os.path.exists("/tmp/torchexp-absolute-name")


def test_no_name_at_all_is_refused(unchanged):
    for args in NAMED_COMMANDS.values():
        assert_clean_error(invoke(unchanged, *args, name=None), "no experiment name given: pass --experiment-name NAME")


# Configuration and schema files --------------------------------------------------------

BAD_CONFIGS = {
    "not JSON": (b'{"data": {"batch_size": 16,}}', "is not valid JSON"),
    "empty file": (b"", "is not valid JSON"),
    "binary": (b"\xff\xfe\x00\x01\x80", "is not valid JSON"),
    "a list": (b"[]", "must hold a JSON object, not list"),
    "a number": (b"42", "must hold a JSON object, not int"),
    "a string": (b'"config"', "must hold a JSON object, not str"),
    "null": (b"null", "must hold a JSON object, not NoneType"),
    "huge": (b'{"data": {"x": "' + b"a" * 2_000_000 + b'"}}', "more than the 1048576 allowed"),
    "deeply nested list": (b"[" * 100_000 + b"]" * 100_000, "is nested too deeply to read"),
    "deeply nested object": (b'{"a": ' * 50_000 + b"1" + b"}" * 50_000, "is nested too deeply to read"),
    "string for an integer": (b'{"data": {"batch_size": "16"}}', "data.batch_size: '16' is not of type 'integer'"),
    "float for an integer": (b'{"data": {"batch_size": 16.5}}', "data.batch_size: 16.5 is not of type 'integer'"),
    "boolean for a number": (b'{"training": {"lr": true}}', "training.lr: True is not of type 'number'"),
    "list for a section": (b'{"training": [1, 2]}', "training: [1, 2] is not of type 'object'"),
    "zero batch": (b'{"data": {"batch_size": 0}}', "data.batch_size: 0 is less than the minimum of 1"),
    "unknown model": (b'{"model": {"name": "resnet"}}', "model.name: 'resnet' is not one of"),
    "unknown key": (b'{"data": {"batch_sise": 16}}', "data: Additional properties are not allowed ('batch_sise' was unexpected)"),
    "unknown section": (b'{"optimiser": {}}', "(top level): Additional properties are not allowed ('optimiser' was unexpected)"),
    "NaN": (b'{"data": {"val_split": NaN}}', "data.val_split: nan is not a finite number"),
    "Infinity": (b'{"training": {"lr": Infinity}}', "training.lr: inf is not a finite number"),
    "overflowing float": (b'{"training": {"lr": 1e999}}', "training.lr: inf is not a finite number"),
    "huge integer": (b'{"data": {"batch_size": ' + b"9" * 5000 + b"}}", "is not valid JSON"),
    "trainer option of the wrong type": (b'{"trainer": {"grad_accumulation": "2"}}', "trainer.grad_accumulation: '2' is not of type 'integer'"),
}


def init_with_file(experiments: str, content: bytes, options: Callable[[str], list[str]]) -> Result:
    """`init` of experiment "new" with `options(path)`, `content` written at path for the run only."""
    path = os.path.join(os.path.dirname(experiments), "init-file.json")
    with open(path, "wb") as file:
        file.write(content)
    try:
        return invoke(experiments, "init", *options(path), name="new")
    finally:
        os.remove(path)


@pytest.mark.parametrize("case", BAD_CONFIGS)
def test_bad_config_files_are_refused(unchanged, case):
    content, message = BAD_CONFIGS[case]
    result = init_with_file(unchanged, content, lambda path: ["--config-path", path, "--schema-path", SCHEMA])
    assert_clean_error(result, message)
    assert result.exit_code == 2


@pytest.mark.parametrize(
    "option, message",
    [("--config-path", "config file"), ("--schema-path", "schema file")],
)
def test_config_and_schema_paths_that_are_folders_or_missing_are_refused(unchanged, option, message):
    for path, kind in ((unchanged, "is a folder, not a file"), (os.path.join(unchanged, "missing.json"), "is missing")):
        args = {"--config-path": CONFIG, "--schema-path": SCHEMA, option: path}
        result = invoke(unchanged, "init", *itertools.chain(*args.items()), name="new")
        assert_clean_error(result, f"{message} {path} {kind}")


REMOTE = (
    "Error: the config schema's $ref '{ref}' is not in the schema: torchexp fetches no schema from files or the network; "
    "copy what it refers to under $defs\n"
)
BAD_SCHEMAS = {
    "not JSON": (b"{", "is not valid JSON"),
    "a list": (b"[]", "must hold a JSON object"),
    "bad type keyword": (b'{"type": 12}', "is not a valid JSON schema"),
    "properties not an object": (b'{"properties": []}', "is not a valid JSON schema"),
    "bad regex": (b'{"properties": {"data": {"pattern": "("}}}', "is not a valid JSON schema"),
    "deeply nested": (b'{"not": ' * 50_000 + b"{}" + b"}" * 50_000, "is nested too deeply to read"),
    "local reference to nowhere": (b'{"$ref": "#/$defs/missing"}', "Error: the config schema's $ref '#/$defs/missing' points to nothing in the schema\n"),
    "anchor to nowhere": (b'{"$ref": "#missing"}', "Error: the config schema's $ref '#missing' points to nothing in the schema\n"),
    "remote reference": (b'{"$ref": "https://example.com/schema.json"}', REMOTE.format(ref="https://example.com/schema.json")),
    "file reference": (b'{"$ref": "file:///etc/hostname"}', REMOTE.format(ref="file:///etc/hostname")),
    "relative reference": (b'{"properties": {"data": {"$ref": "data.json"}}}', REMOTE.format(ref="data.json")),
}
@pytest.mark.parametrize("case", BAD_SCHEMAS)
def test_invalid_schema_files_are_refused(unchanged, case):
    content, message = BAD_SCHEMAS[case]
    path = os.path.join(os.path.dirname(unchanged), f"schema-{abs(hash(case))}.json")
    with open(path, "wb") as file:
        file.write(content)
    try:
        result = invoke(unchanged, "init", "--config-path", CONFIG, "--schema-path", path, name="new")
    finally:
        os.remove(path)
    assert_clean_error(result, message)


@pytest.fixture
def connections(monkeypatch) -> list:
    """Every connection attempted through urllib (jsonschema's way to a remote $ref) or a
    socket, each refused: the list stays empty when nothing reaches for the network."""
    attempted = []

    def refuse(*args, **kwargs):
        attempted.append(args[0] if args else kwargs)
        raise OSError("the tests reach no network")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", lambda self, *args: refuse(*args))
    return attempted


@pytest.mark.parametrize("case", ["remote reference", "file reference", "relative reference"])
def test_references_outside_the_schema_are_refused_without_being_fetched(unchanged, connections, case):
    content, message = BAD_SCHEMAS[case]
    result = init_with_file(unchanged, content, lambda path: ["--config-path", CONFIG, "--schema-path", path])
    assert connections == []
    assert_clean_error(result, message)
    assert result.output == message and result.exit_code == 2


def test_an_integral_float_for_an_integer_trains_or_is_refused_at_init(tmp_path):
    write_mnist(str(tmp_path / "data"))
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"data": {"batch_size": 16.0}, "model": {"name": "mlp"}}))
    result = invoke(str(tmp_path), "init", "--config-path", str(config), "--schema-path", SCHEMA)
    if result.exit_code != 0:
        return assert_clean_error(result, "data.batch_size")
    result = invoke(str(tmp_path), "train", "--max-epochs", "1", "--device", "cpu")
    assert result.exit_code == 0, f"{result.exception!r}\n{result.output}"


# Options and paths ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "args, message",
    [
        (("train", "--epoch", "-1"), "Invalid value for '--epoch': -1 is not in the range x>=1"),
        (("train", "--epoch", "0"), "Invalid value for '--epoch'"),
        (("train", "--epoch", "one"), "'one' is not a valid integer"),
        (("train", "--epoch"), "Option '--epoch' requires an argument"),
        (("train", "--epoch", "9"), "epoch 9 has no standard checkpoint"),
        (("train", "--epoch", "99999999999999999999999"), "epoch 99999999999999999999999 has no standard checkpoint"),
        (("train", "--max-epochs", "0"), "Invalid value for '--max-epochs'"),
        (("train", "--log-period", "-5"), "Invalid value for '--log-period'"),
        (("train", "--num-workers", "-1"), "Invalid value for '--num-workers'"),
        (("test", "--epoch", "-3"), "Invalid value for '--epoch'"),
        (("test", "--epoch", "9"), "epoch 9 has no standard or release checkpoint"),
        (("create_release", "--epoch", "-1"), "Invalid value for '--epoch'"),
        (("create_release", "--epoch", "9"), "epoch 9 has no standard checkpoint"),
        (("init", "--seed", "-1"), "Invalid value for '--seed'"),
        (("init", "--seed", str(2**64)), "Invalid value for '--seed'"),
        (("train", "--device", "cuda:0; rm -rf /"), "is not valid"),
    ],
)
def test_bad_options_are_refused(unchanged, args, message):
    assert_clean_error(invoke(unchanged, *args, name="new" if args[0] == "init" else "x"), message)


@pytest.mark.parametrize("command", ["init", "train", "test"])
def test_a_data_path_that_is_a_file_is_refused(unchanged, command):
    data_file = os.path.join(unchanged, "data", "MNIST", "raw", "train-labels-idx1-ubyte")
    args = {"init": INIT, "train": ("train", "--max-epochs", "2", "--device", "cpu"), "test": ("test", "--epoch", "1", "--device", "cpu")}
    result = invoke(unchanged, *args[command], name="new" if command == "init" else "x", data=data_file)
    assert_clean_error(result, f"data path {data_file} is a file, not a folder")


def test_an_experiments_path_that_is_a_file_is_refused(tmp_path):
    write_mnist(str(tmp_path / "data"))
    (tmp_path / "experiments").write_text("not a folder")
    before = snapshot(str(tmp_path))
    assert_clean_error(invoke(str(tmp_path), *INIT), "is a file, not a folder")
    assert_clean_error(invoke(str(tmp_path), "train"), "does not exist")
    assert snapshot(str(tmp_path)) == before


# Random configurations -----------------------------------------------------------------

with open(CONFIG) as file:
    DEFAULT_CONFIG = json.load(file)
DEFAULT_CONFIG["trainer"] = {key: value["default"] for key, value in TRAINER_SCHEMA["properties"].items()}

json_leaves = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats()  # NaN and infinities included: json.dumps writes them as NaN and Infinity
    | st.text(max_size=12)
)
json_values = st.recursive(
    json_leaves, lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4), max_leaves=10
)
# Values a person might plausibly type, each wrong or right depending on the key.
plausible = st.sampled_from([0, 1, -1, 2, 16, 0.0, 0.5, 1.0, 1.5, -0.5, 1e-9, 1e308, True, False, None, "", "16", "cnn", "mlp", "adam", "sgd", "step", "onecycle", "none", "fp16", "bf16", [], {}])


@st.composite
def near_valid_configs(draw) -> dict:
    """The default configuration with one to three keys or sections changed, removed or added."""
    conf = copy.deepcopy(DEFAULT_CONFIG)
    for _ in range(draw(st.integers(1, 3))):
        section = draw(st.sampled_from([*conf, "extra"]))
        operation = draw(st.sampled_from(["set", "set", "set", "delete", "replace section", "add key"]))
        node = conf.get(section)
        if operation == "replace section" or not isinstance(node, dict):
            conf[section] = draw(json_values | plausible)
        elif operation == "delete" and node:
            del node[draw(st.sampled_from(sorted(node)))]
        elif operation == "add key":
            node[draw(st.text(min_size=1, max_size=8))] = draw(plausible)
        elif node:
            node[draw(st.sampled_from(sorted(node)))] = draw(plausible | json_values)
    return conf


configs = st.one_of(
    json_values,
    st.dictionaries(st.sampled_from(["data", "model", "training", "trainer"]) | st.text(max_size=8), json_values, max_size=4),
    near_valid_configs(),
    near_valid_configs(),
)
COUNTER = itertools.count()


@pytest.fixture(scope="module")
def fuzz_root(tmp_path_factory) -> str:
    root = str(tmp_path_factory.mktemp("fuzz"))
    write_mnist(os.path.join(root, "data"))
    os.mkdir(os.path.join(root, "experiments"))
    return root


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@example(conf=DEFAULT_CONFIG)
@example(conf={**DEFAULT_CONFIG, "data": {**DEFAULT_CONFIG["data"], "val_split": 0.999}})
@given(conf=configs)
def test_init_with_random_configs_succeeds_or_fails_cleanly(fuzz_root, conf):
    name = f"fuzz{next(COUNTER)}"
    path = os.path.join(fuzz_root, "config.json")
    with open(path, "w") as file:
        json.dump(conf, file)
    experiments = os.path.join(fuzz_root, "experiments")
    before = set(os.listdir(experiments))
    result = invoke(fuzz_root, "init", "--config-path", path, "--schema-path", SCHEMA, name=name)
    event("created" if result.exit_code == 0 else "refused")
    if result.exit_code == 0:
        assert set(os.listdir(experiments)) == before | {name}
        info = invoke(fuzz_root, "info", name=name)
        assert info.exit_code == 0, info.output
    else:
        assert_clean_error(result)
        assert set(os.listdir(experiments)) == before, "a failed init left something behind"
