"""Gradient accumulation: the group's gradient is the full batch's, weighted by what
train_step returns; under DDP, one all-reduce per optimizer step."""

import json
import os
import subprocess
import sys

import pytest
import torch

from torchexp.accumulation import Accumulator
from torchexp.distributed import World
from torchexp.precision import Precision, PrecisionChoice

FP32 = Precision(PrecisionChoice("fp32", "fp32", "test"), torch.device("cpu"))


class RecordingSGD(torch.optim.SGD):
    def __init__(self, parameters):
        super().__init__(parameters, lr=0.0)
        self.seen: list[torch.Tensor] = []

    def step(self, closure=None):
        self.seen.append(torch.cat([p.grad.flatten() for group in self.param_groups for p in group["params"]]))
        return super().step(closure)


def make_batches(sizes: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(0)
    return [(torch.randn(size, 3, generator=generator), torch.randn(size, 1, generator=generator)) for size in sizes]


def full_batch_gradient(model: torch.nn.Module, batches: list) -> torch.Tensor:
    """The gradient of the mean loss over every sample of `batches` at once."""
    model.zero_grad()
    inputs, targets = torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])
    torch.nn.functional.mse_loss(model(inputs), targets).backward()
    return torch.cat([p.grad.flatten() for p in model.parameters()])


def accumulate(model: torch.nn.Module, batches: list, size: int, total: int | None, weighted: bool) -> torch.Tensor:
    optimizer = RecordingSGD(model.parameters())
    model.zero_grad()
    accumulator = Accumulator(model, size, World())
    for index, (inputs, targets) in enumerate(batches):
        loss = torch.nn.functional.mse_loss(model(inputs), targets)
        weight = torch.tensor(float(len(inputs))) if weighted else None
        FP32.backward(accumulator.loss_to_backward(loss, weight, index, total))
        if accumulator.closes_group(index, total):
            accumulator.step(FP32, optimizer, model.parameters(), None)
    if accumulator.pending:  # a stream that ended mid-group
        accumulator.step(FP32, optimizer, model.parameters(), None, synced=False)
    return optimizer.seen[-1]


def test_batches_weighted_by_their_samples_accumulate_to_the_full_batch_gradient():
    model = torch.nn.Linear(3, 1)
    batches = make_batches([2, 9, 4])  # unequal: an unweighted mean of means would be wrong
    expected = full_batch_gradient(model, batches)
    assert torch.allclose(accumulate(model, batches, 3, 3, weighted=True), expected, atol=1e-6, rtol=0)
    assert not torch.allclose(accumulate(model, batches, 3, 3, weighted=False), expected, atol=1e-4, rtol=0)


def test_equal_batches_without_weights_accumulate_to_the_full_batch_gradient():
    model = torch.nn.Linear(3, 1)
    batches = make_batches([4, 4, 4])
    assert torch.allclose(accumulate(model, batches, 3, 3, weighted=False), full_batch_gradient(model, batches), atol=1e-6, rtol=0)


def test_a_stream_that_ends_mid_group_steps_with_the_mean_of_what_it_gave():
    model = torch.nn.Linear(3, 1)
    batches = make_batches([4, 4, 4, 4, 4])  # groups of 3: the second has 2 batches, and no length foretold it
    assert torch.allclose(accumulate(model, batches, 3, None, weighted=False), full_batch_gradient(model, batches[3:]), atol=1e-6, rtol=0)


def test_a_weight_for_some_batches_only_is_refused():
    accumulator = Accumulator(torch.nn.Linear(3, 1), 2, World())
    accumulator.loss_to_backward(torch.tensor(1.0), torch.tensor(2.0), 0, 4)
    with pytest.raises(TypeError, match="train_step must return a 'weight' for every batch or for none: this one has none"):
        accumulator.loss_to_backward(torch.tensor(1.0), None, 1, 4)


def test_under_ddp_and_fsdp_gradients_are_reduced_once_per_step_and_equal_the_full_batch_clipped_alike(tmp_path):
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "accumulation_ranks.py")
    output = tmp_path / "found.json"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", script, str(output)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=240, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr
    found = json.loads(output.read_text())
    ddp, fsdp = found["ddp"], found["fsdp"]
    assert ddp["all_reduces"] == ddp["groups"] == 2  # 3 micro-batches a step, 2 steps: 2 all-reduces, not 6
    assert ddp["worst_difference"] < 1e-6
    # FSDP: one reduce-scatter per unit and step, not per micro-batch; clipped to the global norm.
    assert fsdp["reduce_scatters"] == fsdp["units"] * fsdp["groups"] == 4
    assert fsdp["worst_difference"] < 1e-6
