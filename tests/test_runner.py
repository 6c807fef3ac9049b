"""The training and test pipelines of Runner, driven by a tiny regression project."""

import json
import os

import pytest
import torch
from torch import nn

import torchexp
import torchexp.memory
from torchexp.config import TRAINER_SCHEMA, Config, fill_defaults, validate_config
from torchexp.errors import CheckpointError, ConfigError, ProjectError
from torchexp.folder import Experiment
from torchexp.loaders import TensorLoader
from torchexp.releases import create_release
from torchexp.logs import close_logger, make_logger
from torchexp.trackers.fanout import RunTrackers
from torchexp import loop
from torchexp import evaluation

SIZE, BATCH = 10, 4  # batches of 4, 4 and 2 samples: batch means differ from sample means
SCHEMA = {"type": "object", "properties": {"trainer": TRAINER_SCHEMA}}


class TinyData(torchexp.Data):
    """x = 0..9, y = 2x + 1, in one feature column."""

    def create(self, data_path):
        return {}

    def load_datasets(self, data_path):
        x = torch.arange(SIZE, dtype=torch.float32).unsqueeze(1)
        self.datasets = {"train": (x, 2 * x + 1), "validation": (x, 2 * x + 1)}

    def load_loaders(self, data_path, num_workers):
        self.loaders = {split: TensorLoader(tensors, batch_size=BATCH) for split, tensors in self.datasets.items()}


class TinyRunner(torchexp.Runner):
    """Linear regression; reports the mean input of each batch as a metric."""

    lr = 0.01

    def init_model(self, device):
        torch.manual_seed(0)
        self.model = nn.Linear(1, 1).to(device)

    def init_optimizer(self, device):
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=self.lr)

    def train_step(self, batch, device):
        x, y = batch
        return {"loss": ((self.model(x) - y) ** 2).mean(), "x_mean": x.mean()}

    def test(self, epoch, device):
        x, y = self.data.datasets["validation"]
        return {"mse": ((self.model(x) - y) ** 2).mean().item(), "training": self.model.training}


def make_runner(tmp_path, runner_class=TinyRunner, **trainer):
    """Build a runner on the experiment `tmp_path/experiments/r`, creating it the first time."""
    conf = fill_defaults({"trainer": trainer}, SCHEMA)
    validate_config(conf, SCHEMA)
    experiment = Experiment(str(tmp_path / "experiments"), "r")
    if not experiment.exists():
        experiment.create({"seed": 0, "versions": {}, "config": conf}, {})
    logger = make_logger("r", experiment.log_path, "quiet")
    data = TinyData(Config(conf), 0, logger)
    data.load_datasets("")
    data.load_loaders("", 0)
    tracker = RunTrackers(experiment.tensorboard_path, experiment.metrics_path)
    return runner_class(experiment, Config(conf), 0, data, logger, tracker, quiet=True)


def finish(runner):
    runner.tracker.close()
    close_logger(runner.logger)


def train(tmp_path, runner_class=TinyRunner, max_epochs=1, log_period=100, epoch=None, **trainer):
    runner = make_runner(tmp_path, runner_class, **trainer)
    try:
        loop.train(runner, torch.device("cpu"), max_epochs, log_period, epoch)
    finally:
        finish(runner)
    return runner


def test_an_incomplete_runner_fails_when_constructed(tmp_path):
    class Incomplete(torchexp.Runner):
        def init_model(self, device):
            pass

    with pytest.raises(TypeError, match=r"Can't instantiate abstract class Incomplete"):
        make_runner(tmp_path, Incomplete)


def test_an_incomplete_data_fails_when_constructed():
    class Incomplete(torchexp.Data):
        def create(self, data_path):
            return {}

    with pytest.raises(TypeError, match=r"Can't instantiate abstract class Incomplete"):
        Incomplete(Config({}), 0)


