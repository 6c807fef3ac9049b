"""The breast cancer example (examples/breast_cancer) end to end, as its user runs it:
init, which writes the data file; train; test; create_release; an ONNX export; `serve` as
a real process; and the model loaded from a folder outside the project. Every address is
127.0.0.1."""

import glob
import importlib.util
import json
import os
import signal
import subprocess
import sys

import httpx
import pytest
from click.testing import CliRunner

from conftest import REPO, read_line

EXAMPLE = os.path.join(REPO, "examples", "breast_cancer")
# The repository's venv installs the example (the Makefile's `pip install -e
# examples/breast_cancer`), which is how a user's processes find it. A venv made before
# that line, or a checkout run with PYTHONPATH=. alone, has not: the example is then taken
# from its folder, by this test and by the processes it starts (`environment`).
INSTALLED = importlib.util.find_spec("breast_cancer") is not None
if not INSTALLED:
    sys.path.append(EXAMPLE)

from breast_cancer.__main__ import cli  # noqa: E402
from breast_cancer.runner import FIRST_TUMOUR  # noqa: E402

EPOCHS = 5


def environment() -> dict[str, str]:
    """The environment of the processes this test starts: this one's, with the example's
    folder on PYTHONPATH when the example is not installed."""
    env = dict(os.environ)
    if not INSTALLED:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [EXAMPLE, env.get("PYTHONPATH")]))
    return env


def invoke(root, *args: str):
    """Run the example's command line in this process on experiment `x` under `root`."""
    base = ["--experiments-path", str(root / "experiments"), "--data-path", str(root / "data"), "--experiment-name", "x"]
    result = CliRunner().invoke(cli, [*base, *args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    """A folder with experiment `x` trained a few epochs and released, and its data file."""
    root = tmp_path_factory.mktemp("breast_cancer")
    invoke(root, "init")
    invoke(root, "train", "--max-epochs", str(EPOCHS), "--device", "cpu")
    invoke(root, "create_release")
    return root


@pytest.fixture(scope="module")
def state(released) -> dict:
    """What the example's Data.create returned at init."""
    return json.loads((released / "experiments" / "x" / "data.json").read_text())


def test_init_writes_the_data_file_and_keeps_the_training_statistics(released, state):
    header = (released / "data" / "breast_cancer.csv").read_text().splitlines()[0].split(",")
    assert header == [*state["features"], "malignant"] and len(state["features"]) == 30
    assert len(state["mean"]) == len(state["std"]) == 30 and len(state["test_indexes"]) == 114


def test_test_is_well_above_chance(released):
    invoke(released, "test", "--epoch", str(EPOCHS), "--device", "cpu")
    results = json.loads((released / "experiments" / "x" / "results" / f"{EPOCHS}.standard.test.json").read_text())["results"]
    print(f"breast cancer after {EPOCHS} epochs: test accuracy {results['accuracy']:.4f}, AUC {results['auc']:.4f}")
    # 63 % of the tumours are benign: answering benign every time scores about 0.63.
    assert results["accuracy"] > 0.9 and results["auc"] > 0.95 and results["samples"] == 114


def test_the_onnx_export_matches_torch_with_no_label_to_compare_for_one_logit(released):
    invoke(released, "export", "--format", "onnx")
    (sidecar,) = glob.glob(str(released / "experiments" / "x" / "exports" / "*.release.onnx.json"))
    with open(sidecar) as file:
        check = json.load(file)["check"]
    assert check["tolerance_used"] <= 1 and check["samples"] == 115
    assert check["inputs"] == "the example instance and 114 test samples"
    assert check["argmax_agreement"] is None


def test_serve_answers_the_example_and_refuses_a_malformed_instance(released, state, tmp_path):
    command = [sys.executable, "-m", "breast_cancer", "--experiments-path", str(released / "experiments"), "--experiment-name", "x"]
    process = subprocess.Popen(
        [*command, "serve", "--port", "0", "--threads", "1"],
        cwd=tmp_path, env=environment(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        url = read_line(process.stdout, 60, "serving ").split(" at ")[1].split()[0]
        example = dict(zip(state["features"], FIRST_TUMOUR))
        with httpx.Client(base_url=url, timeout=30) as client:
            answer = client.post("/v1/models/x:predict", json={"instances": [example]})
            assert answer.status_code == 200, answer.text
            (prediction,) = answer.json()["predictions"]
            assert prediction["label"] == "malignant" and 0.5 < prediction["malignant"] <= 1
            answer = client.post("/v1/models/x:predict", json={"instances": [{**example, "mean radius": None}]})
            sentence = 'instances[0]: field "mean radius" must be a valid number, got null'
            assert (answer.status_code, answer.json()) == (400, {"error": sentence})
            # The Open Inference Protocol (V2): a row of the 30 values is an instance, as a list is in V1.
            metadata = client.get("/v2/models/x").json()
            assert metadata["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 30]}]  # the schema's list
            malignant, label = metadata["outputs"]
            assert (malignant["datatype"], label["datatype"], label["shape"]) == ("FP64", "BYTES", [-1])
            tensor = {"name": "input", "shape": [1, 30], "datatype": "FP32", "data": list(FIRST_TUMOUR)}
            answer = client.post("/v2/models/x/infer", json={"inputs": [tensor]})
            assert answer.status_code == 200, answer.text
            malignant, label = answer.json()["outputs"]
            listed = client.post("/v1/models/x:predict", json={"instances": [list(FIRST_TUMOUR)]})
            listed = listed.json()["predictions"][0]
            assert (malignant["data"], label["data"]) == ([listed["malignant"]], [listed["label"]])
            # The example has no page of its own: a browser gets torchexp's page of the API.
            answer = client.get("/", headers={"Accept": "text/html"})
            assert answer.status_code == 200 and "<code>/v1/models/{name}:predict</code>" in answer.text
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
        assert process.returncode == 0, stderr
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate(timeout=30)


def test_load_model_works_from_a_folder_outside_the_project(released, tmp_path):
    script = (
        "import json, sys, torch\n"
        "from torchexp import Experiments\n"
        "from breast_cancer.data import normalize\n"
        "from breast_cancer.runner import FIRST_TUMOUR\n"
        "model = Experiments(sys.argv[1])['x'].load_model('release')\n"
        "with open(sys.argv[2]) as file:\n"
        "    state = json.load(file)\n"
        "logit = model(normalize(torch.tensor([FIRST_TUMOUR]), state))\n"
        "print(json.dumps({'shape': list(logit.shape), 'malignant': torch.sigmoid(logit).item()}))\n"
    )
    experiments = released / "experiments"
    done = subprocess.run(
        [sys.executable, "-c", script, str(experiments), str(experiments / "x" / "data.json")],
        cwd=tmp_path, env=environment(), capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert answer["shape"] == [1, 1] and answer["malignant"] > 0.5
