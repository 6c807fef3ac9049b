"""What checking a request's instances against the project's declared schema costs, on
the batch thread, against the rest of the request's work there.

On a release of examples/breast_cancer (init, one epoch, create_release, in a temporary
folder), whose Runner declares its instance as a pydantic type (`serve_schema`), the
pipeline `serve` builds (`torchexp.serving.server.make_app`, not started) is timed, in µs
per request, for requests of 1 and 32 instances, named (`{"mean radius": ...}`) and listed:

    check       the declared schema's check alone (`Pipeline.schema.validate`)
    prepare     `Pipeline.prepare`: the check, then `serve_preprocess` per instance
    unchecked   `Pipeline.prepare` with no schema (as for a project that declares none)
    request     prepare, the model and `serve_postprocess`: the whole batch thread's work
    json_schema the same instance declared as a JSON Schema instead, checked by jsonschema

and, for a project that declares nothing (the check is one attribute test), `prepare`
against calling `serve_preprocess` on each instance directly. Each figure is the fastest of
seven timings. The first line describes the machine (CPU flags from /proc/cpuinfo).

    .venv/bin/python benchmarks/serve_schema.py [--repeats 2000]
"""

import os
import sys
import tempfile
import time
from typing import Any, Callable

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import REPO, emit, machine, make_parser  # noqa: E402

EXAMPLE = os.path.join(REPO, "examples", "breast_cancer")
if EXAMPLE not in sys.path:
    sys.path.append(EXAMPLE)


def time_per_call(call: Callable[[], Any], repeats: int) -> float:
    """The fastest of seven timings of `repeats` calls, in µs per call: on a machine shared
    with other work, the least disturbed."""
    timings = []
    for _ in range(7):
        started = time.perf_counter()
        for _ in range(repeats):
            call()
        timings.append((time.perf_counter() - started) / repeats * 1e6)
    return min(timings)


def make_release(root: str) -> str:
    """Train breast_cancer one epoch and release it under `root`; return its experiments folder."""
    from click.testing import CliRunner

    from breast_cancer.__main__ import cli

    experiments = os.path.join(root, "experiments")
    base = [
        "--experiments-path",
        experiments,
        "--data-path",
        os.path.join(root, "data"),
        "--experiment-name",
        "x",
        "--quiet",
    ]
    for arguments in (["init"], ["train", "--max-epochs", "1", "--device", "cpu"], ["create_release"]):
        result = CliRunner().invoke(cli, [*base, *arguments], catch_exceptions=False)
        if result.exit_code != 0:
            raise RuntimeError(result.output)
    return experiments


def json_schema_of(names: list[str]) -> dict:
    """breast_cancer's instance as a JSON Schema: the named object or the list of 30 numbers."""
    return {
        "anyOf": [
            {
                "type": "object",
                "properties": {name: {"type": "number"} for name in names},
                "required": names,
                "additionalProperties": False,
            },
            {"type": "array", "items": {"type": "number"}, "minItems": len(names), "maxItems": len(names)},
        ]
    }


def main() -> None:
    parser = make_parser(__doc__.splitlines()[0])
    parser.add_argument(
        "--repeats", type=int, default=2000, help="calls per timing at 1 instance (default: %(default)s)"
    )
    args = parser.parse_args()
    import torch

    from breast_cancer.runner import FIRST_TUMOUR
    from torchexp.folder import Experiment
    from torchexp.serving.options import ServeOptions
    from torchexp.serving.schemas import JsonSchema
    from torchexp.serving.server import make_app

    torch.set_num_threads(1)
    emit({"machine": machine()})
    with tempfile.TemporaryDirectory() as root:
        app = make_app(Experiment(make_release(root), "x"), ServeOptions(device="cpu", threads=1))
    pipeline = app.state.batcher.pipeline
    schema, names = pipeline.schema, pipeline.runner.data.state["features"]
    json_schema = JsonSchema(json_schema_of(names))
    forms = {"named": dict(zip(names, FIRST_TUMOUR)), "listed": list(FIRST_TUMOUR)}

    def run_request(instances: list[Any]) -> bytes:
        tensors = pipeline.prepare(instances)
        return pipeline.answer(pipeline.predict(tensors), tensors, instances)

    def unchecked(instances: list[Any]) -> Any:
        pipeline.schema = None
        try:
            return pipeline.prepare(instances)
        finally:
            pipeline.schema = schema

    for form, instance in forms.items():
        for count in (1, 32):
            instances, repeats = [instance] * count, max(args.repeats // count, 50)
            figures = {
                name: round(time_per_call(lambda: call(instances), repeats), 2)
                for name, call in (
                    ("check", schema.validate),
                    ("prepare", pipeline.prepare),
                    ("unchecked", unchecked),
                    ("request", run_request),
                    ("json_schema", json_schema.validate),
                )
            }
            emit(
                {
                    "form": form,
                    "instances": count,
                    "us_per_request": figures,
                    "check_us_per_instance": round(figures["check"] / count, 2),
                    "check_share_of_request": round(figures["check"] / figures["request"], 3),
                }
            )
    pipeline.schema = None  # a project that declares nothing
    instances = [forms["listed"]] * 32
    direct = time_per_call(
        lambda: [pipeline.runner.serve_preprocess(instance) for instance in instances], args.repeats // 32
    )
    prepared = time_per_call(lambda: pipeline.prepare(instances), args.repeats // 32)
    emit(
        {
            "summary": True,
            "undeclared_prepare_us": round(prepared, 2),
            "serve_preprocess_alone_us": round(direct, 2),
            "instances": 32,
            "cpu_flags": machine()["cpu_flags"],
        }
    )


if __name__ == "__main__":
    main()
