"""What runs a batch: a release's model in torch, or its ONNX export in onnxruntime.

Both are built from a release checkpoint through the same verified, `weights_only=True`
path as `test`, and the project's Runner (built without data sets, writing nothing)
supplies the serving hooks around them.
"""

from typing import Any

import torch

from torchexp import checkpoints
from torchexp.devices import resolve_device
from torchexp.errors import DeviceError
from torchexp.folder import Experiment
from torchexp.inference import load_runner, make_inference_runner


class TorchPredictor:
    """The release's model in eval mode, run through the project's `serve_forward` under
    `torch.inference_mode()`."""

    runtime = "torch"

    def __init__(self, runner: Any, device: torch.device):
        self.runner = runner
        self.device = device

    def predict(self, batch: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return self.runner.serve_forward(batch.to(self.device)).float().cpu()


class OnnxPredictor:
    """The release's ONNX export in an onnxruntime session (input "input", output "output")."""

    runtime = "onnx"

    def __init__(self, session: Any):
        self.session = session

    def predict(self, batch: torch.Tensor) -> torch.Tensor:
        (output,) = self.session.run(["output"], {"input": batch.numpy()})
        return torch.from_numpy(output)


def load_predictor(experiment: Experiment, release: checkpoints.Checkpoint, runtime: str, device: str, threads: int) -> tuple[Any, Any]:
    """Build the project's Runner from a release and the predictor that runs its model.

    Args:
        experiment: the experiment.
        release: its release checkpoint (from `inference.find_release`), verified or not.
        runtime: "torch", or "onnx" for the release's ONNX export (written by `export`).
        device: --device; the ONNX runtime runs on the CPU only.
        threads: intra-op threads of the ONNX session (torch's are set process-wide).

    Returns:
        (runner, predictor).

    Raises:
        CheckpointError: the release or its export is missing, corrupt or does not fit.
        DeviceError: `device` does not exist here, or is not a CPU for the ONNX runtime.
    """
    torch_device = resolve_device("cpu" if runtime == "onnx" and device == "auto" else device)
    if runtime == "onnx" and torch_device.type != "cpu":
        raise DeviceError(f"serve --runtime onnx runs on the CPU, not on {device}: drop --device or use --runtime torch")
    if runtime == "onnx":
        from torchexp.export import export_path, open_onnx_session

        # The runner only serves the hooks here: a release carries its configuration, seed and classes.
        runner = make_inference_runner(experiment, release.load())
        return runner, OnnxPredictor(open_onnx_session(export_path(experiment, release.epoch, "onnx"), threads))
    runner, _ = load_runner(experiment, release, torch_device)
    return runner, TorchPredictor(runner, torch_device)
