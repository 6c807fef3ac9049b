"""What an export format is, and what every format shares: the check against torch and the
verified read of an export.

A format writes a release's model for another runtime (`export`), proves the file
reproduces the release before anything is written (`check`), and reads it back into a
predictor for `serve --runtime NAME` (`load_predictor`). Nothing here imports torch or a
runtime at import time: `--help` lists the formats without loading them.
"""

import abc
import dataclasses
import os
from collections.abc import Callable
from typing import Any

from torchexp import checkpoints, sidecar
from torchexp.errors import CheckpointError, TorchexpError, first_line
from torchexp.version import __version__

# A conversion mistake (dropout left on, batch norm in training mode, a wrong layout)
# moves outputs by 1e-2 or more; summing in another order moves float32 outputs by about
# 1e-6 of their size. These bounds sit between the two.
CHECK_ATOL = 1e-4
CHECK_RTOL = 1e-4


@dataclasses.dataclass(frozen=True)
class ExportSource:
    """A release as a format exports it.

    Attributes:
        runner: the project's Runner, its model loaded from the release on the CPU, in eval mode.
        name: the experiment's name.
        release: the release checkpoint.
        state: what the release holds: weights, configuration, seed, classes, versions, provenance.
    """

    runner: Any
    name: str
    release: checkpoints.Checkpoint
    state: dict

    @property
    def point(self) -> str:
        """How messages name the release's point, e.g. "epoch 3"."""
        return f"{self.release.unit} {self.release.epoch}"


