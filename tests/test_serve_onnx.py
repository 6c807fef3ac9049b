"""`serve --runtime onnx`: the release's ONNX export in onnxruntime answers as torch does."""

import numpy as np
import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient

from mnist_classifier.__main__ import cli
from serve_fixtures import NAME, build_app, make_release, pixels_body
from torchexp.formats.onnx import OnnxPredictor

PREDICT = f"/v1/models/{NAME}:predict"


@pytest.fixture(scope="module")
def experiments(tmp_path_factory) -> str:
    return make_release(str(tmp_path_factory.mktemp("serve")))


def invoke(experiments: str, *arguments: str):
    base = ["--experiments-path", experiments, "--data-path", f"{experiments}/../data", "--experiment-name", NAME]
    return CliRunner().invoke(cli, [*base, *arguments])


def test_serving_without_an_export_names_the_command_that_writes_it(experiments):
    result = invoke(experiments, "serve", "--runtime", "onnx", "--port", "0", "--threads", "1")
    assert result.exit_code == 4
    assert result.output == (
        f"Error: ONNX export {experiments}/{NAME}/exports/1.release.onnx does not exist: write it with export --format onnx\n"
    )


def test_onnx_runtime_answers_as_torch(experiments):
    exported = invoke(experiments, "--quiet", "export", "--format", "onnx", "--check-samples", "20")
    assert exported.exit_code == 0, exported.output
    images = [np.random.default_rng(seed).integers(0, 256, size=(28, 28)).tolist() for seed in range(5)]
    answers = {}
    for runtime in ("torch", "onnx"):
        app = build_app(experiments, runtime=runtime)
        with TestClient(app) as client:
            assert client.get(f"/v1/models/{NAME}").json()["runtime"] == runtime
            response = client.post(PREDICT, json=pixels_body(*images))
            assert response.status_code == 200
            answers[runtime] = response.json()["predictions"]
    assert isinstance(app.state.batcher.pipeline.predictor, OnnxPredictor)
    assert [p["label"] for p in answers["onnx"]] == [p["label"] for p in answers["torch"]]
    for onnx, torch_answer in zip(answers["onnx"], answers["torch"]):
        assert onnx["probabilities"] == pytest.approx(torch_answer["probabilities"], abs=1e-4)
