"""A tiny regression project whose experiments torchexp 0.1 wrote, in tests/data/legacy/:
they show that experiments of the earlier format still read, compare, resume and load."""

import torch
from torch import nn

import torchexp
from torchexp.loaders import TensorLoader


class LegacyData(torchexp.Data):
    """x = 0..15, y = 2x + 1, one feature column; the last 4 samples validate and test."""

    def create(self, data_path):
        return {"validation": [12, 13, 14, 15]}

    def load_datasets(self, data_path):
        x = torch.arange(16, dtype=torch.float32).unsqueeze(1) / 16
        y = 2 * x + 1
        held_out = torch.tensor(self.state["validation"])
        train = torch.ones(16, dtype=torch.bool)
        train[held_out] = False
        self.datasets = {"train": (x[train], y[train]), "validation": (x[held_out], y[held_out]), "test": (x[held_out], y[held_out])}

    def load_loaders(self, data_path, num_workers):
        self.loaders = {
            split: TensorLoader(tensors, batch_size=4, shuffle=split == "train", seed=self.seed) for split, tensors in self.datasets.items()
        }


class LegacyRunner(torchexp.Runner):
    """Linear regression with SGD and a step scheduler."""

    def init_model(self, device):
        self.model = nn.Linear(1, 1).to(device)

    def init_optimizer(self, device):
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=self.get_conf("training", "lr"))

    def init_others(self, device):
        self.scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, step_size=1, gamma=0.9)

    def train_step(self, batch, device):
        x, y = batch
        return {"loss": ((self.model(x) - y) ** 2).mean()}

    def test(self, epoch, device):
        x, y = self.data.datasets["test"]
        return {"mse": ((self.model(x) - y) ** 2).mean().item(), "samples": len(x)}

    def serve_example(self):
        return [0.5]