class ExportFormat(abc.ABC):
    """One export format and the serve runtime it provides.

    Attributes:
        name: its name in `export --format` and `serve --runtime`.
        title: how messages name its files, e.g. "ONNX" in "ONNX export PATH".
        suffix: an export is `<epoch>.release.<suffix>`.
        help: what `export --format NAME` writes, for `--help`.
        runtime_help: what `serve --runtime NAME` runs, for `--help`.
        extra: the torchexp extra it needs (`torchexp.extras`), or None.
        compares_outputs: whether its check runs the model on test samples.
        cpu_only: whether its runtime runs on the CPU alone.
        torch_threads: whether its runtime runs on torch's intra-op (OpenMP) threads, which
            keep spinning after each batch (`torchexp.serving.threads`).
    """

    name: str
    title: str
    suffix: str
    help: str
    runtime_help: str
    extra: str | None = "export"
    compares_outputs: bool = True
    cpu_only: bool = True
    torch_threads: bool = True

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Refuse a format class that leaves a required attribute unset, when it is defined."""
        super().__init_subclass__(**kwargs)
        missing = [name for name in ("name", "title", "suffix", "help", "runtime_help") if not hasattr(cls, name)]
        if missing:
            raise TypeError(f"export format {cls.__name__} does not set {', '.join(missing)}")

    def check_ready(self) -> None:
        """Raise TorchexpError, before anything is loaded, when this machine cannot write the
        format (a compiler it needs is missing); nothing to check by default."""

    @abc.abstractmethod
    def export(self, source: ExportSource) -> tuple[bytes, dict]:
        """Return the export's bytes and the fields its sidecar keeps besides the check's.

        Raises:
            TorchexpError: the model cannot be written in this format.
        """

    @abc.abstractmethod
    def check(self, source: ExportSource, content: bytes, batches: list[Any]) -> dict:
        """Return the figures of a check that the export reproduces the release.

        Args:
            source: the release.
            content: the export's bytes, not yet written.
            batches: model inputs of test samples (empty unless `compares_outputs`).

        Raises:
            TorchexpError: it does not, so nothing is written.
        """

    @abc.abstractmethod
    def describe_check(self, check: dict) -> str:
        """Say in a few words what the check found."""

    @abc.abstractmethod
    def load_predictor(self, path: str, runner: Any, device: Any, threads: int) -> Any:
        """Return the predictor running the export at `path` (`torchexp.serving.pipeline.Predictor`).

        Args:
            path: the export.
            runner: the project's Runner, built from the release without its weights.
            device: the torch device to run on.
            threads: intra-op threads.

        Raises:
            CheckpointError: the export is missing, damaged, stale or cannot be loaded.
        """

    def read_export(self, path: str) -> tuple[bytes, dict]:
        """Return an export's bytes, verified against its sidecar and its release, and the sidecar.

        Raises:
            CheckpointError: it or its sidecar is missing, it does not match its SHA-256, or
                it was made from a release since written anew; the message names the command
                that writes it.
        """
        what, rewrite = f"{self.title} export {path}", f"write it with export --format {self.name}"
        if not os.path.isfile(path):
            raise CheckpointError(f"{what} does not exist: {rewrite}")
        with open(path, "rb") as file:
            content = file.read()
        record = sidecar.read_sidecar(path)
        try:
            sidecar.verify(what, path, record, content)
        except CheckpointError as error:
            raise CheckpointError(f"{error}: {rewrite} again") from None
        assert record is not None, "verify refuses an export without its sidecar"
        check_release_unchanged(what, path, record, rewrite)
        return content, record


class EagerPredictor:
    """The project's model in eval mode, run through its `serve_forward` under
    `torch.inference_mode()`: `serve --runtime torch`, and the safetensors runtime."""

    def __init__(self, runner: Any, device: Any, runtime: str):
        self.runner = runner
        self.device = device
        self.runtime = runtime

    def predict(self, batch: Any) -> Any:
        import torch

        with torch.inference_mode():
            return self.runner.serve_forward(batch.to(self.device)).float().cpu()


def check_release_unchanged(what: str, path: str, record: dict, rewrite: str) -> None:
    """Refuse an export made from a release that has since been written anew."""
    checkpoints_path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(path))), "checkpoints")
    release_path = os.path.join(checkpoints_path, checkpoints.make_filename(record.get("epoch", 0), "release"))
    release = sidecar.read_sidecar(release_path)
    if release is not None and release.get("sha256") != record.get("release_sha256"):
        raise CheckpointError(
            f"{what} was made from an earlier release of epoch {record.get('epoch')}: {rewrite} again"
        )


def example_input(runner: Any) -> Any:
    """Return the model input of the project's example instance, with a batch dimension.

    Raises:
        TorchexpError: the Runner defines no example instance, or cannot preprocess it.
    """
    instance = runner.serve_example()
    if instance is None:
        raise TorchexpError(
            f"{type(runner).__name__} has no serve_example(), which export needs to trace the model: "
            "define it to return one request instance"
        )
    try:
        return runner.serve_preprocess(instance).unsqueeze(0)
    except ValueError as error:
        raise TorchexpError(
            f"{type(runner).__name__}.serve_preprocess refuses its own serve_example(): {first_line(error)}"
        ) from error


def check_outputs(
    source: ExportSource, fmt: ExportFormat, runtime: str, run: Callable[[Any], Any], batches: list[Any]
) -> dict:
    """Compare `run` (the export in its runtime) with torch on the example instance and on
    `batches`, and refuse an export whose outputs differ beyond the tolerance.

    Args:
        source: the release.
        fmt: the format, for messages.
        runtime: how messages name the runtime, e.g. "onnxruntime".
        run: returns the export's output for a batch, as a numpy array.
        batches: model inputs of test samples.

    Returns:
        The comparison's figures (`compare_outputs`) and "inputs", what it ran on.

    Raises:
        TorchexpError: the model or the runtime fails, or they disagree; nothing is written.
    """
    inputs = [example_input(source.runner), *batches]
    try:
        check = compare_outputs(source.runner.model, run, inputs)
    except Exception as error:  # the model, or the runtime, fails on the example or on test samples
        raise TorchexpError(
            f"the {fmt.title} export of {source.point}'s release cannot be checked against the model: "
            f"{type(error).__name__}: {first_line(error)}"
        ) from error
    test_samples = sum(len(batch) for batch in batches)
    # An export is often made where the release is and the data set is not: the sidecar says
    # what the check could run on.
    check["inputs"] = (
        f"the example instance and {test_samples} test samples"
        if test_samples
        else "the example instance only: no test set"
    )
    if check["tolerance_used"] > 1:
        raise TorchexpError(
            f"the {fmt.title} export of {source.point}'s release does not reproduce the model: {runtime}'s outputs "
            f"differ from torch's by up to {check['max_abs_difference']:.3g} "
            f"(allowed: {CHECK_ATOL:g} + {CHECK_RTOL:g} x |output|), so nothing was written"
        )
    return check


def compare_outputs(model: Any, run: Callable[[Any], Any], batches: list[Any]) -> dict:
    """Run each batch through torch and `run` and return how far their outputs are apart.

    Returns:
        samples, max_abs_difference, tolerance_used (the largest difference as a fraction
        of what the tolerance allows there: at most 1 passes) and argmax_agreement (the
        fraction of samples whose highest output is the same).
    """
    import numpy as np
    import torch

    samples, agree, max_difference, tolerance_used = 0, 0, 0.0, 0.0
    with torch.inference_mode():
        for inputs in batches:
            expected = model(inputs).float().numpy()
            actual = np.asarray(run(inputs))
            # Equal values (infinities and NaN included) count as no difference; a NaN or
            # an infinity on one side only, as an infinite one.
            same = (actual == expected) | (np.isnan(actual) & np.isnan(expected))
            with np.errstate(invalid="ignore"):
                difference = np.where(same, 0.0, np.nan_to_num(np.abs(actual - expected), nan=np.inf, posinf=np.inf))
                used = np.where(
                    same,
                    0.0,
                    np.nan_to_num(difference / (CHECK_ATOL + CHECK_RTOL * np.abs(expected)), nan=np.inf, posinf=np.inf),
                )
            max_difference = max(max_difference, float(difference.max(initial=0.0)))
            tolerance_used = max(tolerance_used, float(used.max(initial=0.0)))
            if is_class_scores(expected):
                agree += int((actual.argmax(1) == expected.argmax(1)).sum())
            samples += len(inputs)
    return {
        "samples": samples,
        "max_abs_difference": max_difference,
        "tolerance_used": tolerance_used,
        "argmax_agreement": agree / samples if is_class_scores(expected) else None,
        "atol": CHECK_ATOL,
        "rtol": CHECK_RTOL,
    }


def is_class_scores(outputs: Any) -> bool:
    """Whether a batch of outputs holds a score per class (N x classes, more than one class),
    for which the highest one, the label, is worth comparing."""
    return outputs.ndim == 2 and outputs.shape[1] > 1


def describe_comparison(runtime: str, check: dict) -> str:
    """Say in a few words what `check_outputs` found."""
    agreement = "" if check["argmax_agreement"] is None else f", the same label on {check['argmax_agreement']:.2%}"
    return (
        f"{runtime} matches torch on {check['inputs']}: max |difference| {check['max_abs_difference']:.2g}{agreement}"
    )


def export_versions(*packages: str) -> dict[str, str]:
    """Return the versions of torchexp, torch and `packages`, as an export's sidecar keeps them."""
    import importlib.metadata

    return {"torchexp": __version__, **{name: importlib.metadata.version(name) for name in ("torch", *packages)}}
