"""Tests of breast_cancer: its command line end to end, its served predictions, its data
file and its model."""

import json

import pytest
import torch
from click.testing import CliRunner
from fastapi.testclient import TestClient
from sklearn.datasets import load_breast_cancer

from breast_cancer.__main__ import cli
from breast_cancer.data import FILE_NAME
from breast_cancer.model import build_model
from breast_cancer.runner import FIRST_TUMOUR
from torchexp.folder import Experiment
from torchexp.serving.server import make_app

EXAMPLE = dict(zip(load_breast_cancer().feature_names, FIRST_TUMOUR))  # the runner's serve_example


def run(root, *args: str):
    """Run the command line on experiment `x` under `root`, its data in root/data; return click's result."""
    base = ["--experiments-path", str(root / "experiments"), "--data-path", str(root / "data"), "--experiment-name", "x"]
    return CliRunner().invoke(cli, [*base, *args], catch_exceptions=False)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A folder holding experiment `x`, trained 3 epochs and released, and its data file."""
    root = tmp_path_factory.mktemp("trained")
    assert run(root, "init").exit_code == 0
    for command in (["train", "--max-epochs", "3", "--device", "cpu"], ["create_release"]):
        result = run(root, *command)
        assert result.exit_code == 0, result.output
    return root


def test_init_writes_the_data_file_and_the_training_statistics(trained):
    header = (trained / "data" / FILE_NAME).read_text().splitlines()[0].split(",")
    assert header == [*load_breast_cancer().feature_names, "malignant"]
    state = json.loads((trained / "experiments" / "x" / "data.json").read_text())
    assert state["features"] == header[:-1] and state["samples"] == 569
    assert len(state["mean"]) == len(state["std"]) == 30 and 10 < state["mean"][0] < 20  # mean radius, in mm


def test_test_is_well_above_chance(trained):
    result = run(trained, "test", "--device", "cpu")
    assert result.exit_code == 0, result.output
    results = json.loads((trained / "experiments" / "x" / "results" / "3.standard.test.json").read_text())["results"]
    # 63 % of the tumours are benign: always answering benign scores 0.63.
    assert results["accuracy"] > 0.9 and results["auc"] > 0.95 and results["samples"] == 114


@pytest.fixture(scope="module")
def client(trained):
    """A client of the release's server, not listening on any port."""
    with TestClient(make_app(Experiment(str(trained / "experiments"), "x"))) as client:
        yield client


def test_the_release_serves_the_example_by_name_and_as_a_list(client):
    answer = client.post("/v1/models/x:predict", json={"instances": [EXAMPLE, list(FIRST_TUMOUR)]})
    assert answer.status_code == 200
    named, listed = answer.json()["predictions"]
    assert named == listed and named["label"] == "malignant" and named["malignant"] > 0.5


@pytest.mark.parametrize(
    "instance, sentence",
    [
        ({**EXAMPLE, "mean radius": "large"}, 'field "mean radius" must be a valid number, got "large"'),
        ({**EXAMPLE, "mean radius": True}, 'field "mean radius" must be a valid number, got true'),
        ({**EXAMPLE, "radius": 1.0}, 'field "radius" is unknown'),
        ({"mean radius": 1.0}, 'field "mean texture" is missing (and 28 more problems)'),
        ([1.0] * 29, "an instance as a list must hold the 30 features' values, not 29"),
        ([*FIRST_TUMOUR[:-1], None], 'field "worst fractal dimension" must be a valid number, got null'),
        ("benign?", "an instance must be an object of the 30 named features or a list of their values"),
    ],
)
def test_a_malformed_instance_is_refused_in_one_sentence(client, instance, sentence):
    answer = client.post("/v1/models/x:predict", json={"instances": [instance]})
    assert (answer.status_code, answer.json()) == (400, {"error": f"instances[0]: {sentence}"})


def test_a_value_that_is_not_finite_is_refused(client):
    # JSON has no NaN or infinity, but Python's parser (and the server's, after orjson) accepts them.
    body = json.dumps({"instances": [EXAMPLE, {**EXAMPLE, "mean radius": float("nan")}]})
    answer = client.post("/v1/models/x:predict", content=body, headers={"content-type": "application/json"})
    sentence = 'instances[1]: field "mean radius" must be a finite number, got NaN'
    assert (answer.status_code, answer.json()) == (400, {"error": sentence})


def test_the_schema_is_on_the_openapi_page(client):
    document = client.get("/openapi.json").json()
    body = document["paths"]["/v1/models/{name}:predict"]["post"]["requestBody"]["content"]["application/json"]
    items = body["schema"]["properties"]["instances"]["items"]
    named, listed = items["anyOf"]
    tumour = document["components"]["schemas"][named["$ref"].split("/")[-1]]
    assert tumour["required"] == list(EXAMPLE) and tumour["properties"]["mean radius"]["type"] == "number"
    assert (listed["type"], listed["minItems"], listed["maxItems"]) == ("array", 30, 30)


def test_a_missing_data_file_is_one_sentence_naming_it_and_the_fix(tmp_path, trained):
    base = ["--experiments-path", str(trained / "experiments"), "--data-path", str(tmp_path), "--experiment-name", "x"]
    result = CliRunner().invoke(cli, [*base, "test", "--device", "cpu"])
    assert result.exit_code == 5
    path = tmp_path / FILE_NAME
    assert result.output == (
        f"Error: the data file {path} is missing: pass the --data-path that init wrote it to, "
        f"or write it there with `python -m breast_cancer --data-path {tmp_path} write-data`\n"
    )


def test_the_example_is_the_data_sets_first_tumour_a_malignant_one():
    bundle = load_breast_cancer()
    assert FIRST_TUMOUR == tuple(bundle.data[0]) and bundle.target_names[bundle.target[0]] == "malignant"


def test_the_model_gives_one_logit_per_tumour():
    assert build_model(features=30, hidden=4)(torch.zeros(5, 30)).shape == (5, 1)
