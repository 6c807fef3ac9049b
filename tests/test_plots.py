"""Pictures: the comparison figure, the confusion matrix figure, saving them, and the
confusion matrix image that `test` logs to TensorBoard."""

import os

import pytest
from matplotlib.figure import Figure
from tensorboard.backend.event_processing.event_accumulator import IMAGES, EventAccumulator

from conftest import init_args
from torchexp.errors import ConfigError, StorageError
from torchexp.plots import comparison_figure, confusion_matrix_figure, save_figure

MATRIX = [[5, 0, 1], [0, 7, 0], [2, 0, 4]]


def test_confusion_matrix_figure_writes_each_non_empty_cells_count():
    figure = confusion_matrix_figure(MATRIX, ["cat", "dog", "eel"])
    assert isinstance(figure, Figure)
    axis = figure.axes[0]
    assert sorted(text.get_text() for text in axis.texts) == sorted(str(count) for row in MATRIX for count in row if count)
    assert [label.get_text() for label in axis.get_xticklabels()] == ["cat", "dog", "eel"]
    assert axis.get_xlabel() == "predicted" and axis.get_ylabel() == "true"
    # The count 2 sits at column 0 (predicted cat), row 2 (true eel).
    assert next(text.get_position() for text in axis.texts if text.get_text() == "2") == (0, 2)
    assert (axis.images[0].get_array() == MATRIX).all()


def test_comparison_figure_has_a_panel_per_metric_and_a_line_per_experiment():
    curves = [
        ("a (training.lr=0.1)", {"loss": [(1, 0.9), (2, 0.5)], "accuracy": [(1, 0.6), (2, 0.8)]}),
        ("b (training.lr=1)", {"loss": [(1, 0.7)]}),
    ]
    figure = comparison_figure(curves, ["loss", "accuracy"], "validation")
    loss, accuracy = figure.axes
    assert loss.get_title() == "validation loss" and accuracy.get_title() == "validation accuracy"
    assert [list(line.get_xdata()) for line in loss.lines] == [[1, 2], [1]]
    assert [list(line.get_ydata()) for line in loss.lines] == [[0.9, 0.5], [0.7]]
    assert [list(line.get_ydata()) for line in accuracy.lines] == [[0.6, 0.8], []]
    assert [text.get_text() for text in figure.legends[0].get_texts()] == ["a (training.lr=0.1)", "b (training.lr=1)"]


def test_save_figure_writes_png_and_svg_by_extension(tmp_path):
    figure = confusion_matrix_figure(MATRIX, ["0", "1", "2"])
    save_figure(figure, str(tmp_path / "m.png"))
    save_figure(figure, str(tmp_path / "m.SVG"))
    with open(tmp_path / "m.png", "rb") as file:
        assert file.read(8) == b"\x89PNG\r\n\x1a\n"
    with open(tmp_path / "m.SVG") as file:
        assert "<svg" in file.read(400)
    assert sorted(os.listdir(tmp_path)) == ["m.SVG", "m.png"]  # no temporary file left


def test_save_figure_refuses_other_extensions_and_unwritable_paths(tmp_path):
    figure = confusion_matrix_figure(MATRIX, ["0", "1", "2"])
    with pytest.raises(ConfigError, match=r"plot file .*m\.pdf has extension '\.pdf': use \.png or \.svg"):
        save_figure(figure, str(tmp_path / "m.pdf"))
    with pytest.raises(ConfigError, match="has no extension"):
        save_figure(figure, str(tmp_path / "m"))
    with pytest.raises(StorageError, match="could not write .*: No such file or directory"):
        save_figure(figure, str(tmp_path / "nowhere" / "m.png"))
    assert os.listdir(tmp_path) == []


def test_test_logs_the_confusion_matrix_as_an_image_to_tensorboard(invoke, tmp_path):
    for args in (init_args("--set", "model.name=mlp"), ["train", "--max-epochs", "1", "--device", "cpu"], ["test", "--device", "cpu"]):
        result = invoke(*args)
        assert result.exit_code == 0, result.output
    events = EventAccumulator(str(tmp_path / "experiments" / "x" / "tensorboard"), size_guidance={IMAGES: 0})
    events.Reload()
    assert "test/confusion_matrix_image" in events.Tags()["images"]
    (image,) = events.Images("test/confusion_matrix_image")
    assert image.step == 1 and image.width > 200 and image.height > 200
    assert image.encoded_image_string.startswith(b"\x89PNG")
