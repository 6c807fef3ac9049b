"""Seeding and capturing every random number generator a training run touches.

States are stored as tensors and plain data so that checkpoints load with
`weights_only=True`.
"""

import contextlib
import os
import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch


def mix_seed(*parts: int) -> int:
    """A 63-bit seed made from integers, e.g. (seed, epoch, index): a different tuple
    gives, as far as the generators can tell, an unrelated stream."""
    value = 0
    for part in parts:
        value = (value * 1_000_003 + part + 1) % 2**63
    return value


def seed_globals(seed: int) -> None:
    """Seed Python's, NumPy's and torch's CPU global generators, cheaply (no CUDA)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.default_generator.manual_seed(seed)


@contextlib.contextmanager
def seeded_globals(seed: int) -> Iterator[None]:
    """Within the block, Python's, NumPy's and torch's CPU global generators start from
    `seed`; afterwards they are as they were, as if the block had drawn nothing."""
    with preserving_globals():
        seed_globals(seed)
        yield


@contextlib.contextmanager
def preserving_globals() -> Iterator[None]:
    """Within the block, draw from the global generators as usual; afterwards they are as
    they were, as if the block had drawn nothing (CUDA's included)."""
    saved = random.getstate(), np.random.get_state(), torch.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    try:
        yield
    finally:
        random.setstate(saved[0])
        np.random.set_state(saved[1])
        torch.set_rng_state(saved[2])
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's generators (every CUDA device included)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@contextlib.contextmanager
def deterministic_algorithms(enabled: bool) -> Iterator[None]:
    """Within the block, use only deterministic algorithms when `enabled` (trainer.deterministic).

    cuBLAS needs CUBLAS_WORKSPACE_CONFIG before its first call to be deterministic, so it is
    set here, before the model is built, unless the user set it. The process-wide settings
    are restored afterwards, so that a caller training in-process gets its own back.
    """
    if not enabled:
        yield
        return
    workspace_set = "CUBLAS_WORKSPACE_CONFIG" in os.environ
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    previous = torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous[0])
        torch.backends.cudnn.benchmark = previous[1]
        if not workspace_set:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)


def capture_rng_states() -> dict[str, Any]:
    """Return the state of every generator as tensors and plain data."""
    state = np.random.get_state()
    assert isinstance(state, tuple), "numpy's global generator is a Mersenne Twister, whose legacy state is a tuple"
    name, keys, position, has_gauss, cached_gaussian = state
    return {
        "python": random.getstate(),
        "numpy": {
            "name": name,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "position": int(position),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_rng_states(states: dict[str, Any]) -> list[str]:
    """Restore generators from `capture_rng_states` output.

    Returns:
        Warnings about states that could not be restored (e.g. a different GPU count).
    """
    random.setstate(to_tuple(states["python"]))
    numpy_state = states["numpy"]
    np.random.set_state(
        (
            numpy_state["name"],
            numpy_state["keys"].numpy().astype(np.uint32),
            numpy_state["position"],
            numpy_state["has_gauss"],
            numpy_state["cached_gaussian"],
        )
    )
    torch.set_rng_state(states["torch"])
    cuda_states = states["cuda"]
    if not torch.cuda.is_available():
        return ["CUDA generator states were saved but this machine has no CUDA device"] if cuda_states else []
    if len(cuda_states) != torch.cuda.device_count():
        return [
            f"{len(cuda_states)} CUDA generator states were saved for {torch.cuda.device_count()} devices; not restored"
        ]
    torch.cuda.set_rng_state_all(cuda_states)
    return []


def to_tuple(value: Any) -> Any:
    """Turn nested lists back into the tuples `random.setstate` expects."""
    if isinstance(value, (list, tuple)):
        return tuple(to_tuple(item) for item in value)
    return value
