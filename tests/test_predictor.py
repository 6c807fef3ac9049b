"""The Python predictor answers a client's instances as a real `serve` process does, with
the same sentences for bad ones, from the release, an epoch or a checkpoint's name, without
FastAPI and without writing into the experiment."""

import base64
import io
import json
import os
import shutil
import subprocess
import sys

import httpx
import numpy as np
import pytest
from PIL import Image

import torchexp
from conftest import REPO, read_line, snapshot
from serve_fixtures import NAME, RecordingPredictor, shared_release

# Run in a fresh interpreter: what a script gets that only asks the predictor, and what it imports.
PREDICT_SCRIPT = """
import json, sys
import torchexp
predictor = torchexp.Experiments(sys.argv[1])[sys.argv[2]].predictor("release", device="cpu")
predictions = predictor.predict(json.load(sys.stdin))
print(json.dumps({"predictions": predictions, "fastapi": "fastapi" in sys.modules}))
"""


@pytest.fixture(scope="module")
def experiments(tmp_path_factory) -> str:
    return shared_release(tmp_path_factory)


def make_instances(count: int) -> list:
    """`count` instances as clients send them: 28 x 28 pixel values, and every tenth a PNG of
    another size in base64 (its prediction then also holds the image the model saw)."""
    rng = np.random.default_rng(0)
    instances = []
    for index in range(count):
        if index % 10 == 9:
            buffer = io.BytesIO()
            Image.fromarray(rng.integers(0, 256, size=(40, 36)).astype(np.uint8)).save(buffer, format="PNG")
            instances.append({"b64": base64.b64encode(buffer.getvalue()).decode()})
        else:
            instances.append(rng.integers(0, 256, size=(28, 28)).tolist())
    return instances


def bad_requests(instances: list) -> tuple:
    """Request bodies' "instances" that serve refuses with 400: a malformed instance, none, not a list."""
    return ([instances[0], [1, 2]], [], {"a": 1})


def test_the_predictor_answers_50_instances_as_a_real_serve_does_without_fastapi_or_writes(experiments):
    instances = make_instances(50)
    before = snapshot(experiments)
    serve = ["-m", "mnist_classifier", "--experiments-path", experiments, "--experiment-name", NAME, "serve", "--port", "0"]
    process = subprocess.Popen([sys.executable, *serve], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # The predictor's process runs while the server starts.
        script = [sys.executable, "-c", PREDICT_SCRIPT, experiments, NAME]
        done = subprocess.run(script, input=json.dumps(instances), cwd=REPO, capture_output=True, text=True, timeout=120)
        url = read_line(process.stdout, 60, "serving ").split(" at ")[1].split()[0]
        path = f"/v1/models/{NAME}:predict"
        with httpx.Client(base_url=url, timeout=60) as client:
            served = client.post(path, json={"instances": instances}).json()["predictions"]
            refused = [client.post(path, json={"instances": bad}) for bad in bad_requests(instances)]
    finally:
        process.terminate()
        process.communicate(timeout=30)
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert answer["predictions"] == served
    assert len(served) == 50 and "input" in served[9] and "input" not in served[0]
    assert answer["fastapi"] is False
    assert snapshot(experiments) == before  # the predictor wrote nothing, not even a lock

    predictor = torchexp.load_predictor(experiments, NAME, device="cpu")
    for response, bad in zip(refused, bad_requests(instances)):
        assert response.status_code == 400
        with pytest.raises(torchexp.InstanceError) as raised:
            predictor.predict(bad)
        assert str(raised.value) == response.json()["error"]


def test_an_epoch_or_a_checkpoints_name_selects_the_weights(experiments):
    instances = make_instances(3)
    release = torchexp.load_predictor(experiments, NAME, device="cpu")
    by_epoch = torchexp.Experiments(experiments)[NAME].predictor(1, device="cpu")
    by_name = torchexp.load_predictor(experiments, NAME, "1.checkpoint.pt", device="cpu")
    names = (release.checkpoint.name, by_epoch.checkpoint.name, by_name.checkpoint.name)
    assert names == ("1.checkpoint.release.pt", "1.checkpoint.pt", "1.checkpoint.pt")
    # The release holds epoch 1's weights.
    assert by_epoch.predict(instances) == by_name.predict(instances) == release.predict(instances)


def test_a_missing_release_epoch_or_checkpoint_is_one_sentence(experiments, tmp_path):
    bare = tmp_path / "bare"
    shutil.copytree(experiments, bare)
    for name in os.listdir(bare / NAME / "checkpoints"):
        if ".release." in name:
            os.remove(bare / NAME / "checkpoints" / name)
    with pytest.raises(torchexp.CheckpointError) as raised:
        torchexp.load_predictor(str(bare), NAME)
    assert str(raised.value) == f"experiment '{NAME}' has no release checkpoint yet: create one with create_release"
    folder = os.path.join(os.path.abspath(experiments), NAME, "checkpoints")
    with pytest.raises(torchexp.CheckpointError) as raised:
        torchexp.load_predictor(experiments, NAME, 5)
    assert str(raised.value) == f"epoch 5 has no standard or release checkpoint in {folder} (available: 1)"
    with pytest.raises(torchexp.CheckpointError) as raised:
        torchexp.load_predictor(experiments, NAME, "7.checkpoint.pt")
    listed = "its checkpoints: 1.checkpoint.pt, 1.checkpoint.release.pt"
    assert str(raised.value) == f"experiment '{NAME}' has no checkpoint 7.checkpoint.pt ({listed})"
    with pytest.raises(torchexp.CheckpointError, match="^checkpoint 'latest' is not valid: pass 'release', an epoch number"):
        torchexp.load_predictor(experiments, NAME, "latest")
    with pytest.raises(torchexp.ExperimentError, match="^experiment 'nope' does not exist in "):
        torchexp.load_predictor(experiments, "nope")
    with pytest.raises(torchexp.ConfigError, match="^max_batch_size 0 is not valid: pass a whole number of 1 or more$"):
        torchexp.load_predictor(experiments, NAME, max_batch_size=0)


def test_instances_run_through_the_model_in_batches_of_at_most_max_batch_size(experiments):
    predictor = torchexp.load_predictor(experiments, NAME, device="cpu", max_batch_size=4)
    recording = predictor.pipeline.predictor = RecordingPredictor(predictor.pipeline.predictor)
    assert len(predictor.predict(make_instances(10))) == 10
    assert recording.sizes == [4, 4, 2]


def test_a_prediction_that_is_not_json_is_the_servers_sentence_as_a_project_error(experiments):
    predictor = torchexp.load_predictor(experiments, NAME, device="cpu")
    predictor.runner.serve_postprocess = lambda output, model_input, instance: float("nan")
    with pytest.raises(torchexp.errors.ProjectError, match="^the prediction cannot be sent as JSON: "):
        predictor.predict(make_instances(1))