def test_metrics_are_averaged_over_samples_not_batches(tmp_path):
    runner = train(tmp_path)
    # Batch means of x are 1.5, 5.5 and 8.5 over 4, 4 and 2 samples: 4.5 per sample, 5.17 per batch.
    assert runner.history["train"][0]["x_mean"] == 4.5
    assert runner.history["validation"][0]["x_mean"] == 4.5


def test_epoch_metrics_reach_metrics_jsonl_and_the_checkpoint_record(tmp_path):
    runner = train(tmp_path)
    lines = [json.loads(line) for line in open(runner.experiment.metrics_path)]
    by_kind = {line["kind"]: line for line in lines}
    assert by_kind["train"]["metrics"]["x_mean"] == 4.5 and by_kind["train"]["metrics"]["lr"] == TinyRunner.lr
    assert by_kind["validation"]["metrics"]["x_mean"] == 4.5
    with open(os.path.join(runner.experiment.checkpoints_path, "1.checkpoint.pt.json")) as file:
        record = json.load(file)
    assert record["metrics"]["train"]["x_mean"] == 4.5


class TensorLossRunner(TinyRunner):
    def train_step(self, batch, device):
        x, y = batch
        return ((self.model(x) - y) ** 2).mean()


def test_train_step_may_return_the_loss_tensor_alone(tmp_path):
    runner = train(tmp_path, TensorLossRunner)
    assert set(runner.history["train"][0]) == {"loss"}
    assert runner.history["train"][0]["loss"] > 0


class NoLossRunner(TinyRunner):
    def train_step(self, batch, device):
        return {"error": self.model(batch[0]).mean()}


class FloatRunner(TinyRunner):
    def train_step(self, batch, device):
        return 0.5


@pytest.mark.parametrize(
    "runner_class, returned", [(NoLossRunner, "a dict without 'loss' \\(its keys: error\\)"), (FloatRunner, "a float")]
)
def test_train_step_returning_no_loss_is_a_project_error_naming_what_it_returned(tmp_path, runner_class, returned):
    sentence = rf"^{runner_class.__name__}.train_step returned {returned}: return the loss \(a 0-dim tensor\) or a dict"
    with pytest.raises(ProjectError, match=sentence):
        train(tmp_path, runner_class)


class NoModelRunner(TinyRunner):
    def init_model(self, device):
        self.model = "a model"


def test_init_model_must_set_a_module(tmp_path):
    with pytest.raises(TypeError, match=r"init_model must set self.model to a torch.nn.Module, not str"):
        train(tmp_path, NoModelRunner)


class HookRunner(TinyRunner):
    """Records every hook call in `calls` (class-wide, so that it survives runners)."""

    calls: list = []

    def init_model(self, device):
        self.calls.append("init_model")
        super().init_model(device)

    def init_optimizer(self, device):
        self.calls.append("init_optimizer")
        super().init_optimizer(device)

    def init_others(self, device):
        self.calls.append("init_others")
        self.scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, step_size=1, gamma=0.5)

    def load_states_others(self, state):
        self.calls.append(("load_states_others", state))

    def train_before_epoch_tasks(self, device):
        self.calls.append("train_before_epoch_tasks")

    def train_step(self, batch, device):
        self.calls.append("train_step")
        return super().train_step(batch, device)

    def train_iteration_log(self, metrics):
        self.calls.append("train_iteration_log")
        super().train_iteration_log(metrics)

    def validation_step(self, batch, device):
        self.calls.append(("validation_step", self.model.training, torch.is_grad_enabled()))
        return TinyRunner.train_step(self, batch, device)

    def train_epoch_log(self, epoch, train, validation, seconds):
        self.calls.append("train_epoch_log")
        super().train_epoch_log(epoch, train, validation, seconds)

    def train_after_epoch_tasks(self, device):
        self.calls.append(("train_after_epoch_tasks", self.optimizer.param_groups[0]["lr"]))

    def save_states_others(self):
        self.calls.append(("save_states_others", self.optimizer.param_groups[0]["lr"]))
        return {"saved_at_epoch": self.counters["epoch"]}

    def train_early_stopping(self):
        self.calls.append("train_early_stopping")
        return super().train_early_stopping()


