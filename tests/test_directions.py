"""Metric directions: the name rule, a Runner's `metric_directions`, its record in the
experiment folder, and what follows it: `compare` (and `--direction`), `best()`,
`create_release`, trainer.keep_checkpoints, early stopping and the search's study."""

import json
import os
import re
import shutil

import pytest
import torch
from click.testing import CliRunner
from torch import nn

import torchexp
from torchexp import checkpoints
from torchexp.directions import declared_directions, direction_of, parse_direction_overrides, read_directions
from torchexp.directions import record_directions
from torchexp.errors import ConfigError, ExperimentError
from torchexp.folder import Experiment
from torchexp.retention import choose_removals

# The validation r2 of each epoch, in binary fractions so that averaging over batches keeps
# them exact. By its name r2 is better lower (epoch 1); the Runner declares it better higher (epoch 2).
R2 = [0.25, 0.75, 0.5]
MONITOR = "trainer.monitor=validation.r2"
USE = "use 'max' or 'min' ('maximize', 'minimize')"
MALFORMED = f"--direction 'r2=up' gives metric 'r2' the direction 'up': {USE}"
SCHEMA = {
    "type": "object",
    "properties": {
        "r2": {"type": "array", "items": {"type": "number"}, "default": R2, "description": "validation r2 per epoch"},
        "lr": {"type": "number", "default": 0.01, "description": "learning rate"},
    },
}


class LineData(torchexp.Data):
    """y = 2x + 1 for x = 0..9, in one feature column."""

    def create(self, data_path):
        return {}

    def load_datasets(self, data_path):
        x = torch.arange(10, dtype=torch.float32).unsqueeze(1)
        self.datasets = {"train": (x, 2 * x + 1), "validation": (x, 2 * x + 1)}

    def load_loaders(self, data_path, num_workers):
        self.loaders = {split: torchexp.TensorLoader(tensors, batch_size=4) for split, tensors in self.datasets.items()}


class RegressionRunner(torchexp.Runner):
    """Linear regression whose validation r2 is the config's `r2` of each epoch."""

    metric_directions = {"r2": "max"}

    def init_model(self, device):
        torch.manual_seed(0)
        self.model = nn.Linear(1, 1).to(device)

    def init_optimizer(self, device):
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=self.get_conf("lr"))

    def train_step(self, batch, device):
        x, y = batch
        return ((self.model(x) - y) ** 2).mean()

    def validation_step(self, batch, device):
        return {"loss": self.train_step(batch, device), "r2": torch.tensor(self.get_conf("r2")[self.counters["epoch"]])}

    def test(self, epoch, device):
        return {}


class MisdeclaredRunner(RegressionRunner):
    metric_directions = {"r2": "up"}


cli = torchexp.make_cli(LineData, RegressionRunner)


def invoke(root, *args, name="reg", group=cli, code=0):
    """Run a command line on root's experiments; assert its exit code and one-sentence errors."""
    base = ["--experiments-path", os.path.join(root, "experiments"), "--data-path", os.path.join(root, "data")]
    base += ["--experiment-name", name]
    result = CliRunner().invoke(group, [*base, *args], catch_exceptions=False)
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    return result


def write_project_files(root) -> tuple[str, str]:
    """Write the project's (empty) config file and its schema under root; return their paths."""
    paths = (os.path.join(root, "config.json"), os.path.join(root, "schema.json"))
    for path, value in zip(paths, ({}, SCHEMA)):
        with open(path, "w") as file:
            json.dump(value, file)
    return paths


def init(root, *settings, name="reg", group=cli):
    """`init` a regression experiment with `--set` settings."""
    config, schema = write_project_files(root)
    sets = [arg for setting in settings for arg in ("--set", setting)]
    invoke(root, "init", "--config-path", config, "--schema-path", schema, *sets, name=name, group=group)


