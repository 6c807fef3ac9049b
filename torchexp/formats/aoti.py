"""AOTInductor: the release's model compiled ahead of time into a package of native code.

`torch.export` captures the model with a dynamic batch dimension, and AOTInductor compiles
it with this machine's C++ compiler into a `.pt2` package: a shared library with the
weights inside, that runs the whole graph in one call from Python. Eager torch returns to
the interpreter between operators; the package does not (it holds the interpreter's lock
for the whole call: torch's loader does not release it), which is what `serve --runtime
aoti` is for. The package holds code for this machine's kind of CPU (its vector
instructions), is compared with torch before it is written, and is loaded from the verified
bytes only.

A package is native code: like a release, serve only the packages you made.
"""

import contextlib
import io
import logging
import os
import platform
import subprocess
import tempfile
from collections.abc import Iterator
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

# Kernels read the number of OpenMP threads when they run rather than when they are
# compiled, so that `serve --threads` holds for a package exported on another machine.
INDUCTOR_CONFIGS = {"cpp.dynamic_threads": True}
# torch.export takes a batch of 1 for a constant; the example goes in twice instead.
TRACE_BATCH = 2
REWRITE = "write it with export --format aoti"


class AotiFormat(ExportFormat):
    """The model compiled by AOTInductor for this machine's CPU, checked against torch."""

    name = "aoti"
    title = "AOTInductor"
    suffix = "pt2"
    help = (
        "the model compiled for this machine's CPU by torch.export and AOTInductor (takes a C++ compiler and "
        "tens of seconds)"
    )
    runtime_help = "runs its AOTInductor package, compiled code that holds the model's whole graph, on the CPU"
    extra = None

    def check_ready(self) -> None:
        with quiet_compiler_logs():
            find_compiler()

    def export(self, source: ExportSource) -> tuple[bytes, dict]:
        """Return the package of the runner's model and the machine it was compiled for.

        Raises:
            TorchexpError: no C++ compiler, no example instance, or torch.export or the
                compilation fails.
        """
        import torch

        with quiet_compiler_logs():
            compiler = find_compiler()
            target = describe_target()
        example = example_input(source.runner)
        try:
            program = torch.export.export(
                source.runner.model,
                (example.expand(TRACE_BATCH, *example.shape[1:]).contiguous(),),
                dynamic_shapes=({0: torch.export.Dim("batch", min=1)},),
            )
        except Exception as error:  # torch.export raises many types of its own
            raise TorchexpError(
                f"the model of {source.point}'s release cannot be captured by torch.export: {first_line(error)}"
            ) from error
        with tempfile.TemporaryDirectory(prefix="torchexp-aoti-") as folder, quiet_compiler_logs():
            path = os.path.join(folder, "model.pt2")
            try:
                torch._inductor.aoti_compile_and_package(program, package_path=path, inductor_configs=INDUCTOR_CONFIGS)
            except Exception as error:  # the compiler's errors come through inductor's own types
                raise TorchexpError(
                    f"the model of {source.point}'s release cannot be compiled by AOTInductor: {first_line(error)}"
                ) from error
            with open(path, "rb") as file:
                content = file.read()
        return content, {"target": target, "compiler": compiler, "versions": export_versions()}

    def check(self, source: ExportSource, content: bytes, batches: list[Any]) -> dict:
        """Run the package against torch (`check_outputs`)."""
        try:
            with quiet_compiler_logs():
                model = load_package(content)
        except Exception as error:  # the loader raises RuntimeError from C++
            raise TorchexpError(
                f"the AOTInductor export of {source.point}'s release cannot be loaded: {first_line(error)}"
            ) from error
        return check_outputs(
            source, self, "the compiled package", lambda inputs: model(inputs.contiguous()).float().numpy(), batches
        )

    def describe_check(self, check: dict) -> str:
        return describe_comparison("the compiled package", check)

    def load_predictor(self, path: str, runner: Any, device: Any, threads: int) -> "AotiPredictor":
        content, record = self.read_export(path)
        with quiet_compiler_logs():
            check_target(path, record.get("target") or {})
            try:
                return AotiPredictor(load_package(content))
            except Exception as error:  # the loader raises RuntimeError from C++
                reason = first_line(error)
                raise CheckpointError(
                    f"AOTInductor export {path} cannot be loaded: {reason}: {REWRITE} again"
                ) from error


class AotiPredictor:
    """The release's AOTInductor package, run on the CPU with torch's intra-op threads."""

    runtime = "aoti"

    def __init__(self, model: Any):
        self.model = model

    def predict(self, batch: Any) -> Any:
        # The package was compiled for contiguous inputs and does not check their strides.
        return self.model(batch.contiguous()).float()


def load_package(content: bytes) -> Any:
    """Return the callable model of a package's bytes (the bytes verified are those loaded)."""
    import torch

    return torch._inductor.aoti_load_package(io.BytesIO(content))


def find_compiler() -> str:
    """Return the first line of `--version` of the C++ compiler AOTInductor will use.

    Raises:
        TorchexpError: there is none.
    """
    from torch._inductor import cpp_builder, exc

    try:
        compiler = cpp_builder.get_cpp_compiler()
    except exc.InvalidCxxCompiler as error:
        raise TorchexpError(
            "export --format aoti compiles the model with a C++ compiler, and none was found: install g++ "
            "(e.g. apt-get install g++) or name one in the CXX environment variable"
        ) from error
    output = subprocess.run([compiler, "--version"], capture_output=True, text=True, check=False).stdout
    return output.splitlines()[0] if output else compiler


def describe_target() -> dict:
    """The machine a package is compiled for: its architecture and the vector instructions used."""
    from torch._inductor.cpu_vec_isa import pick_vec_isa

    return {"machine": platform.machine(), "cpu_isa": str(pick_vec_isa())}


def check_target(path: str, target: dict) -> None:
    """Refuse a package compiled for another kind of CPU than this one, which would stop
    the process with an illegal instruction rather than an error.

    Raises:
        CheckpointError: another architecture, or vector instructions this CPU lacks.
    """
    from torch._inductor.cpu_vec_isa import valid_vec_isa_list

    rewrite = f"{REWRITE} on this machine"
    machine, isa = target.get("machine"), target.get("cpu_isa")
    if machine != platform.machine():
        raise CheckpointError(
            f"AOTInductor export {path} was compiled for {machine or 'an unrecorded machine'}, "
            f"not this machine's {platform.machine()}: {rewrite}"
        )
    available = [str(item) for item in valid_vec_isa_list()]
    if isa and isa not in available:
        has = ", ".join(available) or "none"
        raise CheckpointError(
            f"AOTInductor export {path} uses {isa} instructions, which this CPU lacks (it has: {has}): {rewrite}"
        )


@contextlib.contextmanager
def quiet_compiler_logs() -> Iterator[None]:
    """Hold back the compiler's warnings that say nothing about the model (no CUDA on a CPU
    machine, for one); its errors still come as exceptions."""
    logger = logging.getLogger("torch.utils.cpp_extension")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)
