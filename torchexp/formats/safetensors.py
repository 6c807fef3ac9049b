"""safetensors: the release's weights, for any code that builds the model itself.

The file holds the model's state_dict and, as strings (the format's rule), the experiment,
the epoch, the release's configuration, seed, classes, versions and provenance, and
torchexp's version. It must load back bit for bit before it is written. `serve --runtime
safetensors` builds the model with the project's Runner and fills it from the file.
"""

import json
from typing import Any

from torchexp.errors import CheckpointError, TorchexpError, first_line
from torchexp.formats.base import EagerPredictor, ExportFormat, ExportSource, export_versions
from torchexp.version import __version__


class SafetensorsFormat(ExportFormat):
    """The model's weights, checked to load back equal to the release's."""

    name = "safetensors"
    title = "safetensors"
    suffix = "safetensors"
    help = "its weights"
    runtime_help = "builds the model with the project's Runner and loads its weights from the safetensors export"
    compares_outputs = False
    cpu_only = False

    def export(self, source: ExportSource) -> tuple[bytes, dict]:
        from safetensors.torch import save

        tensors = {key: value.detach().cpu().contiguous() for key, value in source.runner.model.state_dict().items()}
        state = source.state
        metadata = {
            "experiment": source.name,
            "epoch": str(source.release.epoch),
            "config": json.dumps(state.get("config")),
            "seed": json.dumps(state.get("seed")),
            "classes": json.dumps(state.get("classes")),
            "versions": json.dumps(state.get("versions")),
            "provenance": json.dumps(state.get("provenance")),
            "torchexp": __version__,
        }
        return save(tensors, metadata), {"metadata": metadata, "versions": export_versions("safetensors")}

    def check(self, source: ExportSource, content: bytes, batches: list[Any]) -> dict:
        """Load the file back and compare every tensor with the release's, bit for bit.

        Raises:
            TorchexpError: they differ.
        """
        import torch
        from safetensors.torch import load

        loaded = load(content)
        released = source.state["model"]
        same = loaded.keys() == released.keys() and all(
            torch.equal(loaded[key], released[key].cpu()) for key in released
        )
        if not same:
            raise TorchexpError(
                f"the safetensors export of {source.point}'s release does not load back equal to it, "
                "so nothing was written"
            )
        return {"tensors": len(loaded), "round_trip": "equal"}

    def describe_check(self, check: dict) -> str:
        return f"{check['tensors']} tensors load back equal"

    def load_predictor(self, path: str, runner: Any, device: Any, threads: int) -> EagerPredictor:
        from safetensors.torch import load

        from torchexp.training_state import load_weights

        content, _ = self.read_export(path)
        try:
            weights = load(content)
        except Exception as error:  # safetensors raises its own error types from Rust
            raise CheckpointError(f"safetensors export {path} cannot be read: {first_line(error)}") from error
        load_weights(runner, device, {"model": weights}, path)
        return EagerPredictor(runner, device, self.name)