def test_hooks_are_called_in_the_documented_order(tmp_path):
    HookRunner.calls = []
    train(tmp_path, HookRunner, max_epochs=2, log_period=2)
    validation = [("validation_step", False, False)] * 3
    lr = TinyRunner.lr

    def epoch_end(lr_before):
        # The scheduler steps between train_after_epoch_tasks and the checkpoint.
        return [
            "train_epoch_log",
            ("train_after_epoch_tasks", lr_before),
            ("save_states_others", lr_before / 2),
            "train_early_stopping",
        ]

    assert HookRunner.calls == [
        "init_model", "init_optimizer", "init_others",
        "train_before_epoch_tasks", "train_step", "train_step", "train_iteration_log", "train_step",
        *validation, *epoch_end(lr),
        "train_before_epoch_tasks", "train_step", "train_iteration_log", "train_step", "train_step", "train_iteration_log",
        *validation, *epoch_end(lr / 2),
    ]  # fmt: skip

    HookRunner.calls = []
    train(tmp_path, HookRunner, max_epochs=3, log_period=100)
    assert HookRunner.calls[:6] == [
        "init_model", "init_optimizer", "init_others", ("load_states_others", {"saved_at_epoch": 2}),
        "train_early_stopping", "train_before_epoch_tasks",
    ]  # fmt: skip


def test_scheduler_is_saved_and_restored(tmp_path):
    HookRunner.calls = []
    train(tmp_path, HookRunner, max_epochs=2)
    resumed = train(tmp_path, HookRunner, max_epochs=2)  # nothing left to do: restores only
    assert resumed.counters["epoch"] == 2
    assert resumed.scheduler.last_epoch == 2
    assert resumed.optimizer.param_groups[0]["lr"] == pytest.approx(TinyRunner.lr / 4)
    resumed = train(tmp_path, HookRunner, max_epochs=3)
    assert resumed.optimizer.param_groups[0]["lr"] == pytest.approx(TinyRunner.lr / 8)


def test_resuming_logs_the_checkpoint_it_resumed_from(tmp_path):
    train(tmp_path, max_epochs=2)
    runner = train(tmp_path, max_epochs=3)
    with open(runner.experiment.log_path) as file:
        log = file.read()
    assert "no checkpoint to resume from: training from scratch" in log
    assert "resumed from 2.checkpoint.pt: 2 epochs done" in log
    assert len(runner.history["train"]) == 3


class PlateauRunner(TinyRunner):
    """Validation losses 1.0, 0.5, then worse and worse."""

    losses = [1.0, 0.5, 0.6, 0.7, 0.8, 0.9]

    def validation_step(self, batch, device):
        return torch.tensor(self.losses[self.counters["epoch"]])


def test_early_stopping_stops_after_patience_epochs_without_improvement(tmp_path):
    runner = train(tmp_path, PlateauRunner, max_epochs=6, early_stopping_patience=2)
    assert runner.counters["epoch"] == 4  # epochs 3 and 4 did not beat epoch 2's 0.5
    assert [entry["loss"] for entry in runner.history["validation"]] == pytest.approx([1.0, 0.5, 0.6, 0.7])
    assert sorted(os.listdir(runner.experiment.checkpoints_path))[-2:] == ["4.checkpoint.pt", "4.checkpoint.pt.json"]
    with open(runner.experiment.log_path) as file:
        assert "early stopping after epoch 4" in file.read()


def test_training_again_after_an_early_stop_trains_no_further(tmp_path):
    train(tmp_path, PlateauRunner, max_epochs=6, early_stopping_patience=2)
    assert train(tmp_path, PlateauRunner, max_epochs=6, early_stopping_patience=2).counters["epoch"] == 4


def test_without_patience_training_runs_every_epoch(tmp_path):
    assert train(tmp_path, PlateauRunner, max_epochs=6).counters["epoch"] == 6


