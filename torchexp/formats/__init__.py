"""Export formats: how a release is written for other runtimes, and read back by `serve`.

Each format is one module with one `ExportFormat` (`base`): its name and file suffix, its
export, the check that the export reproduces the release, and the serve runtime that runs
it. `export --format`, `serve --runtime` and their help are made from FORMATS; adding a
format is a module and an entry here.

    onnx         the model as an ONNX graph, run in onnxruntime
    safetensors  its weights, loaded into the model the project's Runner builds
    aoti         the model compiled by torch.export and AOTInductor for this machine's CPU
"""

from torchexp.errors import ConfigError
from torchexp.formats.aoti import AotiFormat
from torchexp.formats.base import ExportFormat
from torchexp.formats.onnx import OnnxFormat
from torchexp.formats.safetensors import SafetensorsFormat

FORMATS: dict[str, ExportFormat] = {fmt.name: fmt for fmt in (OnnxFormat(), SafetensorsFormat(), AotiFormat())}


def find_format(name: str) -> ExportFormat:
    """Return the format called `name`.

    Raises:
        ConfigError: no format has that name; the message lists those there are.
    """
    if name not in FORMATS:
        raise ConfigError(f"export format {name!r} is not one of {', '.join(FORMATS)}")
    return FORMATS[name]
