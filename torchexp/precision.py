"""Choosing the autocast precision: `auto` takes bf16 only where the hardware runs it natively.

On a CPU without bf16 instructions (x86 without AVX512-BF16 or AMX, such as AVX2-only
servers and laptops), bf16 autocast is emulated and many times slower than fp32: about 14x
for the MNIST CNN on a 2-core AMD EPYC with AVX2. `auto` therefore means bf16 on CUDA
devices with native bf16 and on CPUs with AVX512-BF16, AMX-BF16 or Arm's BF16 extension,
and fp32 elsewhere.

`Precision` is what the training loop holds once the choice is made, a plugin in the way
of Lightning Fabric's: autocast around forward passes, backward through fp16's gradient
scaler, and the optimizer step with gradient clipping, so that the loop has no branch on
the precision.
"""

import contextlib
import dataclasses
import os
import platform
from collections.abc import Iterable
from typing import Any

import torch

from torchexp.errors import ConfigError

NATIVE_BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")  # x86 AVX-512 BF16, x86 AMX, Arm v8.6 BF16
CPUINFO_PATH = "/proc/cpuinfo"


@dataclasses.dataclass(frozen=True)
class PrecisionChoice:
    """The precision training runs in, and why."""

    configured: str  # trainer.precision: auto, fp32, bf16 or fp16
    used: str  # fp32, bf16 or fp16
    reason: str  # one sentence for the log
    slow: bool = False  # bf16 asked for on a device that only emulates it

    def to_json(self) -> dict[str, str]:
        """Plain data for checkpoints and their sidecars."""
        return {"configured": self.configured, "used": self.used, "reason": self.reason}


class Precision:
    """Autocast, backward and optimizer steps in the chosen precision.

    Args:
        choice: the precision chosen for the device (`choose_precision`).
        device: the training device.
    """

    DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}

    def __init__(self, choice: PrecisionChoice, device: torch.device):
        self.choice = choice
        self.device = device
        # fp16 gradients underflow without loss scaling; bf16 has fp32's range and needs none.
        self.scaler = torch.amp.GradScaler("cuda") if choice.used == "fp16" else None

    def autocast(self) -> contextlib.AbstractContextManager:
        """Autocast in the chosen precision, or nothing for fp32."""
        if self.choice.used == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.DTYPES[self.choice.used])

    def backward(self, loss: torch.Tensor) -> None:
        """Backward from `loss`, scaled for fp16."""
        (self.scaler.scale(loss) if self.scaler else loss).backward()

    def step(
        self, optimizer: torch.optim.Optimizer, parameters: Iterable[torch.nn.Parameter], clip_norm: float | None
    ) -> None:
        """Clip the gradients' global norm to `clip_norm` (None: no clipping), then step."""
        if clip_norm is not None:
            if self.scaler:
                self.scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(parameters, clip_norm)
        if self.scaler:
            self.scaler.step(optimizer)
            self.scaler.update()
        else:
            optimizer.step()

    def state_dict(self) -> dict[str, Any] | None:
        """The gradient scaler's state, for checkpoints; None without one."""
        return self.scaler.state_dict() if self.scaler else None

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        if self.scaler is not None and state is not None:
            self.scaler.load_state_dict(state)


def read_cpu_flags(path: str = CPUINFO_PATH) -> set[str]:
    """Return the CPU's feature flags from /proc/cpuinfo (Linux), or an empty set elsewhere."""
    try:
        with open(path, encoding="ascii", errors="replace") as file:
            for line in file:
                key, _, value = line.partition(":")
                if key.strip() in ("flags", "Features"):  # x86 calls them flags, Arm Features
                    return set(value.split())
    except OSError:
        pass
    return set()


def read_cpu_model(path: str = CPUINFO_PATH) -> str:
    """Return the CPU's model name from /proc/cpuinfo, or the platform's processor string."""
    try:
        with open(path, encoding="ascii", errors="replace") as file:
            for line in file:
                if line.startswith("model name"):
                    return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cpu_native_bf16(flags: set[str]) -> str | None:
    """Return the flag that gives this CPU native bf16 arithmetic, or None."""
    return next((flag for flag in NATIVE_BF16_CPU_FLAGS if flag in flags), None)


def cuda_native_bf16(device: torch.device) -> bool:
    """Whether a CUDA device computes in bf16 natively (compute capability 8.0, Ampere, or newer)."""
    major, _ = torch.cuda.get_device_capability(device)
    return major >= 8


def choose_precision(configured: str, device: torch.device, flags: set[str] | None = None) -> PrecisionChoice:
    """Resolve trainer.precision for `device`.

    Args:
        configured: trainer.precision.
        device: the training device.
        flags: the CPU's feature flags; read from /proc/cpuinfo when None.

    Raises:
        ConfigError: fp16 on a device other than CUDA.
    """
    if configured == "fp16" and device.type != "cuda":
        raise ConfigError(f"trainer.precision fp16 needs a CUDA device, not {device}: use auto, bf16 or fp32")
    if configured not in ("auto", "bf16"):  # fp32 and fp16 mean what they say: nothing to probe
        return PrecisionChoice(configured, configured, f"trainer.precision {configured}")
    if device.type == "cuda":
        native, where = cuda_native_bf16(device), f"CUDA device {device}"
        missing = "has no native bf16 (compute capability below 8.0)"
        found = "computes bf16 natively"
    else:
        flag = cpu_native_bf16(read_cpu_flags() if flags is None else flags)
        native, where = flag is not None, "this CPU"
        missing = "has no native bf16 (no avx512_bf16, amx_bf16 or Arm bf16 flag)"
        found = f"computes bf16 natively ({flag})"
    if configured == "auto":
        used = "bf16" if native else "fp32"
        return PrecisionChoice(
            configured, used, f"trainer.precision auto: {where} {found if native else missing}, so {used}"
        )
    if configured == "bf16" and not native:
        reason = (
            f"trainer.precision bf16: {where} {missing}; "
            "bf16 is emulated and will be much slower than fp32 (use auto or fp32)"
        )
        return PrecisionChoice(configured, "bf16", reason, slow=True)
    return PrecisionChoice(configured, "bf16", "trainer.precision bf16")


def describe_cpu() -> str:
    """One line naming the CPU's vector extensions that matter for speed, for benchmark output."""
    flags = read_cpu_flags()
    shown = sorted(flag for flag in flags if flag.startswith(("avx512", "amx")) or flag in ("avx2", "bf16"))
    return f"{os.cpu_count()} cores; " + (" ".join(shown) if shown else "no AVX2/AVX-512/AMX flags")