def compare_best(root, *args):
    """compare --json's best validation metrics of experiment "reg": {metric: {"value", "epoch"}}."""
    rows = json.loads(invoke(root, "compare", "--json", *args).stdout)
    return next(row for row in rows if row["name"] == "reg")["best"]["validation"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> str:
    """A root whose experiment "reg" trained 3 epochs, its monitor the validation r2; read-only."""
    root = str(tmp_path_factory.mktemp("directions"))
    init(root, "trainer.max_epochs=3", MONITOR)
    invoke(root, "train", "--device", "cpu")
    return root


@pytest.fixture
def copy(trained, tmp_path) -> str:
    """A copy of the trained root that a test may change."""
    shutil.copytree(os.path.join(trained, "experiments"), os.path.join(tmp_path, "experiments"))
    return str(tmp_path)


def test_undeclared_metrics_go_by_their_names_and_declared_ones_as_declared():
    names = ("loss", "val_accuracy", "f1", "mae", "r2")
    assert [direction_of(name, {}) for name in names] == ["minimize", "maximize", "maximize", "minimize", "minimize"]
    assert direction_of("r2", {"r2": "maximize"}) == "maximize"
    assert direction_of("accuracy", {"accuracy": "minimize"}) == "minimize"


def test_a_declaration_is_normalized_and_a_mistake_in_it_is_one_sentence():
    assert declared_directions(RegressionRunner) == {"r2": "maximize"}
    assert declared_directions(torchexp.Runner) == {}
    message = "MisdeclaredRunner.metric_directions gives metric 'r2' the direction 'up': " + USE
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}$"):
        declared_directions(MisdeclaredRunner)
    listed = type("ListedRunner", (), {"metric_directions": ["r2"]})
    message = "ListedRunner.metric_directions must be a dict of metric names to 'max' or 'min', not list"
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}$"):
        declared_directions(listed)


def test_direction_overrides_are_read_and_a_malformed_one_is_one_sentence():
    assert parse_direction_overrides(["r2=max", "mae=minimize", "r2=min"]) == {"r2": "minimize", "mae": "minimize"}
    with pytest.raises(ConfigError, match=r"^--direction 'r2' must look like NAME=max or NAME=min, e.g. r2=max$"):
        parse_direction_overrides(["r2"])
    with pytest.raises(ConfigError, match=f"^{re.escape(MALFORMED)}$"):
        parse_direction_overrides(["r2=up"])


def test_the_record_reads_back_and_a_missing_one_is_empty(tmp_path):
    experiment = Experiment(str(tmp_path), "x")
    os.makedirs(experiment.path)
    assert read_directions(experiment) == {}
    record_directions(experiment, {"r2": "maximize"})
    assert read_directions(experiment) == {"r2": "maximize"}
    with open(experiment.directions_path, "w") as file:
        json.dump({"metric_directions": {"r2": "sideways"}}, file)
    where = f"directions of experiment 'x' ({experiment.directions_path})"
    message = f"{where} gives metric 'r2' the direction 'sideways': {USE}"
    with pytest.raises(ExperimentError, match=f"^{re.escape(message)}$"):
        read_directions(experiment)


def test_train_records_the_runners_declared_directions(trained):
    assert read_directions(Experiment(os.path.join(trained, "experiments"), "reg")) == {"r2": "maximize"}


def test_compare_and_best_take_the_declared_direction(trained):
    best = compare_best(trained)
    assert best["r2"] == {"value": 0.75, "epoch": 2}
    view = torchexp.Experiments(os.path.join(trained, "experiments"))["reg"]
    assert view.best("validation", "r2") == (2, 0.75)
    assert view.best("validation", "r2", direction="min") == (1, 0.25)
    assert best["loss"]["epoch"] == view.best("validation", "loss")[0]  # undeclared: by its name, the lowest


def test_compare_direction_overrides_the_declaration_for_one_look(trained):
    assert compare_best(trained, "--direction", "r2=min")["r2"] == {"value": 0.25, "epoch": 1}
    assert compare_best(trained)["r2"]["epoch"] == 2  # nothing was written


@pytest.mark.parametrize(
    "value, message",
    [
        ("r2", "Error: --direction 'r2' must look like NAME=max or NAME=min, e.g. r2=max"),
        ("r2=up", f"Error: {MALFORMED}"),
        ("r3=max", "Error: --direction names 'r3', which no compared experiment validates (they validate loss, r2)"),
    ],
)
def test_a_malformed_direction_is_one_sentence_and_exit_code_2(trained, value, message):
    result = invoke(trained, "compare", "--direction", value, code=2)
    assert result.output.strip() == message


