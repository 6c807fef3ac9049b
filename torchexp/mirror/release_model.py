"""The MLflow model of a release, "from code": MLflow runs this file to build it.

`torchexp.mirror.registry` saves a release with `mlflow.pyfunc.save_model(python_model=<this
file>, artifacts={"experiment": <folder>})`, the folder holding the experiment with its
release alone: config.json, data.json, and the release checkpoint with its sidecar. MLflow
copies this file into the model and runs it where the model is loaded (no import of it by
torchexp itself), so nothing is pickled. The model's `predict` takes a client's instances,
as `serve` does, and answers through a `torchexp.Predictor`: the project's serving hooks
around the release's model, whose classes are imported by the names config.json records.
torchexp and the project must therefore be installed where the model is loaded.

`model_config` may set "device" ("auto" by default, as `serve`) and "max_batch_size". MLflow
warns, as it loads the model, that it does not check instances against `list[Any]`: the
project's `serve_preprocess` does.
"""

import os
from typing import Any

import mlflow
from mlflow.pyfunc import PythonModel


class ReleaseModel(PythonModel):
    """A release answering a client's instances, as `serve --runtime torch` answers them."""

    def load_context(self, context: Any) -> None:
        from torchexp.predictor import load_predictor

        folder = context.artifacts["experiment"]
        settings = context.model_config or {}
        options = {key: settings[key] for key in ("device", "max_batch_size") if key in settings}
        self.predictor = load_predictor(os.path.dirname(folder), os.path.basename(folder), "release", **options)

    def predict(self, context: Any, model_input: list[Any], params: dict[str, Any] | None = None) -> list[Any]:
        """Return one prediction per instance, in order (`torchexp.Predictor.predict`)."""
        return self.predictor.predict(model_input)


mlflow.models.set_model(ReleaseModel())
