"""Export formats (`torchexp.formats`): each one's export passes its check and its serve
runtime answers as torch does; the command line's choices are the registry's."""

import json
import pathlib
import platform
import shutil

import numpy as np
import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient

from mnist_classifier.__main__ import cli
from serve_fixtures import NAME, build_app, pixels_body, shared_release
from torchexp.errors import CheckpointError, ConfigError, TorchexpError
from torchexp.export import export_experiment, export_path
from torchexp.folder import Experiment
from torchexp.formats import FORMATS
from torchexp.formats.base import CHECK_ATOL, CHECK_RTOL
from torchexp.project import Project
from torchexp.serving.options import ServeOptions
from torchexp.serving.server import make_app
from torchexp.sidecar import read_sidecar

PREDICT = f"/v1/models/{NAME}:predict"


def invoke(root, *arguments: str):
    base = [
        "--experiments-path",
        str(root / "experiments"),
        "--data-path",
        str(root / "data"),
        "--experiment-name",
        NAME,
    ]
    return CliRunner().invoke(cli, [*base, *arguments])


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A copy of the shared tiny release with an export in every format, each made once
    through the command line (aoti compiles for tens of seconds)."""
    root = tmp_path_factory.mktemp("formats") / "root"
    shutil.copytree(pathlib.Path(shared_release(tmp_path_factory)).parent, root)  # experiments/ and data/
    for name in FORMATS:
        result = invoke(root, "export", "--format", name, "--check-samples", "20")
        assert result.exit_code == 0, result.output
    return root


@pytest.fixture(scope="module")
def torch_answers(exported):
    """What `serve --runtime torch` answers for five images."""
    return ask(exported, "torch")


IMAGES = [np.random.default_rng(seed).integers(0, 256, size=(28, 28)).tolist() for seed in range(5)]


def ask(root, runtime: str) -> list[dict]:
    app = build_app(str(root / "experiments"), runtime=runtime)
    with TestClient(app) as client:
        assert client.get(f"/v1/models/{NAME}").json()["runtime"] == runtime
        response = client.post(PREDICT, json=pixels_body(*IMAGES))
    assert response.status_code == 200, response.text
    return response.json()["predictions"]


@pytest.mark.parametrize("name", list(FORMATS))
def test_every_format_passes_its_check_and_its_runtime_answers_as_torch(exported, torch_answers, name):
    path = export_path(Experiment(str(exported / "experiments"), NAME), 1, name)
    assert path.endswith(f"1.release.{FORMATS[name].suffix}")
    record = read_sidecar(path)
    assert record["format"] == name and record["epoch"] == 1
    if FORMATS[name].compares_outputs:  # the example instance, then 20 test samples
        assert record["check"]["samples"] == 21 and record["check"]["tolerance_used"] <= 1
        assert record["check"]["inputs"] == "the example instance and 20 test samples"
    else:
        assert record["check"]["round_trip"] == "equal"

    answers = ask(exported, name)
    assert [p["label"] for p in answers] == [p["label"] for p in torch_answers]
    for answer, expected in zip(answers, torch_answers):
        assert answer["probabilities"] == pytest.approx(expected["probabilities"], abs=CHECK_ATOL, rel=CHECK_RTOL)


def test_the_aoti_export_records_the_machine_it_was_compiled_for(exported):
    record = read_sidecar(export_path(Experiment(str(exported / "experiments"), NAME), 1, "aoti"))
    from torch._inductor.cpu_vec_isa import pick_vec_isa

    assert record["target"]["cpu_isa"] == str(pick_vec_isa())
    assert record["compiler"] and record["versions"]["torch"]


@pytest.mark.parametrize(
    "target, sentence",
    [
        ({"machine": "sparc", "cpu_isa": "vis"}, f"was compiled for sparc, not this machine's {platform.machine()}"),
        ({"cpu_isa": "avx1024"}, r"uses avx1024 instructions, which this CPU lacks \(it has: "),
    ],
)
def test_an_aoti_export_for_another_cpu_is_refused_before_it_runs(exported, tmp_path, target, sentence):
    root = tmp_path / "root"
    shutil.copytree(exported, root)
    path = export_path(Experiment(str(root / "experiments"), NAME), 1, "aoti")
    record = read_sidecar(path)
    record["target"] = {**record["target"], **target}
    with open(path + ".json", "w") as file:  # the sidecar's other fields are not hashed
        json.dump(record, file)
    with pytest.raises(CheckpointError, match=sentence + r".*: write it with export --format aoti on this machine"):
        build_app(str(root / "experiments"), runtime="aoti")


def test_serving_aoti_without_its_export_names_the_command_that_writes_it(tmp_path_factory):
    experiments = shared_release(tmp_path_factory)
    with pytest.raises(
        CheckpointError, match=r"AOTInductor export .*1.release.pt2 does not exist: write it with export --format aoti$"
    ):
        build_app(experiments, runtime="aoti")


def test_aoti_without_a_cpp_compiler_is_one_sentence_and_writes_nothing(tmp_path, tmp_path_factory, monkeypatch):
    from torch._inductor import cpp_builder, exc

    root = tmp_path / "root"
    shutil.copytree(shared_release(tmp_path_factory), root / "experiments")

    def no_compiler():
        raise exc.InvalidCxxCompiler()

    monkeypatch.setattr(cpp_builder, "get_cpp_compiler", no_compiler)
    result = invoke(root, "export", "--format", "aoti")
    assert result.exit_code == TorchexpError.exit_code
    assert result.output == (
        "Error: export --format aoti compiles the model with a C++ compiler, and none was found: "
        "install g++ (e.g. apt-get install g++) or name one in the CXX environment variable\n"
    )
    assert not (root / "experiments" / NAME / "exports").exists()


def test_an_unknown_format_or_runtime_is_one_sentence(exported, tmp_path_factory):
    result = invoke(exported, "export", "--format", "tflite")
    assert result.exit_code == 2
    assert "Error: Invalid value for '--format': 'tflite' is not one of 'onnx', 'safetensors', 'aoti'." in result.output
    result = invoke(exported, "serve", "--runtime", "tflite")
    assert result.exit_code == 2
    assert (
        "Error: Invalid value for '--runtime': 'tflite' is not one of 'torch', 'onnx', 'safetensors', 'aoti'."
        in result.output
    )

    experiment = Experiment(str(exported / "experiments"), NAME)
    project = Project(
        "mnist_classifier.data:MNISTClassifierData",
        "mnist_classifier.runner:MNISTClassifierRunner",
        str(exported / "data"),
        "quiet",
    )
    with pytest.raises(ConfigError, match=r"^export format 'tflite' is not one of onnx, safetensors, aoti$"):
        export_experiment(project, experiment, None, "tflite", 20, None)
    with pytest.raises(ConfigError, match=r"^serve runtime 'tflite' is not one of torch, onnx, safetensors, aoti$"):
        make_app(experiment, ServeOptions(runtime="tflite", threads=1))


def test_the_command_line_offers_every_format_and_its_runtime():
    export_help = CliRunner().invoke(cli, ["export", "--help"], terminal_width=1000).output
    serve_help = CliRunner().invoke(cli, ["serve", "--help"], terminal_width=1000).output
    assert f"[{'|'.join(FORMATS)}]" in export_help
    assert f"[torch|{'|'.join(FORMATS)}]" in serve_help
    for name, fmt in FORMATS.items():
        assert f"{name}: {fmt.help}" in " ".join(export_help.split())
        assert f"{name} {fmt.runtime_help} (write it with `export --format {name}`)" in " ".join(serve_help.split())


def test_a_format_class_without_its_name_or_suffix_is_refused_when_defined():
    from torchexp.formats.base import ExportFormat

    with pytest.raises(TypeError, match="export format Partial does not set suffix, runtime_help"):

        class Partial(ExportFormat):
            name, title, help = "partial", "Partial", "nothing"
