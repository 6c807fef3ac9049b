"""Exports of a release, in any format of `torchexp.formats`: ONNX, safetensors, AOTInductor.

An export lives in `experiments/<name>/exports/<epoch>.release.<suffix>`, written
atomically with a sidecar beside it (`<file>.json`: SHA-256, bytes, format, epoch, and
the figures of the check it passed), like a checkpoint. The model comes from the release
through the same verified, `weights_only=True` path as `test`, and nothing is written
unless the export reproduces it: a format that runs the model (ONNX, AOTInductor) runs it
against torch on the project's example instance (batch 1) and on real test samples
(batches as the test loader gives them), and outputs must agree within CHECK_ATOL +
CHECK_RTOL * |torch output|; safetensors must load back bit for bit.

`open_onnx_session` and `example_input` stay importable from here for MLflow's registry.
"""

import os
import time
from collections.abc import Iterable
from typing import Any

from torchexp import checkpoints, sidecar
from torchexp.errors import DataError, ProjectError
from torchexp.folder import Experiment
from torchexp.formats import find_format

# Imported from here by MLflow's registry (torchexp.mirror), the tests and the benchmarks.
from torchexp.formats.base import CHECK_ATOL, CHECK_RTOL, ExportSource, example_input  # noqa: F401
from torchexp.formats.onnx import open_onnx_session  # noqa: F401
from torchexp.hooks import project_errors
from torchexp.inference import load_runner
from torchexp.project import Project
from torchexp.releases import find_release

DEFAULT_CHECK_SAMPLES = 1000


def export_path(experiment: Experiment, epoch: int, fmt: str) -> str:
    """Return the path of the export of epoch `epoch`'s release in format `fmt`, the one
    place its name is made.

    Raises:
        ConfigError: `fmt` is not a format of FORMATS.
    """
    return os.path.join(experiment.path, "exports", f"{epoch}.release.{find_format(fmt).suffix}")


def export_experiment(
    project: Project, experiment: Experiment, epoch: int | None, fmt: str, check_samples: int, logger: Any
) -> str:
    """Export a release (default: the latest), checking it on real test samples where the
    format runs the model.

    Args:
        project: its Data class and data path give the test samples.
        experiment: the experiment.
        epoch: the release's epoch, or None for the latest release.
        fmt: a name of FORMATS.
        check_samples: how many test samples the check runs, at most.
        logger: where to say what was done.

    Returns:
        The export's path.

    Raises:
        ConfigError: `fmt` is not a format of FORMATS.
        TorchexpError: this machine cannot write the format (`ExportFormat.check_ready`).
    """
    export_format = find_format(fmt)
    export_format.check_ready()
    release = find_release(experiment, epoch)
    batches = load_check_batches(project, experiment, check_samples, logger) if export_format.compares_outputs else []
    with project_errors(logger, inference=True):
        return export_release(experiment, release, fmt, batches, logger)


def load_check_batches(project: Project, experiment: Experiment, samples: int, logger: Any) -> list[Any]:
    """Return the model inputs of the first `samples` test samples, as the test loader gives them.

    The first element of each test batch (or the batch itself, when it is a tensor) is
    taken to be the model's input. When the data cannot be loaded here, the check runs on
    the project's example instance alone, with a warning: an export is often made where
    the release is and the data set is not, and the model is still compared with torch.
    """
    import torch

    try:
        with project_errors(logger):
            data = project.make_data(experiment, experiment.read_definition(), logger)
            data.load_loaders(project.data_path, 0)
    except (DataError, ProjectError) as error:
        logger.warning(f"the export's check runs on the example instance only: the test set cannot be loaded ({error})")
        return []
    batches, taken = [], 0
    for batch in data.loaders["test"]:
        inputs = batch if isinstance(batch, torch.Tensor) else batch[0]
        batches.append(inputs[: samples - taken].cpu())
        taken += len(batches[-1])
        if taken >= samples:
            break
    return batches


def export_release(
    experiment: Experiment,
    release: checkpoints.Checkpoint,
    fmt: str,
    check_batches: Iterable[Any] = (),
    logger: Any = None,
) -> str:
    """Export a release and write its sidecar.

    Args:
        experiment: the experiment.
        release: the release checkpoint (from `find_release`).
        fmt: a name of FORMATS.
        check_batches: model inputs (batched tensors) the check runs besides the project's
            example instance, for a format that runs the model.
        logger: where to say what was done; None says nothing.

    Returns:
        The export's path.

    Raises:
        ConfigError: `fmt` is not a format of FORMATS.
        CheckpointError: the release is corrupt or does not fit the model.
        TorchexpError: the model cannot be exported, or the export does not reproduce it;
            nothing is written then.
    """
    import torch

    export_format = find_format(fmt)
    runner, state = load_runner(experiment, release, torch.device("cpu"))
    source = ExportSource(runner, experiment.name, release, state)
    content, fields = export_format.export(source)
    check = export_format.check(source, content, list(check_batches))
    path = export_path(experiment, release.epoch, fmt)
    assert release.sidecar is not None, "a release is found with its sidecar, verified"
    record = {
        "format": fmt,
        "epoch": release.epoch,
        "release_sha256": release.sidecar["sha256"],
        "provenance": release.sidecar.get("provenance"),
    }
    write_export(path, content, {**record, **fields, "check": check})
    if logger is not None:
        logger.info(
            f"exported the release of {source.point} as {fmt} to {path} ({export_format.describe_check(check)})"
        )
    return path


def write_export(path: str, content: bytes, summary: dict) -> None:
    """Write an export and its sidecar (`torchexp.sidecar`, as checkpoints have)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fields = {**summary, "exported_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    sidecar.write_with_sidecar(path, lambda file: file.write(content), fields)