def test_create_release_releases_the_best_epoch_in_the_declared_direction(copy):
    result = invoke(copy, "create_release")
    assert "released epoch 2 (the highest validation r2, 0.75, among epochs 1-3)" in result.output
    releases = checkpoints.list_checkpoints(os.path.join(copy, "experiments", "reg", "checkpoints"), ("release",))
    assert [info.epoch for info in releases] == [2]


def test_an_experiment_trained_before_the_record_goes_by_the_names(copy):
    os.remove(os.path.join(copy, "experiments", "reg", "directions.json"))
    assert compare_best(copy)["r2"] == {"value": 0.25, "epoch": 1}
    assert torchexp.Experiments(os.path.join(copy, "experiments"))["reg"].best("validation", "r2") == (1, 0.25)
    result = invoke(copy, "create_release")
    assert "released epoch 1 (the lowest validation r2, 0.25, among epochs 1-3)" in result.output


def test_early_stopping_waits_for_the_monitor_to_improve_in_its_declared_direction(tmp_path):
    # Higher is better: epoch 2's 0.75 is not beaten by epochs 3 and 4, so training stops
    # after epoch 4; by the name rule epoch 1's 0.25 would stop it after epoch 3.
    r2 = [0.25, 0.75, 0.5, 0.375, 0.25, 0.125]
    init(str(tmp_path), f"r2={json.dumps(r2)}", "trainer.max_epochs=6", "trainer.early_stopping_patience=2", MONITOR)
    invoke(str(tmp_path), "train", "--device", "cpu")
    view = torchexp.Experiments(str(tmp_path / "experiments"))["reg"]
    assert (view.stop.reason, view.epochs) == ("early_stopping", 4)


def test_a_monitor_the_project_does_not_log_is_one_sentence(tmp_path):
    init(str(tmp_path), "trainer.max_epochs=2", "trainer.early_stopping_patience=1", "trainer.monitor=validation.r3")
    result = invoke(str(tmp_path), "train", "--device", "cpu", code=2)
    message = "Error: trainer.monitor 'validation.r3' is not a metric the project logs: "
    assert message + "its validation metrics are loss, r2" in result.output


def test_a_misdeclared_direction_stops_train_before_any_epoch(tmp_path):
    group = torchexp.make_cli(LineData, MisdeclaredRunner)
    init(str(tmp_path), name="bad", group=group)
    result = invoke(str(tmp_path), "train", "--device", "cpu", name="bad", group=group, code=2)
    assert "Error: MisdeclaredRunner.metric_directions gives metric 'r2' the direction 'up'" in result.output
    assert checkpoints.list_checkpoints(str(tmp_path / "experiments" / "bad" / "checkpoints")) == []


def test_keep_checkpoints_keeps_the_best_by_the_monitor_in_its_direction():
    def standard(epoch, r2):
        sidecar = {"metrics": {"validation": {"r2": r2}}}
        return checkpoints.Checkpoint(epoch, "standard", f"{epoch}.checkpoint.pt", sidecar)

    found = [standard(epoch, r2) for epoch, r2 in enumerate([0.9, 0.2, 0.5, 0.4], start=1)]
    assert [item.epoch for item in choose_removals(found, 1, "validation.r2", "maximize")] == [2, 3]  # 1 is the best
    assert [item.epoch for item in choose_removals(found, 1, "validation.r2", "minimize")] == [1, 3]


def test_the_search_study_takes_the_declared_direction_of_its_metric(tmp_path):
    config, schema = write_project_files(str(tmp_path))
    space = tmp_path / "space.json"
    space.write_text(json.dumps({"config": config, "parameters": {"lr": {"choice": [0.01]}}}))
    files = ["--space", str(space), "--schema-path", schema, "--device", "cpu"]
    options = ["--trials", "1", "--max-epochs", "1", "--pruner", "none", "--metric", "validation.r2"]
    invoke(str(tmp_path), "search", *files, *options, name="study")
    with open(tmp_path / "experiments" / "study" / "study.json") as file:
        assert json.load(file)["direction"] == "maximize"
