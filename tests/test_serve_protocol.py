"""The server's HTTP API on a real MNIST release, through FastAPI's TestClient (no socket):
KServe V1 routes, health, metrics, bad input, limits, and what / answers to API clients
and to browsers, for a project with a page (MNIST's) and one without (`torchexp create`'s)."""

import asyncio
import base64
import io
import json
import re

import httpx
import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from mnist_classifier.preprocess import decode_png, to_mnist
from mnist_classifier.runner import MNISTClassifierRunner

from serve_fixtures import NAME, TEMPLATE_PROJECT, build_app, make_template_release, pixels_body, record_predictions, shared_release
from torchexp.errors import TorchexpError
from torchexp.serving.page import PAGE_POLICY, prefers_html

PREDICT = f"/v1/models/{NAME}:predict"
# The Accept headers of browsers opening a page: each prefers text/html to JSON.
BROWSERS = {
    "chromium": "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,image/apng,*/*;q=0.8,application/signed-exchange;v=b3;q=0.7",
    "firefox": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
}


@pytest.fixture(scope="module")
def experiments(tmp_path_factory) -> str:
    return shared_release(tmp_path_factory)


@pytest.fixture
def client(experiments):
    app = build_app(experiments)
    with TestClient(app) as client:
        # The model warms up on the batch thread: wait for it, or readiness is a race.
        assert app.state.batcher.ready.wait(10)
        yield client


def digit_image(seed: int) -> list:
    """A 28 x 28 image of integers 0-255."""
    return np.random.default_rng(seed).integers(0, 256, size=(28, 28)).tolist()


