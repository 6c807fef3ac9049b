"""Turning `--device` values into torch devices, with a clear error for absent ones."""

import re
from typing import TYPE_CHECKING

from torchexp.errors import DeviceError

if TYPE_CHECKING:
    import torch  # imported lazily at run time: `--help` and check_device_spec need no torch

DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(:\d+)?")


def check_device_spec(spec: str) -> str:
    """Return `spec` if it is a well-formed device name; no torch import needed.

    Raises:
        DeviceError: it is not auto, cpu, cuda or cuda:N.
    """
    if not DEVICE_PATTERN.fullmatch(spec):
        raise DeviceError(f"device {spec!r} is not valid: use auto, cpu, cuda or cuda:N")
    return spec


def resolve_device(spec: str) -> "torch.device":
    """Return the torch device for `spec`; `auto` picks CUDA when there is one.

    Raises:
        DeviceError: the spec is malformed or names a device this machine lacks.
    """
    import torch

    check_device_spec(spec)
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec == "cpu":
        return torch.device("cpu")
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    index = int(spec.partition(":")[2] or 0)
    if index >= count:
        have = "no CUDA device" if count == 0 else f"{count} CUDA device{'s' if count > 1 else ''}"
        raise DeviceError(f"device {spec!r} is not available: this machine has {have}")
    return torch.device("cuda", index)
