"""The data of breast_cancer: a synthetic, learnable data set drawn from the experiment's seed.

Points in the plane, in two classes: two overlapping Gaussian clouds. Nothing is
downloaded and nothing is read from --data-path; replace `make_points` with the reading
of your own data set, and keep the shape of the three methods.
"""

import torch

import torchexp
from torchexp.loaders import TensorLoader

CENTRES = ((-1.0, -1.0), (1.0, 1.0))  # one cloud per class


def make_points(count: int, noise: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Return `count` points (float32, count x 2) and their classes (int64), from `seed` alone."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(len(CENTRES), (count,), generator=generator)
    points = torch.tensor(CENTRES)[labels] + noise * torch.randn(count, 2, generator=generator)
    return points, labels


class BreastCancerData(torchexp.Data):
    """`data.samples` points, split once at init into training, validation and test sets."""

    def create(self, data_path: str) -> dict:
        """Decide the split, once; what this returns is saved to the experiment's data.json."""
        samples = self.get_conf("data", "samples")
        order = torch.randperm(samples, generator=torch.Generator().manual_seed(self.seed)).tolist()
        validation = round(samples * self.get_conf("data", "val_split"))
        test = round(samples * self.get_conf("data", "test_split"))
        return {"validation_indexes": sorted(order[:validation]), "test_indexes": sorted(order[validation : validation + test])}

    def load_datasets(self, data_path: str) -> None:
        """Fill self.datasets["train" | "validation" | "test"] with the split saved at init."""
        points, labels = make_points(self.get_conf("data", "samples"), self.get_conf("data", "noise"), self.seed)
        held_out = {"validation": self.state["validation_indexes"], "test": self.state["test_indexes"]}
        train = torch.ones(len(labels), dtype=torch.bool)
        self.datasets = {}
        for split, indexes in held_out.items():
            indexes = torch.tensor(indexes, dtype=torch.long)
            train[indexes] = False
            self.datasets[split] = (points[indexes], labels[indexes])
        self.datasets["train"] = (points[train], labels[train])

    def load_loaders(self, data_path: str, num_workers: int) -> None:
        """Fill self.loaders with the same keys. TensorLoader keeps the tensors in memory
        (on the training device) and draws each epoch's order from (seed, epoch), which is
        what lets an interrupted run resume exactly."""
        batch_size = self.get_conf("data", "batch_size")
        self.loaders = {
            split: TensorLoader(tensors, batch_size=batch_size, shuffle=split == "train", seed=self.seed)
            for split, tensors in self.datasets.items()
        }
