"""Training and testing breast_cancer: the model, its optimizer, one step, and the test.

torchexp runs the loops around these methods: epochs, validation (by default
`train_step` in eval mode under no_grad), backward and optimizer steps, checkpoints that
resume exactly, logs, TensorBoard and metrics.jsonl.

Optional hooks, to override when you need them (`torchexp.Runner`'s docstring gives their order):
    init_others(device)            e.g. set self.scheduler; torchexp steps, saves and restores it
    validation_step(batch, device) when validation differs from training
    train_before_epoch_tasks(device), train_after_epoch_tasks(device)
    save_states_others() / load_states_others(state)   more state for the checkpoints
    train_early_stopping()         True stops training (default: trainer.early_stopping_patience)
    serve_preprocess(instance), serve_postprocess(output, ...)   for `serve`
    serve_page()                   the folder of a web page `serve` shows browsers at /
"""

import torch
import torch.nn.functional as F

import torchexp
from breast_cancer.model import build_model


class BreastCancerRunner(torchexp.Runner):
    """Cross-entropy training; loss and accuracy over the test set."""

    def init_model(self, device: torch.device) -> None:
        self.model = build_model(self.get_conf("model", "hidden")).to(device)

    def init_optimizer(self, device: torch.device) -> None:
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=self.get_conf("training", "lr"))

    def train_step(self, batch: tuple[torch.Tensor, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
        """Return the batch's loss, and any other metric; torchexp averages them over the
        epoch's samples and logs them as train/<name> and validation/<name>."""
        points, labels = batch
        scores = self.model(points)
        return {"loss": F.cross_entropy(scores, labels), "accuracy": (scores.argmax(1) == labels).float().mean()}

    def test(self, epoch: int, device: torch.device) -> dict:
        """Called with the weights of `epoch` loaded, in eval mode, under no_grad. What it
        returns is saved to results/<epoch>.standard.test.json; its numbers go to
        TensorBoard and metrics.jsonl as test/<name>. Sums are divided by the number of
        samples, not of batches."""
        loss_sum, correct, samples = 0.0, 0, 0
        for points, labels in self.data.loaders["test"]:
            scores = self.model(points)
            loss_sum += F.cross_entropy(scores, labels, reduction="sum").item()
            correct += (scores.argmax(1) == labels).sum().item()
            samples += len(labels)
        return {"accuracy": correct / samples, "loss": loss_sum / samples, "samples": samples}

    def serve_example(self) -> list[float]:
        """One request instance as a client of `serve` sends it: a point [x, y]."""
        return [1.0, 1.0]
