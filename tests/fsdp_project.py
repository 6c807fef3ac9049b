"""A tiny transformer-shaped torchexp project for the FSDP tests, run under torchrun.

Its model is a stack of `Block`s (the unit trainer.fsdp_modules names), trained with
AdamW, a per-step schedule, gradient clipping and accumulation, so that every state FSDP
shards and DCP saves is exercised.

TORCHEXP_TEST_KILL_SAVE=R:N:WHERE SIGKILLs rank R during the N-th checkpoint save of the
process, at WHERE: "shards" (once its shards are written, before the checkpoint is
published) or "publish" (rank 0, between the sidecar's rename and the folder's). A marker
file beside the experiments makes each kill happen once. TORCHEXP_TEST_STEP_SECONDS makes
each step sleep, so that a run outlasts the moments a test kills it at.
"""

import os
import signal
import time

import torch
import torch.nn.functional as F

import torchexp
from torchexp import sharded, sidecar
from torchexp.loaders import TensorLoader

SAMPLES = 96
WIDTH = 16


class ProjectData(torchexp.Data):
    def create(self, data_path: str) -> dict:
        return {}

    def load_datasets(self, data_path: str) -> None:
        generator = torch.Generator().manual_seed(0)
        inputs = torch.randn(SAMPLES, WIDTH, generator=generator)
        targets = (inputs[:, :4].sum(1) > 0).long()
        self.datasets = {"train": (inputs, targets)}
        self.datasets["validation"] = self.datasets["test"] = (inputs[:24], targets[:24])

    def load_loaders(self, data_path: str, num_workers: int) -> None:
        self.loaders = {split: TensorLoader(tensors, batch_size=8, shuffle=split == "train", seed=self.seed) for split, tensors in self.datasets.items()}


class Block(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.norm = torch.nn.LayerNorm(WIDTH)
        self.linear = torch.nn.Linear(WIDTH, WIDTH)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return inputs + torch.relu(self.linear(self.norm(inputs)))


class Model(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.blocks = torch.nn.Sequential(*(Block() for _ in range(3)))
        self.head = torch.nn.Linear(WIDTH, 2)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(inputs))


class ProjectRunner(torchexp.Runner):
    def init_model(self, device: torch.device) -> None:
        self.model = Model().to(device)

    def init_optimizer(self, device: torch.device) -> None:
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=0.01)

    def init_others(self, device: torch.device) -> None:
        self.scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, step_size=3, gamma=0.9)
        self.scheduler_interval = "step"

    def train_step(self, batch, device):
        time.sleep(float(os.environ.get("TORCHEXP_TEST_STEP_SECONDS", "0")))
        inputs, targets = batch
        logits = self.model(inputs)
        return {"loss": F.cross_entropy(logits, targets), "accuracy": (logits.argmax(1) == targets).float().mean()}

    def validation_step(self, batch, device):
        inputs, targets = batch
        logits = self.model(inputs)
        return {"loss": F.cross_entropy(logits, targets), "accuracy": (logits.argmax(1) == targets).float().mean()}

    def test(self, epoch: int, device: torch.device) -> dict:
        return {}

    def serve_example(self) -> list[float]:
        return [0.5] * WIDTH


def kill_during_saves() -> None:
    """Arm TORCHEXP_TEST_KILL_SAVE (see the module's docstring)."""
    spec = os.environ.get("TORCHEXP_TEST_KILL_SAVE")
    if not spec:
        return
    rank, count, where = spec.split(":")
    saves = [0]

    def kill_once(experiments_path: str) -> None:
        marker = os.path.join(experiments_path, f"killed-{rank}-{count}-{where}")
        if os.environ.get("RANK", "0") == rank and not os.path.exists(marker):
            open(marker, "w").close()
            os.kill(os.getpid(), signal.SIGKILL)

    if where == "shards":
        shard_files = sharded.shard_files

        def counting(folder: str, shard_rank: int) -> list[str]:
            saves[0] += 1
            if saves[0] == int(count):
                kill_once(os.path.dirname(os.path.dirname(os.path.dirname(folder))))
            return shard_files(folder, shard_rank)

        sharded.shard_files = counting
    else:
        publish = sidecar.publish

        def publishing(renames: list) -> None:
            if renames[-1][1].endswith(".dcp"):
                saves[0] += 1
                publish(renames[:1])
                if saves[0] == int(count):
                    kill_once(os.path.dirname(os.path.dirname(os.path.dirname(renames[-1][1]))))
                publish(renames[1:])
            else:
                publish(renames)

        sidecar.publish = publishing


kill_during_saves()
cli = torchexp.make_cli(ProjectData, ProjectRunner)

if __name__ == "__main__":
    cli(prog_name="fsdp_project")
