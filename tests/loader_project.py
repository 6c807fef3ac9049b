"""A torchexp project whose train loader is of the kind its configuration names, for the
tests of exact resume with any loader (tests/test_train_loader.py, tests/test_loader_kills.py).

data.loader:
    tensor       torchexp's TensorLoader
    dataloader   a plain DataLoader over a map-style Dataset that augments in __getitem__
                 with torch's, NumPy's and Python's global generators: shuffled, with the
                 --num-workers workers, persistent; validation by a DataLoader with
                 persistent workers too
    stateful     torchdata's StatefulDataLoader over that Dataset
    stream       torchdata's StatefulDataLoader over an IterableDataset without a length,
                 whose state is its epoch and position
    plainstream  a plain DataLoader over that IterableDataset: whole epochs only
    subclass     a DataLoader subclass, shuffled, with persistent workers: whole epochs only

The model has dropout, so that the training process's own generator matters too.
TORCHEXP_TEST_STEP_SECONDS makes every training step sleep, so that a kill lands mid-epoch.
"""

import os
import random
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, IterableDataset, TensorDataset, get_worker_info

import torchexp
from torchexp.loaders import TensorLoader

SAMPLES, FEATURES = 96, 8


def make_samples() -> tuple[torch.Tensor, torch.Tensor]:
    inputs = torch.randn(SAMPLES, FEATURES, generator=torch.Generator().manual_seed(0))
    return inputs, inputs.sum(1, keepdim=True)


class Augmented(Dataset):
    """Each sample with noise from all three global generators, as augmentations draw it."""

    def __init__(self, inputs: torch.Tensor, targets: torch.Tensor):
        self.inputs, self.targets = inputs, targets

    def __len__(self) -> int:
        return len(self.inputs)

    def __getitem__(self, index: int):
        noise = torch.randn(FEATURES) * 0.05 + float(np.random.normal(0, 0.05)) + random.gauss(0, 0.05)
        return self.inputs[index] + noise, self.targets[index]


class Stream(IterableDataset):
    """The samples in a new order each epoch, this rank's and worker's share of them, with
    noise drawn per sample from its own generator; its state is (epoch, position)."""

    def __init__(self, inputs: torch.Tensor, targets: torch.Tensor, seed: int):
        self.inputs, self.targets, self.seed = inputs, targets, seed
        self.epoch, self.position = 1, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch, self.position = epoch, 0

    def __iter__(self):
        worker = get_worker_info()
        workers, index = (worker.num_workers, worker.id) if worker else (1, 0)
        ranks, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
        share = self.share(rank * workers + index, ranks * workers)
        while self.position < len(share):
            sample = share[self.position]
            self.position += 1
            noise = torch.randn(FEATURES, generator=torch.Generator().manual_seed(self.seed * 10**6 + self.epoch * 1000 + sample)) * 0.05
            yield self.inputs[sample] + noise, self.targets[sample]

    def share(self, part: int, parts: int) -> list[int]:
        order = torch.randperm(SAMPLES, generator=torch.Generator().manual_seed(self.seed * 1000 + self.epoch))
        return order[part::parts].tolist()

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.position = state["epoch"], state["position"]


class Subclassed(DataLoader):
    """A DataLoader of the project's own class, which torchexp does not rebuild."""


class ProjectData(torchexp.Data):
    def create(self, data_path: str) -> dict:
        return {}

    def load_datasets(self, data_path: str) -> None:
        inputs, targets = make_samples()
        self.datasets = {"train": (inputs, targets), "validation": (inputs[:16], targets[:16]), "test": (inputs[:16], targets[:16])}

    def load_loaders(self, data_path: str, num_workers: int) -> None:
        kind, batch_size = self.get_conf("data", "loader"), self.get_conf("data", "batch_size")
        inputs, targets = self.datasets["train"]
        workers = {"num_workers": num_workers, "persistent_workers": num_workers > 0}
        if kind == "tensor":
            train = TensorLoader((inputs, targets), batch_size, shuffle=True, seed=self.seed)
        elif kind == "dataloader":
            train = DataLoader(Augmented(inputs, targets), batch_size=batch_size, shuffle=True, **workers)
        elif kind == "stateful":
            from torchdata.stateful_dataloader import StatefulDataLoader

            train = StatefulDataLoader(Augmented(inputs, targets), batch_size=batch_size, shuffle=True, **workers)
        elif kind == "stream":
            from torchdata.stateful_dataloader import StatefulDataLoader

            train = StatefulDataLoader(Stream(inputs, targets, self.seed), batch_size=batch_size, num_workers=num_workers)
        elif kind == "plainstream":
            train = DataLoader(Stream(inputs, targets, self.seed), batch_size=batch_size, num_workers=num_workers)
        else:
            train = Subclassed(TensorDataset(inputs, targets), batch_size=batch_size, shuffle=True, **workers)
        evaluation = {split: TensorLoader(self.datasets[split], 16) for split in ("validation", "test")}
        if kind == "dataloader":  # its workers, started once per process, draw their seed from this process
            evaluation["validation"] = DataLoader(TensorDataset(*self.datasets["validation"]), batch_size=16, **workers)
        self.loaders = {"train": train, **evaluation}


class ProjectRunner(torchexp.Runner):
    def init_model(self, device: torch.device) -> None:
        self.model = torch.nn.Sequential(torch.nn.Linear(FEATURES, 16), torch.nn.ReLU(), torch.nn.Dropout(0.2), torch.nn.Linear(16, 1))

    def init_optimizer(self, device: torch.device) -> None:
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.01, momentum=0.9)

    def init_others(self, device: torch.device) -> None:
        self.scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, step_size=2, gamma=0.5)

    def train_step(self, batch, device):
        time.sleep(float(os.environ.get("TORCHEXP_TEST_STEP_SECONDS", "0")))
        inputs, targets = batch
        return F.mse_loss(self.model(inputs), targets)

    def validation_step(self, batch, device):
        inputs, targets = batch
        return F.mse_loss(self.model(inputs), targets)

    def test(self, epoch: int, device: torch.device) -> dict:
        return {}


SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "properties": {
        "data": {
            "type": "object",
            "properties": {
                "loader": {"enum": ["tensor", "dataloader", "stateful", "stream", "plainstream", "subclass"], "default": "dataloader"},
                "batch_size": {"type": "integer", "minimum": 1, "default": 8},
            },
        }
    },
}

cli = torchexp.make_cli(ProjectData, ProjectRunner)

if __name__ == "__main__":
    cli(prog_name="loader_project")
