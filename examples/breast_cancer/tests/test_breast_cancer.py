"""Tests of breast_cancer: its command line end to end, and its model."""

import json

import torch
from click.testing import CliRunner

from breast_cancer.__main__ import cli
from breast_cancer.model import CLASSES, build_model


def run(tmp_path, *args: str):
    """Run the command line on an experiment `x` under tmp_path; return click's result."""
    base = ["--experiments-path", str(tmp_path / "experiments"), "--experiment-name", "x"]
    return CliRunner().invoke(cli, [*base, *args], catch_exceptions=False)


def test_init_train_test(tmp_path):
    assert run(tmp_path, "init").exit_code == 0
    result = run(tmp_path, "train", "--max-epochs", "2", "--device", "cpu")
    assert result.exit_code == 0, result.output
    result = run(tmp_path, "test", "--device", "cpu")
    assert result.exit_code == 0, result.output
    with open(tmp_path / "experiments" / "x" / "results" / "2.standard.test.json") as file:
        results = json.load(file)["results"]
    # The clouds overlap: about 0.92 is the best a model can do, chance is 0.5.
    assert results["accuracy"] > 0.8 and results["samples"] == 400


def test_model_scores_every_class_of_every_point():
    model = build_model(hidden=4)
    assert model(torch.zeros(5, 2)).shape == (5, CLASSES)
