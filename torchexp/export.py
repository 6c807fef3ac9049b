"""Exports of a release: its model as ONNX, or its weights as safetensors.

An export lives in `experiments/<name>/exports/<epoch>.release.<onnx|safetensors>`, written
atomically with a sidecar beside it (`<file>.json`: SHA-256, bytes, format, epoch, and
the figures of the check it passed), like a checkpoint. The model comes from the release
through the same verified, `weights_only=True` path as `test`, and nothing is written
unless the export reproduces it:

- ONNX is exported with torch's default exporter (`torch.export`, which needs onnxscript;
  the TorchScript exporter is deprecated), opset 18, one input `input` and one output
  `output` with a dynamic batch dimension. onnxruntime then runs it against torch on the
  project's example instance (batch 1) and on real test samples (batches as the test
  loader gives them); outputs must agree within CHECK_ATOL + CHECK_RTOL * |torch output|.
- safetensors holds the model's state_dict with the release's metadata, and must load
  back bit for bit.

`open_onnx_session` is how the server loads an ONNX export: the bytes it hashes are the
bytes it runs.
"""

import json
import os
import time
from typing import Any, Iterable

from torchexp import checkpoints, sidecar
from torchexp.errors import CheckpointError, DataError, ProjectError, TorchexpError, first_line
from torchexp.folder import Experiment
from torchexp.hooks import project_errors
from torchexp.inference import load_runner
from torchexp.project import Project
from torchexp.releases import find_release
from torchexp.version import __version__

FORMATS = ("onnx", "safetensors")
# The lowest opset the torch.export-based exporter implements natively (lower ones go
# through a version converter); onnxruntime runs it since 1.14, and so do TensorRT 8.6+
# and every runtime of the last years.
OPSET = 18
# A conversion mistake (dropout left on, batch norm in training mode, a wrong layout)
# moves outputs by 1e-2 or more; summing in another order moves float32 outputs by about
# 1e-6 of their size. These bounds sit between the two.
CHECK_ATOL = 1e-4
CHECK_RTOL = 1e-4
DEFAULT_CHECK_SAMPLES = 1000


def export_path(experiment: Experiment, epoch: int, fmt: str) -> str:
    """Return the path of the export of epoch `epoch`'s release in format `fmt`, the one
    place its name is made."""
    if fmt not in FORMATS:
        raise ValueError(f"export format must be one of {FORMATS}, not {fmt!r}")
    return os.path.join(experiment.path, "exports", f"{epoch}.release.{fmt}")


def export_experiment(project: Project, experiment: Experiment, epoch: int | None, fmt: str, check_samples: int, logger: Any) -> str:
    """Export a release (default: the latest), checking an ONNX export on real test samples.

    Args:
        project: its Data class and data path give the test samples.
        experiment: the experiment.
        epoch: the release's epoch, or None for the latest release.
        fmt: one of FORMATS.
        check_samples: how many test samples the ONNX check runs, at most.
        logger: where to say what was done.

    Returns:
        The export's path.
    """
    release = find_release(experiment, epoch)
    batches = load_check_batches(project, experiment, check_samples, logger) if fmt == "onnx" else []
    with project_errors(logger, inference=True):
        return export_release(experiment, release, fmt, batches, logger)


def load_check_batches(project: Project, experiment: Experiment, samples: int, logger: Any) -> list[Any]:
    """Return the model inputs of the first `samples` test samples, as the test loader gives them.

    The first element of each test batch (or the batch itself, when it is a tensor) is
    taken to be the model's input. When the data cannot be loaded here, the check runs on
    the project's example instance alone, with a warning: an export is often made where
    the release is and the data set is not, and the graph is still compared with torch.
    """
    import torch

    try:
        with project_errors(logger):
            data = project.make_data(experiment, experiment.read_definition(), logger)
            data.load_loaders(project.data_path, 0)
    except (DataError, ProjectError) as error:
        logger.warning(f"the ONNX check runs on the example instance only: the test set cannot be loaded ({error})")
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
    experiment: Experiment, release: checkpoints.Checkpoint, fmt: str, check_batches: Iterable[Any] = (), logger: Any = None
) -> str:
    """Export a release and write its sidecar.

    Args:
        experiment: the experiment.
        release: the release checkpoint (from `find_release`).
        fmt: "onnx" or "safetensors".
        check_batches: model inputs (batched tensors) the ONNX check runs besides the
            project's example instance.
        logger: where to say what was done; None says nothing.

    Returns:
        The export's path.

    Raises:
        CheckpointError: the release is corrupt or does not fit the model.
        TorchexpError: the model cannot be exported, or the export does not reproduce it;
            nothing is written then.
    """
    import torch

    runner, state = load_runner(experiment, release, torch.device("cpu"))
    path = export_path(experiment, release.epoch, fmt)
    if fmt == "onnx":
        content, summary = make_onnx(runner, experiment.name, release, check_batches)
    else:
        content, summary = make_safetensors(runner, experiment.name, release, state)
    fields = {"format": fmt, "epoch": release.epoch, "release_sha256": release.sidecar["sha256"], "provenance": release.sidecar.get("provenance")}
    write_export(path, content, {**fields, **summary})
    if logger is not None:
        logger.info(f"exported the release of epoch {release.epoch} as {fmt} to {path} ({describe_check(summary['check'])})")
    return path


