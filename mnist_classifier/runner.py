"""Training and testing the MNIST classifier."""

import math

import torch
import torch.nn.functional as F

import torchexp
from mnist_classifier.model import build_model

CLASSES = 10


class MNISTClassifierRunner(torchexp.Runner):
    """Negative log-likelihood training; accuracy, per-class accuracy and confusion at test."""

    def init_model(self, device: torch.device) -> None:
        self.model = build_model(self.get_conf("model", "name")).to(device)

    def init_optimizer(self, device: torch.device) -> None:
        name = self.get_conf("training", "optimizer")
        options = {"lr": self.get_conf("training", "lr"), "weight_decay": self.get_conf("training", "weight_decay")}
        if name == "sgd":
            options["momentum"] = self.get_conf("training", "momentum")
        optimizers = {"adadelta": torch.optim.Adadelta, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}
        self.optimizer = optimizers[name](self.model.parameters(), **options)

    def init_others(self, device: torch.device) -> None:
        name = self.get_conf("training", "scheduler")
        if name == "step":
            self.scheduler = torch.optim.lr_scheduler.StepLR(
                self.optimizer, step_size=self.get_conf("training", "step_size"), gamma=self.get_conf("training", "gamma")
            )
        elif name == "onecycle":
            total = self.get_conf("training", "schedule_epochs") * len(self.data.loaders["train"])
            self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda step: one_cycle_factor(step, total))
            self.scheduler_interval = "iteration"

    def train_step(self, batch: tuple[torch.Tensor, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
        images, labels = batch
        output = self.model(images)
        return {"loss": F.nll_loss(output, labels), "accuracy": (output.argmax(1) == labels).float().mean()}

    def test(self, epoch: int, device: torch.device) -> dict:
        """Loss, accuracy, per-class accuracy and confusion matrix, summed over samples."""
        # Dropout and batch norm must be in eval mode even when test is called directly.
        was_training = self.model.training
        self.model.eval()
        loss_sum = torch.zeros((), device=device)
        confusion = torch.zeros(CLASSES * CLASSES, dtype=torch.long, device=device)
        with torch.no_grad():
            for images, labels in self.data.loaders["test"]:
                output = self.model(images)
                loss_sum += F.nll_loss(output.float(), labels, reduction="sum")
                confusion += torch.bincount(labels * CLASSES + output.argmax(1), minlength=CLASSES * CLASSES)
        self.model.train(was_training)
        confusion = confusion.view(CLASSES, CLASSES).cpu()
        samples = int(confusion.sum())
        per_class = (confusion.diag() / confusion.sum(1).clamp(min=1)).tolist()
        results = {
            "accuracy": confusion.diag().sum().item() / samples,
            "loss": loss_sum.item() / samples,
            "samples": samples,
            "per_class_accuracy": per_class,
            "confusion_matrix": confusion.tolist(),
        }
        self.report_test(epoch, results)
        return results

    def report_test(self, epoch: int, results: dict) -> None:
        """Send per-class accuracy and the confusion matrix to TensorBoard and the console."""
        for digit, accuracy in enumerate(results["per_class_accuracy"]):
            self.tracker.writer.add_scalar(f"test_class_accuracy/{digit}", accuracy, epoch)
        header = "| true \\ predicted | " + " | ".join(map(str, range(CLASSES))) + " |"
        rows = [f"| {digit} | " + " | ".join(map(str, row)) + " |" for digit, row in enumerate(results["confusion_matrix"])]
        table = "\n".join([header, "|" + "---|" * (CLASSES + 1), *rows])
        self.tracker.writer.add_text("test/confusion_matrix", table, epoch)
        self.logger.info("per-class accuracy: " + ", ".join(f"{d}: {a:.4f}" for d, a in enumerate(results["per_class_accuracy"])))
        self.logger.info("confusion matrix (rows: true digit, columns: predicted):")
        for digit, row in enumerate(results["confusion_matrix"]):
            self.logger.info(f"  {digit}: " + " ".join(f"{count:5d}" for count in row))


def one_cycle_factor(step: int, total: int, warmup: float = 0.25, start: float = 0.04, end: float = 1e-4) -> float:
    """Learning-rate factor of a one-cycle schedule: cosine up to 1, then down to `end`.

    Steps past `total` stay at `end`, so training longer than the schedule is safe.
    """
    peak = max(1, int(total * warmup))
    if step < peak:
        return start + (1 - start) * (1 - math.cos(math.pi * step / peak)) / 2
    progress = min(1.0, (step - peak) / max(1, total - peak))
    return end + (1 - end) * (1 + math.cos(math.pi * progress)) / 2
