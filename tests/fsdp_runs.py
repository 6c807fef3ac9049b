"""Running tests/fsdp_project.py under torchrun (2 Gloo ranks) for the FSDP tests, and
reading what it wrote."""

import json
import os
import subprocess
import sys

from click.testing import CliRunner

from fsdp_project import cli
from torchexp import checkpoints

PROJECT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fsdp_project.py")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TORCHEXP_TIMEOUT_S": "60", "PYTHONPATH": os.path.dirname(PROJECT)}
# 96 samples in batches of 8 over 2 ranks, 2 batches a step: 3 steps an epoch, a mid-epoch
# checkpoint at every even step (steps 2, 4, 6, 8 of 9).
TRAINER = {"strategy": "fsdp", "fsdp_modules": ["Block"], "grad_accumulation": 2, "grad_clip_norm": 1.0, "checkpoint_every_steps": 2}


def command(root, name: str, *args: str, processes: int = 2) -> list[str]:
    launcher = [sys.executable]
    if processes > 1:
        launcher += ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}"]
    return [*launcher, PROJECT, "--experiments-path", str(root / "experiments"), "--experiment-name", name, *args]


def run(root, name: str, *args: str, processes: int = 2, env: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    completed = subprocess.run(command(root, name, *args, processes=processes), capture_output=True, text=True, timeout=240, env={**ENV, **(env or {})})
    if check:
        assert completed.returncode == 0, completed.stderr
    return completed


def invoke(root, name: str, *args: str, code: int = 0) -> str:
    """Run the project's command line in this process (one process, no torchrun); return
    what it printed."""
    result = CliRunner().invoke(cli, ["--experiments-path", str(root / "experiments"), "--experiment-name", name, *args])
    assert result.exit_code == code, result.output
    return result.output


def init(root, name: str, **trainer) -> None:
    """Create the experiment in this process, so that it records the project's classes as
    `fsdp_project:...`, which serving them here imports."""
    (root / "schema.json").write_text('{"type": "object"}')
    (root / f"{name}.json").write_text(json.dumps({"trainer": {**TRAINER, **trainer}}))
    arguments = ["--experiments-path", str(root / "experiments"), "--experiment-name", name, "init"]
    result = CliRunner().invoke(cli, [*arguments, "--config-path", str(root / f"{name}.json"), "--schema-path", str(root / "schema.json")])
    assert result.exit_code == 0, result.output


def folder(root, name: str):
    return root / "experiments" / name / "checkpoints"


def load(root, name: str, filename: str) -> dict:
    return checkpoints.list_checkpoints(str(folder(root, name)))[[item.name for item in checkpoints.list_checkpoints(str(folder(root, name)))].index(filename)].load()


def published(root, name: str) -> list[str]:
    return sorted(item.name for item in checkpoints.list_checkpoints(str(folder(root, name))))


def train_straight(root) -> dict:
    """An FSDP experiment "straight" trained 3 epochs without a stop; its final checkpoint, whole."""
    init(root, "straight")
    run(root, "straight", "train", "--max-epochs", "3", "--device", "cpu")
    return load(root, "straight", "3.checkpoint.dcp")
