"""The Open Inference Protocol (KServe V2) on a real MNIST release: Triton's own HTTP client
(tritonclient[http]) against the real server (uvicorn on a loopback port), whose V2
predictions must be the V1 route's for the same images; then the protocol's errors, each
`{"error": "<one sentence>"}`, through FastAPI's TestClient."""

import json

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from fastapi.testclient import TestClient
from serve_fixtures import NAME, build_app, serving_in_a_thread, shared_release
from tritonclient.utils import InferenceServerException

INFER = f"/v2/models/{NAME}/infer"


@pytest.fixture(scope="module")
def experiments(tmp_path_factory) -> str:
    return shared_release(tmp_path_factory)


@pytest.fixture(scope="module")
def address(experiments):
    """host:port of the real server, serving the release on a free loopback port."""
    with serving_in_a_thread(build_app(experiments)) as host_port:
        yield host_port


@pytest.fixture(scope="module")
def client(address):
    client = triton.InferenceServerClient(url=address)
    yield client
    client.close()


def images(seed: int, count: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(count, 28, 28), dtype=np.uint8)


def v1_predictions(address: str, batch: np.ndarray) -> list[dict]:
    answer = httpx.post(f"http://{address}/v1/models/{NAME}:predict", json={"instances": batch.tolist()}, timeout=30)
    assert answer.status_code == 200, answer.text
    return answer.json()["predictions"]


def test_liveness_readiness_and_metadata_through_tritons_client(client):
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready(NAME)
    assert not client.is_model_ready("other")
    metadata = client.get_model_metadata(NAME)
    assert metadata == {
        "name": NAME,
        "platform": "torchexp_torch",
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 28, 28]}],
        "outputs": [
            {"name": "label", "datatype": "INT64", "shape": [-1]},
            {"name": "probabilities", "datatype": "FP64", "shape": [-1, 10]},
        ],
    }
    assert client.get_server_metadata()["extensions"] == ["binary_tensor_data"]


@pytest.mark.parametrize(
    "datatype, binary_input, binary_output",
    [("UINT8", True, True), ("FP32", False, False), ("FP32", True, False)],
    ids=["uint8-binary", "fp32-json", "fp32-binary-in-json-out"],
)
def test_infer_predicts_what_the_v1_route_predicts(client, address, datatype, binary_input, binary_output):
    batch = images(seed=len(datatype) + binary_input, count=3)
    tensor = triton.InferInput("input", list(batch.shape), datatype)
    tensor.set_data_from_numpy(batch.astype(np.uint8 if datatype == "UINT8" else np.float32), binary_data=binary_input)
    outputs = [triton.InferRequestedOutput(name, binary_data=binary_output) for name in ("label", "probabilities")]
    result = client.infer(NAME, [tensor], outputs=outputs, request_id="42")
    expected = v1_predictions(address, batch)
    assert result.get_response()["id"] == "42"
    assert result.as_numpy("label").tolist() == [prediction["label"] for prediction in expected]
    assert result.as_numpy("probabilities").shape == (3, 10)
    assert result.as_numpy("probabilities").tolist() == [prediction["probabilities"] for prediction in expected]


def test_infer_without_outputs_named_answers_every_output(client, address):
    batch = images(seed=9, count=2)
    tensor = triton.InferInput("pixels", [2, 28, 28], "UINT8")  # any name: the one input's rows are the instances
    tensor.set_data_from_numpy(batch)
    result = client.infer(NAME, [tensor])  # asks for binary outputs, all of them
    expected = v1_predictions(address, batch)
    assert [output["name"] for output in result.get_response()["outputs"]] == ["label", "probabilities"]
    assert result.as_numpy("label").tolist() == [prediction["label"] for prediction in expected]
    assert result.as_numpy("probabilities").tolist() == [prediction["probabilities"] for prediction in expected]


def test_an_error_reaches_tritons_client_as_its_sentence(client):
    tensor = triton.InferInput("input", [1, 5], "FP32")
    tensor.set_data_from_numpy(np.zeros((1, 5), dtype=np.float32))
    with pytest.raises(
        InferenceServerException,
        match=r"instances\[0\]: an instance must be 28 x 28 pixel values, not an array of shape \[5\]",
    ):
        client.infer(NAME, [tensor])
    with pytest.raises(
        InferenceServerException, match=f"model 'other' is not served here: this server serves '{NAME}'"
    ):
        client.get_model_metadata("other")


@pytest.fixture(scope="module")
def local(experiments):
    """A client of the app, not listening on any port."""
    app = build_app(experiments)
    with TestClient(app) as client:
        assert app.state.batcher.ready.wait(10)
        yield client


def pixels_input(**fields) -> dict:
    return {"inputs": [{"name": "input", "shape": [1, 28, 28], "datatype": "UINT8", "data": [0] * 784, **fields}]}


