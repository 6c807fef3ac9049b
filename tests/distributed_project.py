"""A tiny torchexp project for the distributed tests, run under torchrun.

Its train step reports each rank's number as a metric, so the logged epoch mean tells
whether metrics were reduced over ranks (0.5 with two ranks) or taken from rank 0 (0.0).
Each rank also appends the samples it saw to `seen-<rank>.txt` beside the experiments.
"""

import os
import signal
import time

import torch
import torch.nn.functional as F

import torchexp
from torchexp.loaders import TensorLoader

SAMPLES = 64


class ProjectData(torchexp.Data):
    def create(self, data_path: str) -> dict:
        return {}

    def load_datasets(self, data_path: str) -> None:
        generator = torch.Generator().manual_seed(0)
        inputs = torch.randn(SAMPLES, 4, generator=generator)
        indexes = torch.arange(SAMPLES)
        self.datasets = {"train": (inputs, inputs.sum(1, keepdim=True), indexes)}
        self.datasets["validation"] = self.datasets["test"] = (inputs[:10], inputs[:10].sum(1, keepdim=True), indexes[:10])

    def load_loaders(self, data_path: str, num_workers: int) -> None:
        self.loaders = {
            split: TensorLoader(tensors, batch_size=8, shuffle=split == "train", seed=self.seed)
            for split, tensors in self.datasets.items()
        }


class ProjectRunner(torchexp.Runner):
    def init_model(self, device: torch.device) -> None:
        self.model = torch.nn.Linear(4, 1).to(device)

    def init_optimizer(self, device: torch.device) -> None:
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.05)

    def train_step(self, batch, device):
        inputs, targets, indexes = batch
        # TORCHEXP_TEST_DIE_AT_STEP=S: the step before S takes 0.1 s on every rank, so that
        # a short checkpoint clock falls due there; then rank 1 kills itself at step S, once.
        step = self.counters["step"] + 1
        if step + 1 == int(os.environ.get("TORCHEXP_TEST_DIE_AT_STEP", "0")):
            time.sleep(0.1)
        if os.environ.get("RANK") == "1" and step == int(os.environ.get("TORCHEXP_TEST_DIE_AT_STEP", "0")):
            self.die_once()
        self.record_seen(indexes)
        rank = float(os.environ.get("RANK", "0"))
        return {"loss": F.mse_loss(self.model(inputs), targets), "rank": torch.tensor(rank)}

    def validation_step(self, batch, device):
        inputs, targets, _ = batch
        return {"loss": F.mse_loss(self.model(inputs), targets)}

    def train_before_epoch_tasks(self, device: torch.device) -> None:
        # TORCHEXP_TEST_DIE_AT=E: rank 1 kills itself at the start of epoch E, once.
        # TORCHEXP_TEST_HANG_AT=E: rank 1 stops taking part at the start of epoch E.
        epoch = self.counters["epoch"] + 1
        if os.environ.get("RANK") != "1":
            return
        if epoch == int(os.environ.get("TORCHEXP_TEST_DIE_AT", "0")):
            self.die_once()
        if epoch == int(os.environ.get("TORCHEXP_TEST_HANG_AT", "0")):
            signal.signal(signal.SIGTERM, lambda signum, frame: os._exit(1))  # when torchrun stops the run
            while True:
                time.sleep(0.05)

    def die_once(self) -> None:
        """SIGKILL this process, unless an earlier run of the test died already."""
        marker = os.path.join(self.experiment.experiments_path, "died")
        if not os.path.exists(marker):
            open(marker, "w").close()
            os.kill(os.getpid(), signal.SIGKILL)

    def record_seen(self, indexes: torch.Tensor) -> None:
        path = os.path.join(self.experiment.experiments_path, f"seen-{os.environ.get('RANK', '0')}.txt")
        with open(path, "a") as file:
            file.write(f"{self.counters['epoch'] + 1} " + " ".join(map(str, indexes.tolist())) + "\n")

    def test(self, epoch: int, device: torch.device) -> dict:
        return {}


cli = torchexp.make_cli(ProjectData, ProjectRunner)

if __name__ == "__main__":
    cli(prog_name="distributed_project")