def png_base64(pixels: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def drawn_digit() -> np.ndarray:
    """A 200 x 160 drawing, dark strokes on white and off-centre, as a page or a photo gives."""
    canvas = np.full((200, 160), 255, dtype=np.uint8)
    canvas[30:150, 100:112] = 0  # a "1" with a flag
    canvas[30:42, 80:112] = 0
    return canvas


def expected_probabilities(app, image: list) -> torch.Tensor:
    """The release's model run directly on the image, as MNIST's test does."""
    model = app.state.batcher.pipeline.predictor.runner.model
    pixels = torch.tensor(image, dtype=torch.float32).div(255).sub(0.1307).div(0.3081)
    with torch.no_grad():
        return torch.softmax(model(pixels.view(1, 1, 28, 28))[0], 0)


def read_metrics(client) -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted labels): value} from /metrics."""
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def test_predict_answers_label_and_probabilities_of_the_release(client):
    images = [digit_image(1), digit_image(2)]
    response = client.post(PREDICT, json=pixels_body(*images))
    assert response.status_code == 200
    predictions = response.json()["predictions"]
    assert len(predictions) == 2
    for image, prediction in zip(images, predictions):
        expected = expected_probabilities(client.app, image)
        assert prediction["label"] == int(expected.argmax())
        assert prediction["probabilities"] == pytest.approx(expected.tolist(), abs=1e-5)
        assert sum(prediction["probabilities"]) == pytest.approx(1, abs=1e-5)
        assert "input" not in prediction


def test_a_png_is_prepared_as_mnist_and_the_input_is_returned(client):
    drawing = drawn_digit()
    encoded = png_base64(drawing)
    response = client.post(PREDICT, json={"instances": [{"b64": encoded}, digit_image(3)]})
    assert response.status_code == 200
    png_prediction, pixel_prediction = response.json()["predictions"]
    prepared = to_mnist(decode_png(base64.b64decode(encoded)))
    assert png_prediction["input"] == prepared.tolist()  # the one preprocessing path, white on black
    assert prepared[0, 0] == 0 and prepared.max() == 255
    expected = expected_probabilities(client.app, prepared.tolist())
    assert png_prediction["label"] == int(expected.argmax())
    assert png_prediction["probabilities"] == pytest.approx(expected.tolist(), abs=1e-5)
    assert "input" not in pixel_prediction


def test_requests_larger_than_a_batch_keep_their_order(experiments):
    images = [digit_image(seed) for seed in range(7)]
    app = build_app(experiments, max_batch_size=3)
    recorder = record_predictions(app)
    with TestClient(app) as client:
        together = client.post(PREDICT, json=pixels_body(*images)).json()["predictions"]
        ran_together = recorder.sizes[-3:]
        alone = [client.post(PREDICT, json=pixels_body(image)).json()["predictions"][0] for image in images]
    assert ran_together == [3, 3, 1]
    assert [p["label"] for p in together] == [p["label"] for p in alone]
    for batched, single in zip(together, alone):
        assert batched["probabilities"] == pytest.approx(single["probabilities"], abs=1e-5)


def test_metadata_liveness_and_readiness(client):
    metadata = client.get(f"/v1/models/{NAME}")
    assert metadata.status_code == 200
    assert metadata.json() == {
        "name": NAME, "ready": True, "epoch": 1, "runtime": "torch", "device": "cpu", "threads": 1, "unit": "epoch", "max_batch_size": 32
    }
    assert client.get("/livez").json() == {"live": True}
    assert client.get("/readyz").json() == {"ready": True}


def test_unknown_model_is_404_with_a_sentence(client):
    for response in (client.get("/v1/models/other"), client.post("/v1/models/other:predict", json=pixels_body(digit_image(0)))):
        assert response.status_code == 404
        assert response.json() == {"error": f"model 'other' is not served here: this server serves '{NAME}'"}
    assert client.get("/nowhere").json() == {"error": "/nowhere is not a path of this server: see /docs"}


BAD_BODIES = [
    ("not JSON", b"{instances: nope", 400, "the request body is not JSON: Expecting property name enclosed in double quotes"),
    ("not UTF-8", b"\xff\xfe{", 400, "the request body is not JSON"),
    ("no instances", b'{"inputs": []}', 400, 'the request body must be a JSON object with "instances": a list of instances'),
    ("a list body", b"[1, 2]", 400, 'the request body must be a JSON object with "instances"'),
    ("instances not a list", b'{"instances": 3}', 400, '"instances" must be a list, not int'),
    ("empty instances", b'{"instances": []}', 400, '"instances" is empty: send at least one instance'),
    ("nested too deeply", b'{"instances": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", 400, "the request body is JSON nested too deeply to read"),
    ("wrong shape", json.dumps(pixels_body([[0] * 28] * 27)).encode(), 400, "instances[0]: an instance must be 28 x 28 pixel values, not an array of shape [27, 28]"),
    ("ragged rows", json.dumps(pixels_body([[0] * 28] * 27 + [[0] * 3])).encode(), 400, "instances[0]: an instance must be 28 x 28 pixel values, in rows of equal length"),
    ("above 255", json.dumps(pixels_body([[0] * 28] * 27 + [[256] * 28])).encode(), 400, "instances[0]: pixel values must be from 0 to 255, found 256"),
    ("negative", json.dumps(pixels_body([[0] * 28] * 27 + [[-1] * 28])).encode(), 400, "instances[0]: pixel values must be from 0 to 255, found -1"),
    ("NaN", b'{"instances": [' + json.dumps([[0] * 28] * 27 + [[float("nan")] * 28]).encode() + b"]}", 400, "instances[0]: an instance holds NaN or infinite values"),
    ("strings", json.dumps(pixels_body([["1"] * 28] * 28)).encode(), 400, "instances[0]: an instance must be 28 x 28 numbers from 0 to 255"),
    ("second instance bad", json.dumps(pixels_body([[0] * 28] * 28, [[0] * 28])).encode(), 400, "instances[1]: an instance must be 28 x 28 pixel values"),
    ("bad base64", b'{"instances": [{"b64": "not base64!"}]}', 400, 'instances[0]: "b64" is not valid base64'),
    ("not a PNG", b'{"instances": [{"b64": "' + base64.b64encode(b"GIF89a....").decode().encode() + b'"}]}', 400, "instances[0]: the image is not a PNG"),
    ("truncated PNG", b'{"instances": [{"b64": "' + png_base64(drawn_digit())[:200].encode() + b'"}]}', 400, "instances[0]: the PNG image is corrupt or truncated"),
    ("b64 not text", b'{"instances": [{"b64": 5}]}', 400, 'instances[0]: an image instance must be {"b64": "<base64 PNG>"}'),
    ("other keys", b'{"instances": [{"png": "AAAA"}]}', 400, """instances[0]: an image instance must be {"b64": "<base64 PNG>"}, not an object with keys ['png']"""),
]


@pytest.mark.parametrize("body, status, sentence", [case[1:] for case in BAD_BODIES], ids=[case[0] for case in BAD_BODIES])
def test_bad_input_is_a_4xx_sentence_and_the_next_request_is_served(client, body, status, sentence):
    response = client.post(PREDICT, content=body, headers={"content-type": "application/json"})
    assert response.status_code == status
    error = response.json()["error"]
    assert error.startswith(sentence)
    assert "\n" not in error and "Traceback" not in error
    assert client.post(PREDICT, json=pixels_body(digit_image(0))).status_code == 200


def test_body_over_the_limit_is_413_before_reading_it(experiments):
    with TestClient(build_app(experiments, max_body_bytes=4000)) as client:
        declared = client.post(PREDICT, content=b"x" * 4001)
        assert declared.status_code == 413
        assert declared.json() == {"error": "the request body is 4001 bytes, over this server's limit of 4000 (--max-body-bytes)"}

        def chunks():  # no Content-Length: the limit applies while reading
            for _ in range(5):
                yield b"x" * 1000

        streamed = client.post(PREDICT, content=chunks())
        assert streamed.status_code == 413
        assert streamed.json() == {"error": "the request body is over this server's limit of 4000 bytes (--max-body-bytes)"}
        assert client.post(PREDICT, json=pixels_body([[0] * 28] * 28)).status_code == 200


def test_the_app_mounted_in_another_answers_predictions_under_its_prefix(experiments):
    """The predict path is answered in front of FastAPI's router: it must see the path below
    the mount point as the router does."""
    from fastapi import FastAPI

    outer = FastAPI()
    served = build_app(experiments)
    outer.mount("/api", served)
    with TestClient(served), TestClient(outer) as client:  # the inner app's lifespan starts its batcher
        assert served.state.batcher.ready.wait(10)
        response = client.post("/api" + PREDICT, json=pixels_body(digit_image(0)))
        assert response.status_code == 200
        assert len(response.json()["predictions"]) == 1


def test_metrics_count_requests_errors_and_batches(client):
    for seed in range(3):
        assert client.post(PREDICT, json=pixels_body(digit_image(seed))).status_code == 200
    assert client.post(PREDICT, content=b"nope").status_code == 400
    assert client.get("/v1/models/other").status_code == 404
    samples = read_metrics(client)
    predict = (("code", "200"), ("endpoint", "/v1/models/{name}:predict"))
    assert samples["torchexp_requests_total", predict] == 3
    assert samples["torchexp_requests_total", (("code", "400"), ("endpoint", "/v1/models/{name}:predict"))] == 1
    assert samples["torchexp_errors_total", (("code", "400"),)] == 1
    assert samples["torchexp_errors_total", (("code", "404"),)] == 1
    assert samples["torchexp_request_seconds_count", (("endpoint", "/v1/models/{name}:predict"),)] == 4
    # Three requests one after the other: three batches of one (the 400 never reached the model).
    assert samples["torchexp_batch_size_count", ()] == 3
    assert samples["torchexp_batch_size_bucket", (("le", "1.0"),)] == 3
    assert samples["torchexp_queue_seconds_count", ()] == 3
    assert samples["torchexp_inference_seconds_count", ()] == 3
    assert samples["torchexp_queue_depth", ()] == 0


def kserve_v1_is_server_live(app) -> bool:
    """What kserve's REST client does for the V1 protocol's liveness check
    (InferenceRESTClient.is_server_live in python/kserve/kserve/inference_client.py): GET
    the server's base URL on an httpx.AsyncClient with no headers of its own (httpx's
    defaults: Accept */*), raise unless 2xx, then read "status" from the JSON answer."""

    async def check() -> bool:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app)) as kserve_client:
            response = await kserve_client.get("http://127.0.0.1/")
        response.raise_for_status()
        return response.json().get("status").lower() == "alive"

    return asyncio.run(check())


def assert_alive(response) -> None:
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {"status": "alive"}
    assert response.headers["vary"] == "Accept"


@pytest.mark.parametrize(
    "accept, html",
    [
        ("", False),
        ("*/*", False),  # KServe's client (httpx's default), curl
        ("application/json", False),
        ("application/json, text/html", False),  # a tie goes to the protocol's JSON
        ("text/html;q=0.5, application/json", False),
        ("text/html;q=0", False),
        ("text/html", True),
        ("TEXT/HTML", True),
        ("text/*", True),
        ("application/*;q=0.1, text/html", True),
        ("text/html;q=nonsense, application/json;q=0.5", True),  # a q that is not a number counts as 1
        (BROWSERS["chromium"], True),
        (BROWSERS["firefox"], True),
    ],
)
def test_a_request_prefers_html_when_its_accept_header_says_so(accept, html):
    assert prefers_html(accept) is html


