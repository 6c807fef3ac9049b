"""The log file, metrics.jsonl, TensorBoard events and the TensorBoard command."""

import json
import logging
import os
import sys

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.summary.writer import event_file_writer

from torchexp.logs import close_logger, format_metrics, make_logger
from torchexp.trackers.fanout import RunTrackers
from torchexp.trackers.tensorboard import tensorboard_command


def test_logger_writes_every_level_to_verbose_log_and_appends(tmp_path, capsys):
    log_path = tmp_path / "verbose.log"
    logger = make_logger("trk", str(log_path), "quiet")
    logger.debug("debug line")
    logger.info("info line")
    logger.warning("warning line")
    close_logger(logger)
    logger = make_logger("trk", str(log_path), "normal")
    logger.info("second run")
    close_logger(logger)
    text = log_path.read_text()
    for line in ("DEBUG debug line", "INFO info line", "WARNING warning line", "INFO second run"):
        assert line in text
    assert text.index("info line") < text.index("second run")
    console = capsys.readouterr().err
    assert "warning line" in console and "second run" in console
    assert "info line" not in console and "debug line" not in console  # quiet, then normal


def test_make_logger_replaces_the_handlers_of_a_previous_call(tmp_path):
    first = make_logger("trk2", str(tmp_path / "a.log"))
    second = make_logger("trk2", str(tmp_path / "b.log"))
    assert first is second and len(second.handlers) == 2
    second.info("only in b")
    close_logger(second)
    assert "only in b" not in (tmp_path / "a.log").read_text()
    assert "only in b" in (tmp_path / "b.log").read_text()
    assert second.handlers == [] and not second.propagate


def test_verbose_console_shows_debug(tmp_path, capsys):
    logger = make_logger("trk3", None, "verbose")
    logger.debug("details")
    close_logger(logger)
    assert "details" in capsys.readouterr().err
    assert logger.level == logging.DEBUG


def test_tracker_writes_metrics_jsonl_and_tensorboard_scalars(tmp_path):
    tracker = RunTrackers(str(tmp_path / "tensorboard"), str(tmp_path / "metrics.jsonl"))
    tracker.log_scalars("train", 1, {"loss": 0.5, "accuracy": 0.75}, epoch=1)
    tracker.log_scalars("train", 2, {"loss": 0.25, "accuracy": float("nan")}, epoch=2)
    tracker.log_scalars("validation", 2, {"loss": 0.3})
    tracker.close()

    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(line["kind"], line["step"], line["metrics"]) for line in lines] == [
        ("train", 1, {"loss": 0.5, "accuracy": 0.75}),
        ("train", 2, {"loss": 0.25, "accuracy": None}),  # NaN is not JSON: kept as null
        ("validation", 2, {"loss": 0.3}),
    ]
    assert lines[0]["epoch"] == 1 and isinstance(lines[0]["time"], float)

    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert sorted(events.Tags()["scalars"]) == ["train/accuracy", "train/loss", "validation/loss"]
    assert [(event.step, event.value) for event in events.Scalars("train/loss")] == [(1, 0.5), (2, 0.25)]
    assert [(event.step, event.value) for event in events.Scalars("validation/loss")] == [(2, 0.30000001192092896)]


def test_disabled_tracker_writes_nothing(tmp_path):
    tracker = RunTrackers(str(tmp_path / "tensorboard"), str(tmp_path / "metrics.jsonl"), enabled=False)
    tracker.log_scalars("train", 1, {"loss": 0.5})
    tracker.writer.add_scalar("custom/value", 1.0, 1)  # project code need not check the rank
    tracker.writer.add_text("custom/text", "hello", 1)
    tracker.flush()
    tracker.close()
    assert os.listdir(tmp_path) == []


def test_tracker_creates_no_event_file_until_used(tmp_path):
    tracker = RunTrackers(str(tmp_path / "tensorboard"), str(tmp_path / "metrics.jsonl"))
    tracker.flush()
    tracker.close()
    assert os.listdir(tmp_path) == []


