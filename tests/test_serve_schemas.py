"""Declared instance schemas (Runner.serve_schema): a pydantic model or a JSON Schema checks
every instance before serve_preprocess, a faulty one is a 400 naming the instance and the
field, and /openapi.json shows the schema; a project that declares none is served as before.

The MNIST release declares an instance `{"pixels": 28 x 28 integers 0-255}` here, its hooks
patched to read it (`declare`)."""

import contextlib
import re
from typing import Annotated, Any, Iterator

import numpy as np
import pydantic
import pytest
from fastapi.testclient import TestClient
from jsonschema import Draft202012Validator
from jsonschema.exceptions import best_match

from mnist_classifier.runner import MNISTClassifierRunner
from serve_fixtures import NAME, build_app, shared_release
from torchexp.errors import ProjectError
from torchexp.serving.schemas import describe_json_schema_error

PREDICT = f"/v1/models/{NAME}:predict"
Row = Annotated[list[Annotated[int, pydantic.Field(ge=0, le=255)]], pydantic.Field(min_length=28, max_length=28)]


class Drawing(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(strict=True, extra="forbid")
    pixels: Annotated[list[Row], pydantic.Field(min_length=28, max_length=28)]


IMAGE_ROWS = {
    "type": "array",
    "minItems": 28,
    "maxItems": 28,
    "items": {"type": "integer", "minimum": 0, "maximum": 255},
}
DRAWING_SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "properties": {"pixels": {"$ref": "#/$defs/image"}},
    "required": ["pixels"],
    "additionalProperties": False,
    "$defs": {"image": {"type": "array", "minItems": 28, "maxItems": 28, "items": IMAGE_ROWS}},
}


@pytest.fixture(scope="module")
def experiments(tmp_path_factory) -> str:
    return shared_release(tmp_path_factory)


def image(seed: int) -> list:
    return np.random.default_rng(seed).integers(0, 256, size=(28, 28)).tolist()


def declare(monkeypatch, schema: Any) -> list:
    """Make MNIST's Runner declare `schema` for `{"pixels": ...}` instances; return the list
    of instances its serve_preprocess receives."""
    preprocess, seen = MNISTClassifierRunner.serve_preprocess, []

    def read_drawing(self, instance: Any) -> Any:
        seen.append(instance)
        return preprocess(self, instance["pixels"])

    monkeypatch.setattr(MNISTClassifierRunner, "serve_schema", lambda self: schema)
    monkeypatch.setattr(MNISTClassifierRunner, "serve_example", lambda self: {"pixels": [[0] * 28] * 28})
    monkeypatch.setattr(MNISTClassifierRunner, "serve_preprocess", read_drawing)
    return seen


@contextlib.contextmanager
def serve(experiments: str) -> Iterator[TestClient]:
    """A client of the release's app, its model warmed up."""
    with TestClient(build_app(experiments)) as client:
        assert client.app.state.batcher.ready.wait(10)
        yield client


def instances_schema(client: TestClient) -> tuple[dict, dict]:
    """The items of the predict route's instances in /openapi.json, and its components."""
    document = client.get("/openapi.json").json()
    body = document["paths"]["/v1/models/{name}:predict"]["post"]["requestBody"]["content"]["application/json"][
        "schema"
    ]
    return body["properties"]["instances"]["items"], document["components"]["schemas"]


@pytest.fixture
def undeclared(experiments):
    with TestClient(build_app(experiments)) as client:
        assert client.app.state.batcher.ready.wait(10)
        yield client


def test_a_pydantic_model_refuses_a_faulty_instance_before_serve_preprocess_naming_its_field(
    experiments, monkeypatch, undeclared
):
    expected = undeclared.post(PREDICT, json={"instances": [image(1), image(2)]}).json()
    seen = declare(monkeypatch, Drawing)
    faulty = image(2)
    faulty[27][3] = "abc"
    with serve(experiments) as client:
        seen.clear()  # the warm-up's
        answer = client.post(PREDICT, json={"instances": [{"pixels": image(1)}, {"pixels": faulty}]})
        assert (answer.status_code, answer.json()) == (
            400,
            {"error": 'instances[1]: field "pixels[27][3]" must be a valid integer, got "abc"'},
        )
        assert seen == []  # not even the valid instance 0 was preprocessed
        answer = client.post(PREDICT, json={"instances": [{"pixels": image(1), "label": 3}]})
        assert answer.json() == {"error": 'instances[0]: field "label" is unknown'}
        answer = client.post(PREDICT, json={"instances": [{"pixels": image(1)[:27]}]})
        assert answer.json() == {"error": 'instances[0]: field "pixels": list should have at least 28 items, not 27'}
        answer = client.post(PREDICT, json={"instances": [[[0] * 28] * 28]})
        assert answer.json() == {"error": "instances[0]: the instance must be an object, got an array of 28 items"}
        declared = client.post(PREDICT, json={"instances": [{"pixels": image(1)}, {"pixels": image(2)}]})
        assert declared.status_code == 200 and [instance["pixels"] for instance in seen] == [image(1), image(2)]
    # The undeclared project's predictions for the same pixels (MNIST adds the image it read for an object).
    assert [
        {key: prediction[key] for key in ("label", "probabilities")} for prediction in declared.json()["predictions"]
    ] == expected["predictions"]