def test_root_is_kserve_v1_liveness_for_api_clients(client):
    assert kserve_v1_is_server_live(client.app)
    for accept in ("", "*/*", "application/json", "application/json, text/html"):
        assert_alive(client.get("/", headers={"accept": accept}))


def test_page_is_served_with_its_files_and_nothing_from_elsewhere(client):
    page = client.get("/", headers={"accept": BROWSERS["chromium"]})
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert page.headers["vary"] == "Accept"
    assert client.get("/", headers={"accept": "text/html"}).text == page.text
    assert page.headers["content-security-policy"] == PAGE_POLICY
    assert f'data-model="{NAME}"' in page.text
    assert "<canvas" in page.text and 'id="clear"' in page.text
    for name in re.findall(r'(?:src|href)="([^"]+)"', page.text):
        assert name.startswith("static/"), name
        asset = client.get("/" + name)
        assert asset.status_code == 200
        assert not re.search(r"https?://", asset.text), f"{name} refers to another site"
    assert "default-src 'self'" in PAGE_POLICY


def test_openapi_documents_the_protocol_with_the_projects_example(client):
    schema = client.get("/openapi.json").json()
    predict = schema["paths"]["/v1/models/{name}:predict"]["post"]
    body = predict["requestBody"]["content"]["application/json"]
    assert body["schema"]["required"] == ["instances"]
    example = body["example"]["instances"][0]
    assert np.array(example).shape == (28, 28)
    assert {"200", "400", "404", "413", "503"} <= set(predict["responses"])
    assert "/v1/models/{name}" in schema["paths"] and "/readyz" in schema["paths"]
    assert client.get("/docs").status_code == 200
    root = schema["paths"]["/"]["get"]
    assert {"application/json", "text/html"} <= set(root["responses"]["200"]["content"])
    assert '{"status": "alive"}' in root["description"] and '{"status": "alive"}' in schema["info"]["description"]
    assert "prefer text/html" in schema["info"]["description"]