def test_discard_after_drops_what_a_resumed_run_logs_again(tmp_path):
    tracker = RunTrackers(str(tmp_path / "tb"), str(tmp_path / "metrics.jsonl"))
    for step in (100, 200, 300):
        tracker.log_scalars("iteration", step, {"loss": 1.0}, epoch=1 + step // 250)
    tracker.log_scalars("train", 1, {"loss": 1.0}, epoch=1)
    tracker.log_scalars("test", 1, {"accuracy": 0.5}, epoch=1)
    tracker.log_scalars("train", 2, {"loss": 1.0}, epoch=2)
    tracker.log_scalars("gradients", 999, {"norm": 3.0})
    with open(tmp_path / "metrics.jsonl", "a") as file:
        file.write('{"kind": "iteration", "st')  # cut short by a kill
    tracker.close()

    assert tracker.discard_after(step=200, epoch=1) == 3
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(line["kind"], line["step"]) for line in lines] == [("iteration", 100), ("iteration", 200), ("train", 1), ("test", 1), ("gradients", 999)]
    assert tracker.discard_after(step=200, epoch=1) == 0


def test_tensorboard_hides_the_iterations_logged_after_the_resume_point(tmp_path, monkeypatch):
    # The writers' file counters go from 9 to 10, and "...10" sorts before "...9": the
    # purging file must still be read last.
    monkeypatch.setattr(event_file_writer, "_global_uid", event_file_writer.AtomicCounter(9))
    tracker = RunTrackers(str(tmp_path / "tb"), str(tmp_path / "metrics.jsonl"))
    for step in range(1, 11):
        tracker.log_scalars("iteration", step, {"loss": float(step)})
    tracker.log_scalars("train", 1, {"loss": 1.0}, epoch=1)
    tracker.discard_after(step=5, epoch=1)  # closes the writer; the next one purges
    for step in range(6, 9):
        tracker.log_scalars("iteration", step, {"loss": 100.0 + step})
    tracker.close()

    accumulator = EventAccumulator(str(tmp_path / "tb"))
    accumulator.Reload()
    iterations = [(event.step, event.value) for event in accumulator.Scalars("iteration/loss")]
    assert iterations == [(1, 1.0), (2, 2.0), (3, 3.0), (4, 4.0), (5, 5.0), (6, 106.0), (7, 107.0), (8, 108.0)]
    assert [(event.step, event.value) for event in accumulator.Scalars("train/loss")] == [(1, 1.0)]


def test_discard_after_without_metrics_or_when_disabled_does_nothing(tmp_path):
    assert RunTrackers(str(tmp_path / "tb"), str(tmp_path / "metrics.jsonl")).discard_after(0, 0) == 0
    (tmp_path / "metrics.jsonl").write_text('{"kind": "train", "step": 1, "epoch": 1}\n')
    assert RunTrackers(str(tmp_path / "tb"), str(tmp_path / "metrics.jsonl"), enabled=False).discard_after(0, 0) == 0
    assert (tmp_path / "metrics.jsonl").read_text().count("\n") == 1


def test_format_metrics_is_short():
    assert format_metrics({"loss": 0.031234, "accuracy": 0.99125}) == "loss 0.03123, accuracy 0.9912"
    assert format_metrics({"samples": 10000, "lr": 1e-06}) == "samples 10000, lr 1e-06"


def test_tensorboard_command_is_an_argument_list_for_one_logdir(tmp_path):
    logdir = str(tmp_path / "with space; rm -rf x")
    command = tensorboard_command(logdir, None, "127.0.0.1", 6007)
    assert command == [sys.executable, "-m", "tensorboard.main", "--host", "127.0.0.1", "--port", "6007", "--logdir", logdir]


def test_tensorboard_command_uses_logdir_spec_to_compare():
    command = tensorboard_command(None, "a:/e/a/tensorboard,b:/e/b/tensorboard", "0.0.0.0", 6006)
    assert command[-2:] == ["--logdir_spec", "a:/e/a/tensorboard,b:/e/b/tensorboard"]
    assert "--logdir" not in command