def make_onnx(runner: Any, name: str, release: checkpoints.Checkpoint, check_batches: Iterable[Any]) -> tuple[bytes, dict]:
    """Return the ONNX file of the runner's model and its check's figures.

    Raises:
        TorchexpError: no example instance, the exporter fails, or onnxruntime's outputs
            differ from torch's beyond the tolerance.
    """
    import onnx
    import torch

    example = example_input(runner)
    try:
        program = torch.onnx.export(
            runner.model,
            (example,),
            input_names=["input"],
            output_names=["output"],
            opset_version=OPSET,
            dynamic_shapes=({0: torch.export.Dim("batch")},),
            dynamo=True,
            verbose=False,
        )
        proto = program.model_proto
        properties = {"torchexp_experiment": name, "torchexp_epoch": str(release.epoch), "torchexp": __version__}
        onnx.helper.set_model_props(proto, {**properties, "torchexp_provenance": json.dumps(release.sidecar.get("provenance"))})
        onnx.checker.check_model(proto)
    except Exception as error:  # the exporter raises many types of its own and of torch.export's
        raise TorchexpError(f"the model of epoch {release.epoch}'s release cannot be exported to ONNX: {first_line(error)}") from error
    content = proto.SerializeToString()
    check_batches = list(check_batches)
    try:
        check = check_onnx(runner.model, make_session(content, torch.get_num_threads()), [example, *check_batches])
    except Exception as error:  # the model, or onnxruntime, fails on the example or on test samples
        raise TorchexpError(
            f"the ONNX export of {release.unit} {release.epoch}'s release cannot be checked against the model: {type(error).__name__}: {first_line(error)}"
        ) from error
    test_samples = sum(len(batch) for batch in check_batches)
    # An export is often made where the release is and the data set is not: the sidecar says
    # what the check could run on.
    check["inputs"] = f"the example instance and {test_samples} test samples" if test_samples else "the example instance only: no test set"
    if check["tolerance_used"] > 1:
        raise TorchexpError(
            f"the ONNX export of epoch {release.epoch}'s release does not reproduce the model: onnxruntime's outputs differ "
            f"from torch's by up to {check['max_abs_difference']:.3g} (allowed: {CHECK_ATOL:g} + {CHECK_RTOL:g} x |output|), "
            "so nothing was written"
        )
    return content, {"opset": OPSET, "check": check, "versions": export_versions("onnx", "onnxruntime")}


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
        raise TorchexpError(f"{type(runner).__name__}.serve_preprocess refuses its own serve_example(): {first_line(error)}") from error