@pytest.mark.parametrize(
    "body, sentence",
    [
        ({"inputs": []}, 'the inference request\'s field "inputs": list should have at least 1 item, not 0'),
        ({"id": 3, **pixels_input()}, 'the inference request\'s field "id" must be a valid string, got 3'),
        (
            pixels_input(datatype="FP8"),
            "the inference request's field \"inputs[0].datatype\" must be 'BOOL', 'UINT8', 'UINT16', 'UINT32', "
            "'UINT64', 'INT8', 'INT16', 'INT32', 'INT64', 'FP16', 'FP32', 'FP64' or 'BYTES', got \"FP8\"",
        ),
        (
            pixels_input(shape=[1, -28, 28]),
            'the inference request\'s field "inputs[0].shape[1]" must be greater than or equal to 0, got -28',
        ),
        (pixels_input(shape=[2, 28, 28]), 'input "input" holds 784 values where its shape [2, 28, 28] needs 1568'),
        (
            pixels_input(shape=[]),
            'input "input" has the shape [] of one value: its first dimension must count the instances',
        ),
        (pixels_input(shape=[0, 28, 28], data=[]), 'input "input" holds no instances: its shape is [0, 28, 28]'),
        (pixels_input(data=[300] * 784), 'input "input" is UINT8, from 0 to 255: it holds 300'),
        (pixels_input(data=[0.5] * 784), 'input "input" is UINT8: its data must be integers'),
        (
            pixels_input(data=[[0] * 28] * 27 + [[0] * 3]),
            'input "input" holds rows of unequal lengths: its data must be a tensor, flattened or nested',
        ),
        (pixels_input(data=None), 'input "input" has no "data", and no binary_data_size for binary data'),
        (
            {"inputs": pixels_input()["inputs"] * 2},
            'the model takes one input tensor, whose rows are the instances, not 2: "input", "input"',
        ),
        (
            {**pixels_input(), "outputs": [{"name": "logits"}]},
            'output "logits" is not an output of this model; its outputs: label, probabilities',
        ),
        (
            {"inputs": [{"name": "input", "shape": [1], "datatype": "BYTES", "data": ["seven"]}]},
            'instances[0]: an instance must be 28 x 28 numbers from 0 to 255, or {"b64": "<base64 PNG>"}',
        ),
    ],
)
def test_a_bad_inference_request_is_400_with_one_sentence(local, body, sentence):
    answer = local.post(INFER, json=body)
    assert (answer.status_code, answer.json()) == (400, {"error": sentence})


def test_nested_json_data_is_read_as_flattened(local):
    image = images(seed=5, count=1)
    flat = local.post(INFER, json=pixels_input(data=image.ravel().tolist())).json()
    nested = local.post(INFER, json=pixels_input(data=image.tolist())).json()
    assert flat == nested and flat["outputs"][0]["data"] == [
        local.post(f"/v1/models/{NAME}:predict", json={"instances": image.tolist()}).json()["predictions"][0]["label"]
    ]


def test_binary_framing_errors_are_one_sentence(local):
    tensor = {"name": "input", "shape": [1, 28, 28], "datatype": "UINT8", "parameters": {"binary_data_size": 784}}
    header = json.dumps({"inputs": [tensor]}).encode()
    answer = local.post(
        INFER, content=header + bytes(700), headers={"Inference-Header-Content-Length": str(len(header))}
    )
    assert answer.json() == {
        "error": 'input "input" has binary_data_size 784 where the body holds 700 bytes after its JSON'
    }
    answer = local.post(INFER, content=header + bytes(784), headers={"Inference-Header-Content-Length": "9999"})
    assert answer.json() == {
        "error": "the Inference-Header-Content-Length header must be the JSON's length "
        f"in a body of {len(header) + 784} bytes, not '9999'"
    }
    answer = local.post(
        INFER, content=header + bytes(784), headers={"Inference-Header-Content-Length": str(len(header))}
    )
    assert answer.status_code == 200 and answer.headers["content-type"] == "application/json"


def test_unknown_model_and_readiness_of_the_v2_routes(local):
    assert local.get("/v2/health/live").json() == {"live": True}
    assert local.get("/v2/health/ready").json() == {"ready": True}
    assert local.get(f"/v2/models/{NAME}/ready").json() == {"ready": True, "name": NAME}
    for answer in (local.get("/v2/models/other"), local.post("/v2/models/other/infer", json=pixels_input())):
        assert (answer.status_code, answer.json()) == (
            404,
            {"error": f"model 'other' is not served here: this server serves '{NAME}'"},
        )


def test_a_stopping_server_is_not_ready(experiments):
    app = build_app(experiments)
    with TestClient(app) as client:
        assert app.state.batcher.ready.wait(10)
        app.state.stopping = True
        answer = client.get("/v2/health/ready")
        assert (answer.status_code, answer.json()) == (503, {"ready": False, "error": "not ready: stopping"})
        assert client.get(f"/v2/models/{NAME}/ready").status_code == 503


def test_openapi_documents_the_v2_routes(local):
    document = local.get("/openapi.json").json()
    infer = document["paths"]["/v2/models/{name}/infer"]["post"]
    request = infer["requestBody"]["content"]["application/json"]["schema"]
    assert request["required"] == ["inputs"]
    tensor = document["components"]["schemas"][request["properties"]["inputs"]["items"]["$ref"].split("/")[-1]]
    assert {"name", "shape", "datatype", "data"} <= set(tensor["properties"])
    assert {"200", "400", "404", "413", "503"} <= set(infer["responses"])
    assert {"/v2", "/v2/health/live", "/v2/health/ready", "/v2/models/{name}", "/v2/models/{name}/ready"} <= set(
        document["paths"]
    )