def test_a_pydantic_model_is_the_predict_routes_instance_in_openapi(experiments, monkeypatch):
    declare(monkeypatch, Drawing)
    with serve(experiments) as client:
        items, components = instances_schema(client)
    assert items["required"] == ["pixels"] and items["additionalProperties"] is False
    pixels = items["properties"]["pixels"]
    assert (pixels["minItems"], pixels["maxItems"], pixels["items"]["items"]["maximum"]) == (28, 28, 255)


def test_a_json_schema_refuses_a_faulty_instance_naming_its_field_and_is_in_openapi(experiments, monkeypatch):
    seen = declare(monkeypatch, DRAWING_SCHEMA)
    bright = image(4)
    bright[3][4] = 300
    with serve(experiments) as client:
        seen.clear()
        for instance, sentence in [
            ({"pixels": image(3), "label": 3}, 'field "label" is unknown'),
            ({}, 'field "pixels" is missing'),
            ({"pixels": bright}, 'field "pixels[3][4]" must be at most 255, got 300'),
            ({"pixels": image(3)[:27]}, 'field "pixels" must hold at least 28 items, got an array of 27 items'),
            ("seven", 'the instance must be an object, got "seven"'),
        ]:
            answer = client.post(PREDICT, json={"instances": [{"pixels": image(3)}, instance]})
            assert (answer.status_code, answer.json()) == (400, {"error": f"instances[1]: {sentence}"})
        assert seen == []
        assert client.post(PREDICT, json={"instances": [{"pixels": image(3)}]}).status_code == 200
        items, components = instances_schema(client)
    # The schema's own definitions become OpenAPI components, its references pointing there.
    assert items["properties"]["pixels"] == {"$ref": "#/components/schemas/image"} and "$schema" not in items
    assert components["image"]["items"] == IMAGE_ROWS


def test_a_project_that_declares_nothing_is_served_as_before(undeclared):
    assert undeclared.app.state.batcher.pipeline.schema is None
    items, _ = instances_schema(undeclared)
    assert items == {}  # any JSON
    answer = undeclared.post(PREDICT, json={"instances": [{"pixels": image(1)}]})
    assert answer.json() == {
        "error": 'instances[0]: an image instance must be {"b64": "<base64 PNG>"}, '
        "not an object with keys ['pixels']"
    }


@pytest.mark.parametrize(
    "declared, sentence",
    [
        (
            {"type": "picture"},
            'MNISTClassifierRunner.serve_schema returned an invalid JSON Schema: at "type", '
            "'picture' is not valid under any of the given schemas",
        ),
        (
            42,
            "MNISTClassifierRunner.serve_schema returned 42, which is neither a JSON Schema (a dict) "
            "nor a type pydantic can validate: ",
        ),
    ],
)
def test_a_declaration_that_is_no_schema_is_one_sentence_at_start(experiments, monkeypatch, declared, sentence):
    monkeypatch.setattr(MNISTClassifierRunner, "serve_schema", lambda self: declared)
    with pytest.raises(ProjectError, match=f"^{re.escape(sentence)}"):
        build_app(experiments)


def test_a_failing_declaration_names_the_hook(experiments, monkeypatch):
    def serve_schema(self):
        return self.data.state["instance_schema"]

    monkeypatch.setattr(MNISTClassifierRunner, "serve_schema", serve_schema)
    with pytest.raises(
        ProjectError, match=r"^MNISTClassifierRunner\.serve_schema failed: KeyError: 'instance_schema'$"
    ):
        build_app(experiments)


@pytest.mark.parametrize(
    "schema, instance, sentence",
    [
        ({"type": "number"}, "abc", 'the instance must be a number, got "abc"'),
        ({"type": ["string", "null"]}, 3, "the instance must be a string or null, got 3"),
        (
            {"properties": {"a": {"properties": {"b": {"type": "integer"}}}}},
            {"a": {"b": 1.5}},
            'field "a.b" must be an integer, got 1.5',
        ),
        (
            {"properties": {"size": {"enum": ["s", "m"]}}},
            {"size": "xl"},
            'field "size" must be one of ["s", "m"], got "xl"',
        ),
        ({"properties": {"x": {"exclusiveMinimum": 0}}}, {"x": 0}, 'field "x" must be more than 0, got 0'),
        ({"items": {"maxLength": 2}}, ["ab", "abc"], 'value [1] must be at most 2 characters long, got "abc"'),
        (
            {"anyOf": [{"type": "object"}, {"type": "array"}]},
            "benign?",
            'the instance must match one of the schema\'s alternatives, got "benign?"',
        ),
        ({"patternProperties": {"^x_": {}}, "additionalProperties": False}, {"x_1": 1, "y": 2}, 'field "y" is unknown'),
    ],
)
def test_json_schema_faults_are_one_sentence(schema, instance, sentence):
    assert describe_json_schema_error(best_match(Draft202012Validator(schema).iter_errors(instance))) == sentence


def test_a_long_value_is_cut_in_the_sentence():
    error = best_match(Draft202012Validator({"type": "number"}).iter_errors("x" * 100))
    assert describe_json_schema_error(error) == 'the instance must be a number, got "' + "x" * 36 + "..."