def test_a_page_folder_without_index_html_is_one_sentence(experiments, tmp_path, monkeypatch):
    monkeypatch.setattr(MNISTClassifierRunner, "serve_page", lambda self: str(tmp_path))
    sentence = f"MNISTClassifierRunner.serve_page returned '{tmp_path}', a folder without index.html: return the folder of the page's index.html, or None"
    with pytest.raises(TorchexpError, match=f"^{re.escape(sentence)}$"):
        build_app(experiments)


@pytest.fixture(scope="module")
def template_client(tmp_path_factory):
    """A client of the app serving a release of the project `torchexp create` writes,
    whose Runner has no serve_page."""
    root = tmp_path_factory.mktemp("template")
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(root / TEMPLATE_PROJECT))
        app = build_app(make_template_release(str(root)))
        with TestClient(app) as client:
            assert app.state.batcher.ready.wait(10)
            yield client


def test_a_project_without_a_page_answers_liveness_and_shows_browsers_a_page_of_the_api_that_works_offline(template_client):
    assert kserve_v1_is_server_live(template_client.app)
    assert_alive(template_client.get("/", headers={"accept": "*/*"}))
    for accept in (BROWSERS["chromium"], "text/html"):
        page = template_client.get("/", headers={"accept": accept}, follow_redirects=False)
        assert (page.status_code, page.headers["vary"], page.headers["content-type"]) == (200, "Accept", "text/html; charset=utf-8")
        assert page.headers["content-security-policy"].startswith("default-src 'self'")
        # Every route, from this server alone: nothing is loaded from another site (unlike /docs).
        assert "<code>/v1/models/{name}:predict</code>" in page.text and "<code>/v2/models/{name}/infer</code>" in page.text
        assert "POST" in page.text and 'href="openapi.json"' in page.text
        assert "src=" not in page.text and "https://" not in page.text and "cdn" not in page.text.lower()
        assert "Draw a digit" not in page.text
    assert template_client.get("/static/page.js").status_code == 404
    assert template_client.post(PREDICT, json={"instances": [[1.0, 1.0]]}).status_code == 200
