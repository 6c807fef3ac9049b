"""What runs a batch: a release's model in torch (the eager runtime), or one of its exports
in the runtime its format provides (`torchexp.formats`: onnx, safetensors, aoti).

Each is built from a release checkpoint through the same verified, `weights_only=True`
path as `test`, and the project's Runner (built without data sets, writing nothing)
supplies the serving hooks around them.
"""

from typing import Any

from torchexp import checkpoints
from torchexp.devices import resolve_device
from torchexp.errors import DeviceError
from torchexp.export import export_path
from torchexp.folder import Experiment
from torchexp.formats import FORMATS
from torchexp.formats.base import EagerPredictor
from torchexp.inference import load_runner, make_inference_runner
from torchexp.serving.options import check_runtime


def load_predictor(
    experiment: Experiment, release: checkpoints.Checkpoint, runtime: str, device: str, threads: int
) -> tuple[Any, Any]:
    """Build the project's Runner from a release and the predictor that runs its model.

    Args:
        experiment: the experiment.
        release: its release checkpoint (from `inference.find_release`), verified or not.
        runtime: "torch", or the name of an export format, whose export (written by
            `export`) is run.
        device: --device; a runtime that runs on the CPU alone takes "auto" as the CPU.
        threads: intra-op threads of a runtime with threads of its own (torch's are set
            process-wide).

    Returns:
        (runner, predictor).

    Raises:
        ConfigError: `runtime` is not one of RUNTIMES.
        CheckpointError: the release or its export is missing, corrupt or does not fit.
        DeviceError: `device` does not exist here, or is not a CPU for a CPU-only runtime.
    """
    check_runtime(runtime)
    if runtime == "torch":
        torch_device = resolve_device(device)
        runner, _ = load_runner(experiment, release, torch_device)
        return runner, EagerPredictor(runner, torch_device, "torch")
    export_format = FORMATS[runtime]
    cpu_only = export_format.cpu_only
    torch_device = resolve_device("cpu" if cpu_only and device == "auto" else device)
    if cpu_only and torch_device.type != "cpu":
        raise DeviceError(
            f"serve --runtime {runtime} runs on the CPU, not on {device}: drop --device or use --runtime torch"
        )
    # The runner serves the hooks (and builds the model a format may fill): a release
    # carries its configuration, seed and classes.
    runner = make_inference_runner(experiment, release.load())
    path = export_path(experiment, release.epoch, runtime)
    return runner, export_format.load_predictor(path, runner, torch_device, threads)
