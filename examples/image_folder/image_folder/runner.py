"""Training, testing and serving image_folder: a small CNN, one logit per class.

torchexp runs the loops around these methods: epochs, validation (`train_step` in eval
mode under no_grad), backward and optimizer steps, checkpoints that resume exactly, logs,
TensorBoard and metrics.jsonl. Batches come from plain DataLoaders on the CPU; the hooks
move them to the device.

Outside training (serve, export, load_model) the Data holds only its state, so the model's
size and the serving hooks read the classes, the image size and the example image from `self.data.state`, never from the files.
"""

import base64
import binascii
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

import torchexp
from image_folder.data import PNG_SIGNATURE, decode_image, normalize
from image_folder.model import build_model

# A PNG a client sends is decoded in full before it is resized: one announcing more pixels
# than this (a small file can) is refused rather than allowed to take the server's memory.
MAX_PNG_PIXELS = 4096 * 4096


class ImageFolderRunner(torchexp.Runner):
    """Cross-entropy training; accuracy, per-class accuracy and confusion at test."""

    def init_model(self, device: torch.device) -> None:
        state = self.data.state
        height, width = state["image_size"]
        options = {name: self.get_conf("model", name) for name in ("channels", "hidden", "dropout")}
        self.model = build_model(len(state["classes"]), height, width, **options).to(device)

    def init_optimizer(self, device: torch.device) -> None:
        optimizers = {"adam": torch.optim.Adam, "adadelta": torch.optim.Adadelta}
        self.optimizer = optimizers[self.get_conf("training", "optimizer")](self.model.parameters(), lr=self.get_conf("training", "lr"))

    def init_others(self, device: torch.device) -> None:
        # torchexp steps, saves and restores whatever is in self.scheduler: once per epoch here.
        if self.get_conf("training", "scheduler") == "step":
            step_size, gamma = self.get_conf("training", "step_size"), self.get_conf("training", "gamma")
            self.scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, step_size=step_size, gamma=gamma)

    def train_step(self, batch: tuple[torch.Tensor, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
        """Return the batch's loss and accuracy; torchexp averages them over the epoch's
        samples and logs them as train/<name> and validation/<name>."""
        images, labels = (tensor.to(device, non_blocking=True) for tensor in batch)
        logits = self.model(images)
        return {"loss": F.cross_entropy(logits, labels), "accuracy": (logits.argmax(1) == labels).float().mean()}

    def test(self, epoch: int, device: torch.device) -> dict:
        """Loss, accuracy, per-class accuracy and the confusion matrix (rows: true class,
        columns: predicted), summed over the test images and divided by their number."""
        # Dropout must be off even when test is called directly, outside the test command.
        was_training = self.model.training
        self.model.eval()
        classes = len(self.data.state["classes"])
        loss_sum = torch.zeros((), device=device)
        confusion = torch.zeros(classes * classes, dtype=torch.long, device=device)
        with torch.no_grad():
            for batch in self.data.loaders["test"]:
                images, labels = (tensor.to(device, non_blocking=True) for tensor in batch)
                logits = self.model(images).float()
                loss_sum += F.cross_entropy(logits, labels, reduction="sum")
                confusion += torch.bincount(labels * classes + logits.argmax(1), minlength=classes * classes)
        self.model.train(was_training)
        confusion = confusion.view(classes, classes).cpu()
        samples = int(confusion.sum())
        results = {
            "accuracy": confusion.diag().sum().item() / samples,
            "loss": loss_sum.item() / samples,
            "samples": samples,
            # A class without test images scores 0 rather than dividing by zero.
            "per_class_accuracy": (confusion.diag() / confusion.sum(1).clamp(min=1)).tolist(),
            "confusion_matrix": confusion.tolist(),
        }
        self.report_test(epoch, results)
        return results

    def report_test(self, epoch: int, results: dict) -> None:
        """Send per-class accuracy to TensorBoard and the console; torchexp draws the
        confusion matrix that `test` returns."""
        named = list(zip(self.data.state["classes"], results["per_class_accuracy"]))
        for name, accuracy in named:
            self.tracker.writer.add_scalar(f"test_class_accuracy/{name}", accuracy, epoch)
        self.logger.info("per-class accuracy: " + ", ".join(f"{name}: {accuracy:.4f}" for name, accuracy in named))

    def serve_example(self) -> str:
        """The test folder's first image as a client sends it: a PNG file in base64,
        kept in the state at init."""
        return self.data.state["example"]["png"]

    def serve_preprocess(self, instance: Any) -> torch.Tensor:
        """An instance is a PNG file in base64 (of any size, in colour or grey: it is read
        in grey and resized to the experiment's images), or the image as rows of grey
        pixel values 0-255 at the experiment's size.

        Returns:
            The normalized 1 x height x width image.

        Raises:
            ValueError: anything else, text that is not base64 of a PNG, or rows of another
                size or values; the message is one sentence for the client.
        """
        size = self.data.state["image_size"]
        if isinstance(instance, str):
            image = read_png_instance(instance, size)
        elif isinstance(instance, list):
            image = read_pixel_rows(instance, size)
        else:
            raise ValueError(f"an instance must be a PNG file in base64, or {size[0]} rows of {size[1]} pixel values 0-255, not {describe_json(instance)}")
        return normalize(image)

    def serve_postprocess(self, output: torch.Tensor, model_input: torch.Tensor, instance: Any) -> dict:
        """{"label": the class's index, "class": its name (its folder's), "probabilities":
        one per class, in the order of the classes}."""
        probabilities = torch.softmax(output.float(), dim=0)
        label = int(probabilities.argmax())
        return {"label": label, "class": self.data.state["classes"][label], "probabilities": probabilities.tolist()}


def read_png_instance(instance: str, size: list[int]) -> torch.Tensor:
    """Return the grey uint8 1 x height x width image of a base64 PNG, at `size`.

    Raises:
        ValueError: not base64, not a PNG, too many pixels, or a corrupt PNG.
    """
    try:
        data = base64.b64decode(instance, validate=True)
    except (binascii.Error, ValueError) as error:
        raise ValueError(f"the instance is not valid base64: {error}") from None
    if not data.startswith(PNG_SIGNATURE):
        raise ValueError("the image is not a PNG (it does not start with the PNG signature)")
    # The IHDR chunk always comes first: its width and height are bytes 16 to 24.
    width, height = (int.from_bytes(data[at : at + 4], "big") for at in (16, 20))
    if width * height > MAX_PNG_PIXELS:
        raise ValueError(f"the PNG image is {width} x {height} pixels, more than the {MAX_PNG_PIXELS} this server decodes")
    return decode_image(data, size)


def read_pixel_rows(instance: list, size: list[int]) -> torch.Tensor:
    """Return the float 1 x height x width image of rows of pixel values 0-255.

    Raises:
        ValueError: rows of unequal length, values that are not numbers, another size,
            NaN or infinity, or values outside 0-255.
    """
    height, width = size
    try:
        pixels = np.asarray(instance)
    except ValueError:  # rows of unequal lengths
        raise ValueError(f"an instance must be {height} rows of {width} pixel values, in rows of equal length") from None
    if pixels.dtype.kind not in "iuf":  # text, null, true or false
        raise ValueError(f"an instance must be {height} rows of {width} numbers from 0 to 255, or a PNG file in base64")
    if pixels.shape != (height, width):
        raise ValueError(f"an instance must be {height} rows of {width} pixel values, not an array of shape {list(pixels.shape)}")
    if not np.isfinite(pixels).all():
        raise ValueError("an instance holds NaN or infinite values; pixel values go from 0 to 255")
    if pixels.min() < 0 or pixels.max() > 255:
        raise ValueError(f"pixel values must be from 0 to 255, found {pixels.min() if pixels.min() < 0 else pixels.max():g}")
    return torch.from_numpy(pixels.astype(np.float32)).unsqueeze(0)


def describe_json(value: Any) -> str:
    """What a JSON value is, in words, without quoting it (it may be long)."""
    kinds = {bool: "true or false", int: "a number", float: "a number", dict: "an object", type(None): "null"}
    return kinds.get(type(value), f"a {type(value).__name__}")
