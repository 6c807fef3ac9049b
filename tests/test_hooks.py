"""A project's failing hook in one sentence that names it; the inference contract of Data."""

import json
import os

import pytest
from click.testing import CliRunner

import torchexp
from torchexp.cli import make_cli

SCHEMA = {"type": "object", "properties": {"training": {"type": "object", "default": {}, "properties": {"lr": {"type": "number", "default": 0.5}}}}}


@pytest.fixture
def folder(tmp_path) -> str:
    with open(tmp_path / "schema.json", "w") as file:
        json.dump(SCHEMA, file)
    with open(tmp_path / "config.json", "w") as file:
        json.dump({"trainer": {"max_epochs": 2}}, file)
    os.makedirs(tmp_path / "data")
    return str(tmp_path)


def run(folder: str, data: str, runner: str, *args: str, name: str = "x"):
    """Run a command line of tests/faulty_project.py's classes on `folder`."""
    cli = make_cli(f"faulty_project:{data}", f"faulty_project:{runner}", os.path.join(folder, "config.json"), os.path.join(folder, "schema.json"))
    base = ["--experiments-path", os.path.join(folder, "experiments"), "--data-path", os.path.join(folder, "data"), "--experiment-name", name]
    return CliRunner().invoke(cli, [*base, *args])


def read_log(folder: str, name: str = "x") -> str:
    with open(os.path.join(folder, "experiments", name, "verbose.log")) as file:
        return file.read()


def test_a_data_hook_that_fails_is_one_sentence_naming_it_and_the_log_keeps_the_traceback(folder):
    assert run(folder, "MissingFileData", "LegacyRunner", "init").exit_code == 0
    result = run(folder, "MissingFileData", "LegacyRunner", "train", "--device", "cpu")
    assert result.exit_code == 11
    assert result.output.splitlines()[-1].startswith(
        "Error: MissingFileData.load_datasets failed: FileNotFoundError: [Errno 2] No such file or directory: "
    )
    assert result.output.rstrip().endswith("points.pt'")
    assert "Traceback" not in result.output
    log = read_log(folder)
    assert "MissingFileData.load_datasets failed" in log and "Traceback (most recent call last)" in log
    assert 'faulty_project.py", line' in log  # the project's own frame, where the user looks


def test_debug_shows_the_traceback_above_the_sentence(folder):
    assert run(folder, "MissingFileData", "LegacyRunner", "init").exit_code == 0
    result = run(folder, "MissingFileData", "LegacyRunner", "--debug", "train", "--device", "cpu")
    assert result.exit_code == 11
    assert "Traceback (most recent call last)" in result.output and 'faulty_project.py", line' in result.output
    assert result.output.rstrip().splitlines()[-1].startswith("Error: MissingFileData.load_datasets failed: FileNotFoundError")


def test_init_names_a_failing_create_and_creates_nothing(folder):
    result = run(folder, "FailingCreateData", "LegacyRunner", "init")
    assert result.exit_code == 11
    assert result.output.startswith("Error: FailingCreateData.create failed: FileNotFoundError: [Errno 2] No such file or directory: ")
    assert not os.path.exists(os.path.join(folder, "experiments", "x"))


def test_a_runner_hook_that_fails_in_training_is_named_and_recorded_as_the_stop(folder):
    assert run(folder, "LegacyData", "ExplodingRunner", "init").exit_code == 0
    result = run(folder, "LegacyData", "ExplodingRunner", "train", "--device", "cpu")
    assert result.exit_code == 11
    assert result.output.splitlines()[-1] == "Error: ExplodingRunner.train_step failed: RuntimeError: the loss went through the roof"
    view = torchexp.Experiments(os.path.join(folder, "experiments"))["x"]
    assert view.epochs == 1 and view.state == "failed"
    assert view.stop.detail == "ProjectError: ExplodingRunner.train_step failed: RuntimeError: the loss went through the roof"


NO_LOSS = "return the loss (a 0-dim tensor) or a dict of metrics holding it under 'loss'"