class SlopeRunner(TinyRunner):
    """loss = scale * w * mean(x) with w starting at 0: the gradient of w is scale * mean(x)."""

    lr, scale = 1.0, 1.0

    def init_model(self, device):
        self.model = nn.Linear(1, 1, bias=False)
        nn.init.zeros_(self.model.weight)
        self.weights = []

    def init_optimizer(self, device):
        super().init_optimizer(device)
        self.optimizer.register_step_post_hook(lambda *args: self.weights.append(self.model.weight.item()))

    def train_step(self, batch, device):
        return self.scale * self.model(batch[0]).mean()


def test_grad_accumulation_sums_gradients_over_batches_before_stepping(tmp_path):
    runner = train(tmp_path, SlopeRunner, grad_accumulation=2)
    # Batches with mean x 1.5 and 5.5 are accumulated, each loss divided by 2; then the last batch.
    assert len(runner.weights) == 2
    assert runner.weights[0] == pytest.approx(-(1.5 + 5.5) / 2)


def test_without_accumulation_every_batch_steps(tmp_path):
    runner = train(tmp_path, SlopeRunner)
    assert runner.weights == pytest.approx([-1.5, -7.0, -15.5])


class SteepRunner(SlopeRunner):
    scale = 1000.0


def test_grad_clip_norm_bounds_each_update(tmp_path):
    runner = train(tmp_path, SteepRunner, grad_clip_norm=0.1)
    assert runner.weights == pytest.approx([-0.1, -0.2, -0.3])


@pytest.mark.parametrize("keep", [True, False])
@pytest.mark.parametrize("phase", ["train", "test"])
def test_keep_freed_memory_is_applied_before_training_and_testing_when_configured(tmp_path, monkeypatch, keep, phase):
    if phase == "test":
        train(tmp_path, keep_freed_memory=keep)
    calls = []
    monkeypatch.setattr(torchexp.memory, "keep_freed_memory", lambda: calls.append("kept") or True)
    if phase == "train":
        train(tmp_path, keep_freed_memory=keep)
    else:
        runner = make_runner(tmp_path, keep_freed_memory=keep)
        try:
            evaluation.run_test(runner, torch.device("cpu"), 1, release=False)
        finally:
            finish(runner)
    assert calls == (["kept"] if keep else [])


def test_an_experiment_without_newer_trainer_options_trains_with_their_defaults(tmp_path):
    make_runner(tmp_path)
    record_path = tmp_path / "experiments" / "r" / "config.json"
    record = json.loads(record_path.read_text())
    del record["config"]["trainer"]["keep_freed_memory"]
    record_path.write_text(json.dumps(record))
    app = torchexp.App(TinyData, TinyRunner, "r", str(tmp_path / "experiments"), str(tmp_path), "quiet")
    experiment = app.open_experiment()
    runner = app.project.make_runner(experiment, experiment.read_definition(), 0)
    finish(runner)
    assert runner.get_conf("trainer", "keep_freed_memory") is None  # kept, except under fsdp


class ConvData(TinyData):
    def load_datasets(self, data_path):
        # Two channels: a one-channel batch is channels-last contiguous whatever its layout.
        images = torch.randn(SIZE, 2, 6, 6, generator=torch.Generator().manual_seed(0))
        self.datasets = {"train": (images, torch.arange(SIZE) % 2)}


