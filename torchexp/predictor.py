"""A trained model answering a client's instances from Python, as `serve` answers them.

```python
import torchexp

predictor = torchexp.Experiments("experiments")["fast"].predictor()  # the latest release
predictor.predict([pixels, {"b64": png}])  # [{"label": 7, "probabilities": [...]}, ...]
```

The instances are what a client POSTs to `serve`'s `/v1/models/<name>:predict` as
"instances", and the predictions what it gets back: the same code runs them
(`torchexp.serving.answers`), in the caller's thread. The project's `serve_preprocess`
turns each instance into a tensor, refused with `serve`'s sentence when malformed or not
of the shape of the project's `serve_example`; the model runs through `serve_forward` in
batches of at most `max_batch_size` instances; `serve_postprocess` turns each output into a
prediction, sent through JSON as the server sends it. Neither an HTTP server nor FastAPI is
involved, and nothing is written into the experiment.
"""

from typing import Any, NoReturn

from torchexp import checkpoints
from torchexp.errors import ConfigError, InstanceError, ProjectError
from torchexp.extras import require_extra
from torchexp.folder import Experiment
from torchexp.hooks import describe_failure
from torchexp.releases import Selector, select_checkpoint
from torchexp.serving.options import DEFAULTS

# The serving modules read and write JSON with orjson, which the serve extra brings: without
# it, importing this module is one sentence naming the extra. FastAPI is not needed.
require_extra("serve", "torchexp.Predictor", ("orjson",))

import orjson  # noqa: E402

from torchexp.serving import predictors  # noqa: E402
from torchexp.serving.answers import WARM_UP_FAILED, Failure, answer_requests, check_instances  # noqa: E402
from torchexp.serving.pipeline import Pipeline, RequestError  # noqa: E402


class Predictor:
    """A checkpoint's model behind the project's serving hooks: what `load_predictor` and
    `ExperimentView.predictor` return.

    Args:
        name: the experiment's name.
        checkpoint: the checkpoint whose weights answer.
        pipeline: the project's hooks around the model, warmed up.
        max_batch_size: most instances run through the model at once.

    Attributes:
        runner: the project's Runner, its model in `runner.model`, in eval mode.
    """

    def __init__(self, name: str, checkpoint: checkpoints.Checkpoint, pipeline: Pipeline, max_batch_size: int):
        self.name = name
        self.checkpoint = checkpoint
        self.pipeline = pipeline
        self.runner = pipeline.runner
        self.max_batch_size = max_batch_size

    def __repr__(self) -> str:
        device = getattr(self.pipeline.predictor, "device", "cpu")
        return f"Predictor({self.name!r}, {self.checkpoint.name}, on {device})"

    def predict(self, instances: list[Any]) -> list[Any]:
        """Return the predictions of `instances`, one per instance, in order: the
        "predictions" `serve --runtime torch` answers for the same "instances".

        Raises:
            InstanceError: `instances` is not a non-empty list, or one of them is malformed;
                the sentence is the one `serve` answers with status 400 ("instances[3]: ...").
            ProjectError: the project's hooks or model failed, or a prediction is not JSON
                data (NaN, a tensor): `serve`'s 500, with the original exception as the cause.
        """
        try:
            check_instances(instances)
        except RequestError as error:
            raise InstanceError(str(error)) from None
        (answer,) = answer_requests(self.pipeline, [instances], self.max_batch_size)
        if isinstance(answer, Failure):
            raise_failure(answer)
        return orjson.loads(answer)["predictions"]


def load_predictor(
    experiments_path: str,
    name: str,
    checkpoint: Selector = "release",
    device: str = DEFAULTS.device,
    max_batch_size: int = DEFAULTS.max_batch_size,
) -> Predictor:
    """Return a Predictor answering with the weights of one of an experiment's checkpoints.

    Args:
        experiments_path: the folder holding the experiment (a study's folder for its trials).
        name: the experiment's name.
        checkpoint: "release" for the latest release, N for epoch N (step N when trained by
            steps), or a checkpoint's file name such as "3.checkpoint.pt".
        device: "auto" (a GPU when there is one, as `serve`), "cpu", "cuda" or "cuda:N".
        max_batch_size: most instances run through the model at once, as `serve --max-batch-size`.

    Raises:
        ExperimentError: the experiment does not exist, or the project's classes cannot be imported.
        CheckpointError: no such checkpoint, or it is corrupt or does not fit the model.
        DeviceError: `device` does not exist here.
        ProjectError: the project's hooks failed to build the model or on its `serve_example`.
        ConfigError: `max_batch_size` is not a whole number of 1 or more.
        MissingExtraError: (on import) the serve extra is not installed.
    """
    return open_predictor(Experiment(experiments_path, name), checkpoint, device, max_batch_size)


def open_predictor(
    experiment: Experiment,
    checkpoint: Selector = "release",
    device: str = DEFAULTS.device,
    max_batch_size: int = DEFAULTS.max_batch_size,
    name: str | None = None,
) -> Predictor:
    """`load_predictor` for an experiment's folder; `name` is how the predictor names it
    (default: the folder's name). Raises as `load_predictor` does."""
    if isinstance(max_batch_size, bool) or not isinstance(max_batch_size, int) or max_batch_size < 1:
        raise ConfigError(f"max_batch_size {max_batch_size!r} is not valid: pass a whole number of 1 or more")
    experiment.check_exists()
    found = select_checkpoint(experiment, checkpoint)
    # The threads are the ONNX runtime's alone; torch's are the caller's to set.
    runner, model = predictors.load_predictor(experiment, found, "torch", device, threads=1)
    pipeline = Pipeline(runner, model)
    warm_up(pipeline)
    return Predictor(name or experiment.name, found, pipeline, max_batch_size)


def warm_up(pipeline: Pipeline) -> None:
    """Run the project's `serve_example` through every step once, as `serve` does at its
    start: this learns the shape of one instance, so that instances of another shape are
    refused here as there.

    Raises:
        ProjectError: the example fails, a bug of the project's hooks.
    """
    try:
        pipeline.warm_up((1,))
    except Exception as error:
        reason = str(error) if isinstance(error, RequestError) else describe_failure(error, inference=True)
        if reason is None:  # not the project's: torchexp's own bug, with its traceback
            raise
        raise ProjectError(f"{WARM_UP_FAILED}: {reason}") from error


def raise_failure(failure: Failure) -> NoReturn:
    """Raise a request's failure as an error with the sentence `serve` answers it with.

    An exception that did not pass through the project's hooks goes on as it is: it is a
    bug of torchexp's, and its traceback says where.
    """
    error = failure.error
    if isinstance(error, RequestError):
        raise (InstanceError if error.status == 400 else ProjectError)(str(error)) from error
    hook = describe_failure(error, inference=True)
    if hook is None:
        raise error
    raise ProjectError(f"{failure.step}: {hook}") from error