@pytest.mark.parametrize(
    "runner, sentence",
    [
        (
            "UnreducedLossRunner",
            "train_step returned a loss of shape [4]: return a scalar (a 0-dim tensor), e.g. loss.mean()",
        ),
        ("ForgetfulRunner", f"train_step returned None: {NO_LOSS}"),
        (
            "ItemLossRunner",
            "train_step returned a loss that does not require grad, so backward cannot use it: return the tensor "
            "computed from the model's output, not its .item() nor one computed under torch.no_grad()",
        ),
        ("ForgetfulValidationRunner", f"validation_step returned None: {NO_LOSS}"),
    ],
    ids=["unreduced", "none", "item", "validation-none"],
)
def test_a_step_that_returns_no_scalar_loss_is_one_sentence_naming_it_and_what_it_returned(folder, runner, sentence):
    assert run(folder, "LegacyData", runner, "init").exit_code == 0
    result = run(folder, "LegacyData", runner, "train", "--device", "cpu")
    assert result.exit_code == 11, result.output
    assert result.output.splitlines()[-1] == f"Error: {runner}.{sentence}"
    assert "Traceback" not in result.output
    assert torchexp.Experiments(os.path.join(folder, "experiments"))["x"].state == "failed"


def test_a_failing_test_hook_is_named(folder):
    assert run(folder, "LegacyData", "FailingTestRunner", "init").exit_code == 0
    assert run(folder, "LegacyData", "FailingTestRunner", "train", "--device", "cpu").exit_code == 0
    result = run(folder, "LegacyData", "FailingTestRunner", "test", "--device", "cpu")
    assert result.exit_code == 11
    assert result.output.splitlines()[-1] == "Error: FailingTestRunner.test failed: ZeroDivisionError: division by zero"


def trained_release(folder: str, data: str, runner: str) -> str:
    for command in (["init"], ["train", "--device", "cpu"], ["create_release"]):
        result = run(folder, data, runner, *command)
        assert result.exit_code == 0, result.output
    return os.path.join(folder, "experiments")


CONTRACT = (
    "StatsRunner.serve_preprocess failed: StatsData has no attribute 'stats' here: outside training (serve, export, "
    "load_model) a Data holds only its state, what StatsData.create returned at init (data.json); compute 'stats' in "
    "create and read it from self.state, or keep it in the model's buffers"
)


def test_a_hook_reading_what_only_load_datasets_set_breaks_the_inference_contract_in_one_sentence(folder):
    from fastapi.testclient import TestClient

    from torchexp.serving.options import ServeOptions
    from torchexp.serving.server import make_app

    experiments = trained_release(folder, "StatsData", "StatsRunner")
    with TestClient(make_app(torchexp.Experiment(experiments, "x"), ServeOptions(device="cpu", threads=1))) as client:
        answer = client.post("/v1/models/x:predict", json={"instances": [0.5]})
    assert answer.status_code == 503
    assert answer.json() == {"error": f"the model is not available: warm-up with the project's serve_example failed: {CONTRACT}"}
    result = run(folder, "StatsData", "StatsRunner", "export", "--format", "onnx")
    assert result.exit_code == 11
    assert result.output.splitlines()[-1] == f"Error: {CONTRACT}"
    assert not os.path.exists(os.path.join(experiments, "x", "exports"))
    assert torchexp.Experiments(experiments)["x"].load_model() is not None  # the model itself needs no statistics


def test_state_decided_at_init_is_there_outside_training(folder):
    experiments = trained_release(folder, "StateStatsData", "StateStatsRunner")
    result = run(folder, "StateStatsData", "StateStatsRunner", "export", "--format", "onnx")
    assert result.exit_code == 0, result.output
    (sidecar,) = [name for name in os.listdir(os.path.join(experiments, "x", "exports")) if name.endswith(".onnx.json")]
    with open(os.path.join(experiments, "x", "exports", sidecar)) as file:
        check = json.load(file)["check"]
    assert check["inputs"] == "the example instance and 4 test samples"
    assert check["argmax_agreement"] is None  # one output per sample: no label to compare
    assert check["tolerance_used"] <= 1


def test_an_error_outside_the_projects_hooks_is_left_as_it_is(folder, monkeypatch):
    assert run(folder, "LegacyData", "LegacyRunner", "init").exit_code == 0

    def broken(*args, **kwargs):
        raise RuntimeError("a bug of torchexp's own")

    monkeypatch.setattr("torchexp.loop.prepare_loaders", broken)
    result = run(folder, "LegacyData", "LegacyRunner", "train", "--device", "cpu")
    assert isinstance(result.exception, RuntimeError) and str(result.exception) == "a bug of torchexp's own"
