"""Exact resume with any train loader: SIGKILL at random moments, resume, and compare every
tensor with a run that was never stopped; then `verify` re-runs every checkpoint.

Loader kinds (tests/loader_project.py): a plain DataLoader over a map-style Dataset that
augments with the global generators in two persistent workers, torchdata's
StatefulDataLoader over the same Dataset, a StatefulDataLoader over a stream without a
length, and a budget in steps that ends in the middle of an epoch; on one process, and on
two Gloo processes under torchrun.
"""

import json
import os
import random
import subprocess
import sys

import pytest
import torch

from click.testing import CliRunner

from conftest import assert_identical, kill_group_when
from loader_project import SCHEMA, cli
from torchexp import checkpoints
from torchexp.sidecar import read_sidecar

PROJECT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "loader_project.py")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TORCHEXP_TIMEOUT_S": "60", "PYTHONPATH": os.path.dirname(PROJECT)}


def command(root, name: str, *args: str, processes: int = 1) -> list[str]:
    launcher = [sys.executable]
    if processes > 1:
        launcher += ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}"]
    return [*launcher, PROJECT, "--experiments-path", str(root / "experiments"), "--experiment-name", name, *args]


def run(root, name: str, *args: str, processes: int = 1) -> str:
    """Run the project's command line, in this process unless under torchrun; return its output."""
    if processes == 1:
        result = CliRunner().invoke(cli, ["--experiments-path", str(root / "experiments"), "--experiment-name", name, *args], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return result.output
    completed = subprocess.run(command(root, name, *args, processes=processes), capture_output=True, text=True, timeout=240, env=ENV)
    assert completed.returncode == 0, completed.stderr
    return completed.stdout


def init(root, name: str, *settings: str) -> None:
    (root / "schema.json").write_text(json.dumps(SCHEMA))
    (root / "config.json").write_text("{}")
    pairs = [item for setting in settings for item in ("--set", setting)]
    run(root, name, "init", "--config-path", str(root / "config.json"), "--schema-path", str(root / "schema.json"), "--seed", "5", *pairs)


def checkpoint_files(root, name: str) -> list[str]:
    return sorted(name for name in os.listdir(root / "experiments" / name / "checkpoints") if checkpoints.parse_filename(name))


def load(root, name: str, filename: str) -> dict:
    return torch.load(root / "experiments" / name / "checkpoints" / filename, weights_only=True)


def kill_at_a_random_moment(root, name: str, args: list[str], processes: int, seed: int) -> bool:
    """Start `train` and SIGKILL it (every process) at a random moment after it saved its
    first checkpoint; return whether the kill landed before the run had finished.

    Each step sleeps (TORCHEXP_TEST_STEP_SECONDS) so that the run outlasts the moments drawn."""
    folder = root / "experiments" / name / "checkpoints"
    step_seconds = "0.03" if processes == 1 else "0.06"
    process = subprocess.Popen(
        command(root, name, *args, processes=processes), env={**ENV, "TORCHEXP_TEST_STEP_SECONDS": step_seconds},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    return kill_group_when(process, lambda: bool(os.listdir(folder)), random.Random(seed).uniform(0, 0.4))


SCENARIOS = {
    # kind, settings, train arguments, the final checkpoint
    "dataloader": ("dataloader", (), ("--max-epochs", "3"), "3.checkpoint.pt"),
    "stateful": ("stateful", (), ("--max-epochs", "3"), "3.checkpoint.pt"),
    "stream": ("stream", (), ("--max-epochs", "3"), "3.checkpoint.pt"),
    # 12 batches an epoch: steps 10 and 20 validate, the budget ends at step 30, mid-epoch 3.
    "steps": ("dataloader", ("trainer.max_steps=30", "trainer.validate_every_steps=10"), (), "30.checkpoint.pt"),
}


# On two ranks, 48 samples each: 6 batches an epoch, 3 steps of 2 accumulated batches; steps
# 3 and 6 validate, the budget ends at step 8, mid-epoch 3; DDP all-reduces once per step.
RANKED = ("trainer.max_steps=8", "trainer.validate_every_steps=3", "trainer.grad_accumulation=2")
RANKED_SCENARIOS = {
    "stream-steps": ("stream", RANKED, (), "8.checkpoint.pt"),
    "dataloader-steps": ("dataloader", RANKED, (), "8.checkpoint.pt"),
}
CASES = [
    *((1, name) for name in SCENARIOS),
    (2, "stream-steps"),
    pytest.param(2, "dataloader-steps", marks=pytest.mark.slow),  # the same loader as "steps" on one rank, sharded
]


@pytest.mark.parametrize("processes, scenario", CASES)
def test_sigkill_at_random_moments_then_resume_is_bit_identical_and_verifies(tmp_path, processes, scenario):
    kind, settings, budget, final = (SCENARIOS if processes == 1 else RANKED_SCENARIOS)[scenario]
    every_step = ("trainer.checkpoint_every_steps=1",)  # a mid-epoch checkpoint after every step: kills land anywhere
    init(tmp_path, "straight", f"data.loader={kind}", *settings, *every_step)
    init(tmp_path, "killed", f"data.loader={kind}", *settings, *every_step)
    args = ["train", *budget, "--num-workers", "2", "--device", "cpu"]
    run(tmp_path, "straight", *args, processes=processes)
    assert kill_at_a_random_moment(tmp_path, "killed", args, processes, seed=len(scenario)), "the kill came after the end"
    run(tmp_path, "killed", *args, processes=processes)
    assert_identical(load(tmp_path, "killed", final), load(tmp_path, "straight", final))
    standards = [name for name in checkpoint_files(tmp_path, "straight") if not name.endswith(".json")]
    assert standards == [name for name in checkpoint_files(tmp_path, "killed") if not name.endswith(".json")]
    for filename in standards:
        assert read_sidecar(str(tmp_path / "experiments" / "killed" / "checkpoints" / filename))["metrics"] == read_sidecar(
            str(tmp_path / "experiments" / "straight" / "checkpoints" / filename)
        )["metrics"]
    verified = run(tmp_path, "killed", "verify", "--all", "--device", "cpu", processes=processes)
    assert verified.count(": bit-identical (") == len(standards), verified
