"""Projects whose hooks fail, for tests/test_hooks.py: each breaks one rule, by subclassing
the legacy regression project (tests/legacy_project.py)."""

import os

import torch

from legacy_project import LegacyData, LegacyRunner


class MissingFileData(LegacyData):
    """Reads its data set from a file of --data-path, as most projects do, and lets the
    error of a missing one through."""

    def load_datasets(self, data_path):
        torch.load(os.path.join(data_path, "points.pt"), weights_only=True)


class FailingCreateData(LegacyData):
    def create(self, data_path):
        return {"validation": [12, 13, 14, 15], "rows": len(open(os.path.join(data_path, "rows.csv")).readlines())}


class StatsData(LegacyData):
    """Computes its normalization statistics in load_datasets: the rule broken."""

    def load_datasets(self, data_path):
        super().load_datasets(data_path)
        self.stats = {"mean": float(self.datasets["train"][0].mean())}


class StatsRunner(LegacyRunner):
    """Normalizes its serving instances with Data's statistics, wherever they are."""

    def serve_preprocess(self, instance):
        return (torch.as_tensor(instance, dtype=torch.float32) - self.data.stats["mean"]).reshape(1)


class StateStatsData(LegacyData):
    """Keeps its statistics in the state it decides at init: the rule kept."""

    def create(self, data_path):
        return {**super().create(data_path), "mean": 15 / 32}


class StateStatsRunner(LegacyRunner):
    def serve_preprocess(self, instance):
        return (torch.as_tensor(instance, dtype=torch.float32) - self.data.state["mean"]).reshape(1)


class ExplodingRunner(LegacyRunner):
    def train_step(self, batch, device):
        if self.counters["epoch"] == 1:
            raise RuntimeError("the loss went through the roof")
        return super().train_step(batch, device)


class FailingTestRunner(LegacyRunner):
    def test(self, epoch, device):
        return {"mse": 1 / len(self.data.datasets.get("unlabelled", []))}


class UnreducedLossRunner(LegacyRunner):
    """Returns the per-sample losses, computed with reduction="none"."""

    def train_step(self, batch, device):
        x, y = batch
        return torch.nn.functional.mse_loss(self.model(x), y, reduction="none").squeeze(1)


class ForgetfulRunner(LegacyRunner):
    """Computes the loss and forgets to return it."""

    def train_step(self, batch, device):
        x, y = batch
        ((self.model(x) - y) ** 2).mean()


class ItemLossRunner(LegacyRunner):
    """Returns the loss as a Python number."""

    def train_step(self, batch, device):
        x, y = batch
        return {"loss": ((self.model(x) - y) ** 2).mean().item()}


class ForgetfulValidationRunner(LegacyRunner):
    """Validates, and forgets to return the metrics."""

    def validation_step(self, batch, device):
        super().validation_step(batch, device)