def check_onnx(model: Any, session: Any, batches: list[Any]) -> dict:
    """Run each batch through torch and onnxruntime and return how far their outputs are apart.

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
            (actual,) = session.run(["output"], {"input": inputs.numpy()})
            # Equal values (infinities and NaN included) count as no difference; a NaN or
            # an infinity on one side only, as an infinite one.
            same = (actual == expected) | (np.isnan(actual) & np.isnan(expected))
            with np.errstate(invalid="ignore"):
                difference = np.where(same, 0.0, np.nan_to_num(np.abs(actual - expected), nan=np.inf, posinf=np.inf))
                used = np.where(same, 0.0, np.nan_to_num(difference / (CHECK_ATOL + CHECK_RTOL * np.abs(expected)), nan=np.inf, posinf=np.inf))
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


def make_safetensors(runner: Any, name: str, release: checkpoints.Checkpoint, state: dict) -> tuple[bytes, dict]:
    """Return the safetensors file of the runner's weights, checked to load back bit for bit.

    Its metadata (strings, as the format requires) holds the experiment, the epoch, the
    release's configuration, seed, classes and versions, and torchexp's version.

    Raises:
        TorchexpError: the weights do not load back equal to the release's.
    """
    import torch
    from safetensors.torch import load, save

    tensors = {key: value.detach().cpu().contiguous() for key, value in runner.model.state_dict().items()}
    metadata = {
        "experiment": name,
        "epoch": str(release.epoch),
        "config": json.dumps(state.get("config")),
        "seed": json.dumps(state.get("seed")),
        "classes": json.dumps(state.get("classes")),
        "versions": json.dumps(state.get("versions")),
        "provenance": json.dumps(state.get("provenance")),
        "torchexp": __version__,
    }
    content = save(tensors, metadata)
    loaded = load(content)
    released = state["model"]
    same = loaded.keys() == released.keys() and all(torch.equal(loaded[key], released[key].cpu()) for key in released)
    if not same:
        raise TorchexpError(f"the safetensors export of epoch {release.epoch}'s release does not load back equal to it, so nothing was written")
    check = {"tensors": len(loaded), "round_trip": "equal"}
    return content, {"check": check, "metadata": metadata, "versions": export_versions("safetensors")}


def write_export(path: str, content: bytes, summary: dict) -> None:
    """Write an export and its sidecar (`torchexp.sidecar`, as checkpoints have)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fields = {**summary, "exported_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    sidecar.write_with_sidecar(path, lambda file: file.write(content), fields)


def export_versions(*packages: str) -> dict[str, str]:
    """Return the versions of torchexp, torch and `packages`, as an export's sidecar keeps them."""
    import importlib.metadata

    return {"torchexp": __version__, **{name: importlib.metadata.version(name) for name in ("torch", *packages)}}


def describe_check(check: dict) -> str:
    """Say in a few words what an export's check found."""
    if "round_trip" in check:
        return f"{check['tensors']} tensors load back equal"
    agreement = "" if check["argmax_agreement"] is None else f", the same label on {check['argmax_agreement']:.2%}"
    return f"onnxruntime matches torch on {check['inputs']}: max |difference| {check['max_abs_difference']:.2g}{agreement}"


def open_onnx_session(path: str, threads: int) -> Any:
    """Return an onnxruntime session on an ONNX export, verified against its sidecar.

    The session runs on the CPU with `threads` intra-op threads and one inter-op thread.
    The bytes verified are the bytes onnxruntime loads. An export whose release has since
    been written anew is refused, since it no longer holds the release's model.

    Raises:
        CheckpointError: the export or its sidecar is missing, the file does not match its
            SHA-256, it is stale, or onnxruntime cannot load it; the message names the
            command that writes it.
    """
    rewrite = "write it with export --format onnx"
    if not os.path.isfile(path):
        raise CheckpointError(f"ONNX export {path} does not exist: {rewrite}")
    with open(path, "rb") as file:
        content = file.read()
    export_sidecar = sidecar.read_sidecar(path)
    try:
        sidecar.verify(f"ONNX export {path}", path, export_sidecar, content)
    except CheckpointError as error:
        raise CheckpointError(f"{error}: {rewrite} again") from None
    check_release_unchanged(path, export_sidecar, rewrite)
    try:
        return make_session(content, threads)
    except Exception as error:  # onnxruntime raises its own exception types from C++
        raise CheckpointError(f"ONNX export {path} cannot be loaded by onnxruntime: {first_line(error)}") from error


def check_release_unchanged(path: str, export_sidecar: dict, rewrite: str) -> None:
    """Refuse an export made from a release that has since been written anew."""
    checkpoints_path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(path))), "checkpoints")
    release_path = os.path.join(checkpoints_path, checkpoints.make_filename(export_sidecar.get("epoch", 0), "release"))
    release = sidecar.read_sidecar(release_path)
    if release is not None and release.get("sha256") != export_sidecar.get("release_sha256"):
        raise CheckpointError(f"ONNX export {path} was made from an earlier release of epoch {export_sidecar.get('epoch')}: {rewrite} again")


def make_session(content: bytes, threads: int) -> Any:
    """Return an onnxruntime CPU session on an ONNX model's bytes, checked to have one input
    `input` and one output `output`."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only: its warnings about unused initializers are noise
    session = onnxruntime.InferenceSession(content, options, providers=["CPUExecutionProvider"])
    names = ([item.name for item in session.get_inputs()], [item.name for item in session.get_outputs()])
    if names != (["input"], ["output"]):
        raise ValueError(f"the model has inputs {names[0]} and outputs {names[1]}, not ['input'] and ['output']")
    return session
