"""Training and testing the MNIST classifier, and serving it."""

import base64
import binascii
import math
import os
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

import torchexp
from mnist_classifier.data import MEAN, STD, normalize
from mnist_classifier.model import build_model

CLASSES = 10
SIDE = 28  # MNIST images are 28 x 28 pixels, 0 (black) to 255 (white)
# normalize() of each byte value 0-255: a byte image is normalized by one lookup, where
# normalize's four tensor operations cost a 28 x 28 image about four times as much.
NORMALIZED_BYTES = normalize((torch.arange(256, dtype=torch.uint8).view(1, 1, 256), None))[0].view(256).numpy()


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

    def serve_example(self) -> list[list[int]]:
        """A 28 x 28 "1": a vertical stroke, centred and white on black like MNIST's digits."""
        image = np.zeros((SIDE, SIDE), dtype=np.uint8)
        image[5:23, 13:16] = 255
        return image.tolist()

    def serve_preprocess(self, instance: Any) -> torch.Tensor:
        """An instance is 28 x 28 pixel values 0-255 (MNIST's own convention: centred, white
        on black), or {"b64": "<base64 PNG>"} of any size, prepared as MNIST's digits were
        (mnist_classifier.preprocess, the path the drawing page takes too).

        Returns:
            The normalized 1 x 28 x 28 image.
        """
        pixels = read_png_instance(instance) if isinstance(instance, dict) else read_pixel_instance(instance)
        if pixels.dtype == np.uint8:
            return torch.from_numpy(NORMALIZED_BYTES[pixels]).unsqueeze(0)
        images, _ = normalize((torch.from_numpy(pixels).unsqueeze(0), None))
        return images[0]

    def serve_postprocess(self, output: torch.Tensor, model_input: torch.Tensor, instance: Any) -> dict:
        """{"label", "probabilities"}; for a PNG also "input", the 28 x 28 image the model
        received (0-255), which the drawing page shows."""
        probabilities = torch.softmax(output.float(), dim=0)
        prediction = {"label": int(probabilities.argmax()), "probabilities": probabilities.tolist()}
        if isinstance(instance, dict):
            pixels = (model_input[0] * STD + MEAN) * 255
            prediction["input"] = pixels.round().clamp(0, 255).to(torch.uint8).tolist()
        return prediction

    def serve_page(self) -> str:
        """The drawing page (mnist_classifier/page): draw a digit, and see the label, the
        probabilities and the 28 x 28 image the model received."""
        return os.path.join(os.path.dirname(os.path.abspath(__file__)), "page")

    def report_test(self, epoch: int, results: dict) -> None:
        """Send per-class accuracy to TensorBoard and the console; torchexp draws the
        confusion matrix that `test` returns."""
        for digit, accuracy in enumerate(results["per_class_accuracy"]):
            self.tracker.writer.add_scalar(f"test_class_accuracy/{digit}", accuracy, epoch)
        self.logger.info("per-class accuracy: " + ", ".join(f"{d}: {a:.4f}" for d, a in enumerate(results["per_class_accuracy"])))


def read_pixel_instance(instance: Any) -> np.ndarray:
    """Return a 28 x 28 array of pixel values from nested lists of numbers 0-255: uint8 when
    `read_byte_rows` reads them, float32 otherwise.

    Raises:
        ValueError: not numbers, another shape, NaN or infinity, or values outside 0-255.
    """
    pixels = read_byte_rows(instance)
    if pixels is not None:
        return pixels
    try:
        pixels = np.asarray(instance)
    except ValueError:  # numpy refuses nested lists of unequal lengths, or nested too deeply
        raise ValueError(f"an instance must be {SIDE} x {SIDE} pixel values, in rows of equal length") from None
    if pixels.dtype.kind not in "iuf":  # strings, null, booleans, objects
        raise ValueError(f'an instance must be {SIDE} x {SIDE} numbers from 0 to 255, or {{"b64": "<base64 PNG>"}}')
    if pixels.shape != (SIDE, SIDE):
        raise ValueError(f"an instance must be {SIDE} x {SIDE} pixel values, not an array of shape {list(pixels.shape)}")
    if pixels.dtype.kind == "f" and not np.isfinite(pixels).all():  # integers are always finite
        raise ValueError("an instance holds NaN or infinite values; pixel values go from 0 to 255")
    low, high = pixels.min(), pixels.max()
    if low < 0 or high > 255:
        raise ValueError(f"pixel values must be from 0 to 255, found {low if low < 0 else high:g}")
    return pixels.astype(np.float32)


def read_byte_rows(instance: Any) -> np.ndarray | None:
    """Return the 28 x 28 uint8 array of 28 lists of 28 integers 0-255, or None for any
    other instance, which `read_pixel_instance` then reads and judges.

    `bytes` of a row checks its values in C and numpy adopts the joined bytes without a
    copy: about 9 µs for an image where numpy's reading of nested lists takes 21 µs, most
    of a served request's preprocessing.
    """
    if type(instance) is not list or len(instance) != SIDE or any(type(row) is not list or len(row) != SIDE for row in instance):
        return None
    try:
        pixels = np.frombuffer(b"".join(map(bytes, instance)), dtype=np.uint8).reshape(SIDE, SIDE)
    except (TypeError, ValueError):  # a value that is not an integer, or not 0-255
        return None
    # bytes() reads true and false as 1 and 0: an image with nothing above 1 may be
    # booleans, which numpy's reading refuses, so it takes that path.
    return pixels if pixels.max() > 1 else None


def read_png_instance(instance: dict) -> np.ndarray:
    """Return the 28 x 28 uint8 MNIST-style image of a {"b64": "<base64 PNG>"} instance.

    Raises:
        ValueError: other keys, text that is not base64, or an image that is not a valid PNG.
    """
    from mnist_classifier.preprocess import decode_png, to_mnist

    if set(instance) != {"b64"} or not isinstance(instance["b64"], str):
        raise ValueError(f'an image instance must be {{"b64": "<base64 PNG>"}}, not an object with keys {sorted(map(str, instance))}')
    try:
        data = base64.b64decode(instance["b64"], validate=True)
    except (binascii.Error, ValueError) as error:
        raise ValueError(f'"b64" is not valid base64: {error}') from None
    return to_mnist(decode_png(data))


def one_cycle_factor(step: int, total: int, warmup: float = 0.25, start: float = 0.04, end: float = 1e-4) -> float:
    """Learning-rate factor of a one-cycle schedule: cosine up to 1, then down to `end`.

    Steps past `total` stay at `end`, so training longer than the schedule is safe.
    """
    peak = max(1, int(total * warmup))
    if step < peak:
        return start + (1 - start) * (1 - math.cos(math.pi * step / peak)) / 2
    progress = min(1.0, (step - peak) / max(1, total - peak))
    return end + (1 - end) * (1 + math.cos(math.pi * progress)) / 2
