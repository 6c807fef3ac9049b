"""ONNX: the release's model for onnxruntime and every other ONNX runtime.

torch's default exporter (`torch.export`, which needs onnxscript; the TorchScript exporter
is deprecated), opset 18, one input `input` and one output `output` with a dynamic batch
dimension. onnxruntime runs it against torch before it is written, and `serve --runtime
onnx` runs the verified bytes in onnxruntime, on the CPU.
"""

import json
from typing import Any

from torchexp.errors import CheckpointError, TorchexpError, first_line
from torchexp.formats.base import (
    ExportFormat,
    ExportSource,
    check_outputs,
    describe_comparison,
    example_input,
    export_versions,
)
from torchexp.version import __version__

# The lowest opset the torch.export-based exporter implements natively (lower ones go
# through a version converter); onnxruntime runs it since 1.14, and so do TensorRT 8.6+
# and every runtime of the last years.
OPSET = 18


class OnnxFormat(ExportFormat):
    """The model as an ONNX graph, checked in onnxruntime."""

    name = "onnx"
    title = "ONNX"
    suffix = "onnx"
    help = "the model, for onnxruntime and other runtimes"
    runtime_help = "runs its ONNX export in onnxruntime, on the CPU"
    torch_threads = False

    def export(self, source: ExportSource) -> tuple[bytes, dict]:
        """Return the ONNX file of the runner's model, its properties naming the release.

        Raises:
            TorchexpError: no example instance, or the exporter fails.
        """
        import onnx
        import torch

        example = example_input(source.runner)
        try:
            program = torch.onnx.export(
                source.runner.model,
                (example,),
                input_names=["input"],
                output_names=["output"],
                opset_version=OPSET,
                dynamic_shapes=({0: torch.export.Dim("batch")},),
                dynamo=True,
                verbose=False,
            )
            assert program is not None, "the dynamo exporter returns its program"
            proto = program.model_proto
            properties = {
                "torchexp_experiment": source.name,
                "torchexp_epoch": str(source.release.epoch),
                "torchexp": __version__,
            }
            provenance = json.dumps((source.release.sidecar or {}).get("provenance"))
            onnx.helper.set_model_props(proto, {**properties, "torchexp_provenance": provenance})
            onnx.checker.check_model(proto)
        except Exception as error:  # the exporter raises many types of its own and of torch.export's
            raise TorchexpError(
                f"the model of {source.point}'s release cannot be exported to ONNX: {first_line(error)}"
            ) from error
        return proto.SerializeToString(), {"opset": OPSET, "versions": export_versions("onnx", "onnxruntime")}

    def check(self, source: ExportSource, content: bytes, batches: list[Any]) -> dict:
        """Run the export in onnxruntime against torch (`check_outputs`)."""
        import torch

        try:
            session = make_session(content, torch.get_num_threads())
        except Exception as error:  # onnxruntime raises its own exception types from C++
            raise TorchexpError(
                f"the ONNX export of {source.point}'s release cannot be loaded by onnxruntime: {first_line(error)}"
            ) from error
        return check_outputs(source, self, "onnxruntime", lambda inputs: run_session(session, inputs.numpy()), batches)

    def describe_check(self, check: dict) -> str:
        return describe_comparison("onnxruntime", check)

    def load_predictor(self, path: str, runner: Any, device: Any, threads: int) -> "OnnxPredictor":
        return OnnxPredictor(open_onnx_session(path, threads))


class OnnxPredictor:
    """The release's ONNX export in an onnxruntime session (input "input", output "output")."""

    runtime = "onnx"

    def __init__(self, session: Any):
        self.session = session

    def predict(self, batch: Any) -> Any:
        import torch

        return torch.from_numpy(run_session(self.session, batch.numpy()))


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
    content, _ = OnnxFormat().read_export(path)
    try:
        return make_session(content, threads)
    except Exception as error:  # onnxruntime raises its own exception types from C++
        raise CheckpointError(f"ONNX export {path} cannot be loaded by onnxruntime: {first_line(error)}") from error


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


def run_session(session: Any, inputs: Any) -> Any:
    """Return the session's output for a numpy batch."""
    (output,) = session.run(["output"], {"input": inputs})
    return output