class ConvRunner(TinyRunner):
    """A conv net; records the input layout and the autocast dtype its steps see."""

    def init_model(self, device):
        self.model = nn.Sequential(nn.Conv2d(2, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(64, 2))
        self.seen = []

    def train_step(self, batch, device):
        images, labels = batch
        output = self.model(images)
        self.seen.append((images.is_contiguous(memory_format=torch.channels_last), output.dtype))
        return nn.functional.cross_entropy(output.float(), labels)


def train_conv(tmp_path, **trainer):
    runner = make_runner(tmp_path, ConvRunner, **trainer)
    runner.data = ConvData(runner.config, 0)
    runner.data.load_datasets("")
    runner.data.load_loaders("", 0)
    try:
        loop.train(runner, torch.device("cpu"), 1, 100)
    finally:
        finish(runner)
    return runner


def test_bf16_precision_and_channels_last_run_on_the_cpu(tmp_path):
    runner = train_conv(tmp_path, precision="bf16", channels_last=True)
    assert runner.seen == [(True, torch.bfloat16)] * 3
    assert runner.model[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert torch.isfinite(torch.tensor(runner.history["train"][0]["loss"]))


def test_fp32_precision_uses_no_autocast(tmp_path):
    runner = train_conv(tmp_path)
    assert runner.seen == [(False, torch.float32)] * 3


def test_fp16_precision_on_the_cpu_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match=r"trainer.precision fp16 needs a CUDA device, not cpu: use auto, bf16 or fp32"):
        train(tmp_path, precision="fp16")
    assert os.listdir(os.path.join(tmp_path, "experiments", "r", "checkpoints")) == []


def test_run_test_loads_the_epoch_evaluates_in_eval_mode_and_saves_results(tmp_path):
    train(tmp_path, max_epochs=2)
    runner = make_runner(tmp_path)
    try:
        results = evaluation.run_test(runner, torch.device("cpu"), 1, release=False)
    finally:
        finish(runner)
    assert results["training"] is False
    with open(os.path.join(runner.experiment.results_path, "1.standard.test.json")) as file:
        report = json.load(file)
    assert report == {"epoch": 1, "checkpoint": "1.checkpoint.pt", "results": results}
    lines = [json.loads(line) for line in open(runner.experiment.metrics_path)]
    assert lines[-1]["kind"] == "test" and lines[-1]["metrics"]["mse"] == pytest.approx(results["mse"])


def test_train_from_an_epoch_without_checkpoint_lists_the_standard_epochs(tmp_path):
    runner = train(tmp_path, max_epochs=2)
    with pytest.raises(CheckpointError, match=r"epoch 7 has no standard checkpoint in .* \(available: 1-2\)"):
        create_release(runner.experiment, 7, {"seed": 0})
    with pytest.raises(CheckpointError, match=r"epoch 7 has no standard checkpoint in .* \(available: 1-2\)"):
        train(tmp_path, max_epochs=9, epoch=7)


@pytest.mark.parametrize(
    "instance, expected",
    [([[1, 2], [3, 4]], [[1.0, 2.0], [3.0, 4.0]]), ([0.5, True], [0.5, 1.0]), (7, 7.0)],
)
def test_default_serve_preprocess_makes_a_float32_tensor(instance, expected):
    tensor = torchexp.Runner.serve_preprocess(None, instance)
    assert tensor.dtype == torch.float32
    assert tensor.tolist() == expected


@pytest.mark.parametrize(
    "instance, sentence",
    [
        ([["a", "b"]], "an instance must be an array of numbers, not of text"),
        ([1, None], "an instance must be an array of numbers, not of null, objects or numbers mixed with other values"),
        ([{"x": 1}], "an instance must be an array of numbers, not of null, objects or numbers mixed with other values"),
        ([[1], [1, 2]], "an instance must be an array of numbers, in rows of equal length"),
    ],
)
def test_default_serve_preprocess_refuses_what_is_not_numbers_in_one_sentence(instance, sentence):
    with pytest.raises(ValueError) as raised:
        torchexp.Runner.serve_preprocess(None, instance)
    assert str(raised.value) == sentence


class PickledStateRunner(TinyRunner):
    """Keeps an object a checkpoint could not load back with weights_only=True."""

    def save_states_others(self):
        return {"history": [{"when": object()}]}


def test_state_a_checkpoint_could_not_load_back_is_refused_before_anything_is_written(tmp_path):
    with pytest.raises(ProjectError) as caught:
        train(tmp_path, PickledStateRunner)
    assert str(caught.value) == (
        "PickledStateRunner.save_states_others returned a object at others['history'][0]['when']: a checkpoint holds tensors, numbers, "
        "strings, lists and dicts only, which torch.load(weights_only=True) reads back"
    )
    assert not [name for name in os.listdir(tmp_path / "experiments" / "r" / "checkpoints") if "checkpoint" in name]
