"""The data of image_folder: PNG files in class folders, decoded and augmented in
DataLoader workers.

The layout is torchvision's `ImageFolder`'s, once per split:

    <data-path>/train/<class>/*.png
    <data-path>/test/<class>/*.png

The classes are the train folder's sub-folders, sorted by name; `prepare` writes MNIST
this way, and any folder of PNG files laid out so works without it. Images are read in
grey, at the size of the first training image (others are resized to it).

At init, `create` decides the class list, the validation split (file names drawn from the
seed) and the image size, and picks an example image for serving: the experiment keeps
them in data.json, where serving, export and `load_model` find them without the files.
The data set is a plain map-style `Dataset` that decodes a file in `__getitem__` (with
Pillow) and, for training, augments it with torch's global generator, read through a
plain `DataLoader`: torchexp seeds each sample's draws in the workers, so a run resumed in
the middle of an epoch draws what an uninterrupted one draws.

The images are read in the workers, so the experiment's provenance holds no digest of
them: torchexp digests the files `create` and `load_datasets` read, here the two images
`create` looks at. A digest per file of tens of thousands of images would weigh megabytes
in every checkpoint's sidecar.
"""

import base64
import io
import os
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

import torchexp
from torchexp import DataError

SPLITS = ("train", "test")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MEAN, STD = 0.5, 0.5  # pixel values 0-1 mapped to -1..1
MIN_SIDE = 4  # the model's two 2 x 2 poolings need images of at least 4 x 4 pixels


def missing_folder_sentence(data_path: str, folder: str) -> str:
    """What to do when an image folder is missing, in one sentence."""
    return (
        f"the image folder {folder} is missing: put the images in {os.path.join(data_path, 'train')}/<class>/*.png and "
        f"{os.path.join(data_path, 'test')}/<class>/*.png, or write MNIST's there with "
        f"`python -m image_folder --data-path {data_path} prepare --mnist PATH`"
    )


def list_images(data_path: str, split: str) -> dict[str, list[str]]:
    """Return the PNG files of a split by class, sorted: {class: [path relative to
    `data_path`, with "/" separators]}.

    Raises:
        DataError: the split's folder is missing or holds no class folder.
    """
    folder = os.path.join(data_path, split)
    if not os.path.isdir(folder):
        raise DataError(missing_folder_sentence(data_path, folder))
    classes = sorted(entry.name for entry in os.scandir(folder) if entry.is_dir() and not entry.name.startswith("."))
    if not classes:
        raise DataError(f"the image folder {folder} holds no class folders: put each class's PNG files in {folder}/<class>/")
    return {name: [f"{split}/{name}/{file}" for file in list_pngs(os.path.join(folder, name))] for name in classes}


def list_pngs(folder: str) -> list[str]:
    """The names of the PNG files in a folder, sorted."""
    return sorted(entry.name for entry in os.scandir(folder) if entry.is_file() and entry.name.lower().endswith(".png"))


def read_image(path: str, size: list[int] | None = None) -> torch.Tensor:
    """Return a PNG file's image in grey, uint8 1 x height x width, resized to `size`
    (height, width) when it has another size.

    Raises:
        DataError: the file cannot be read, or is not a PNG or a corrupt one.
    """
    try:
        with open(path, "rb") as file:
            return decode_image(file.read(), size)
    except OSError as error:
        raise DataError(f"the image {path} cannot be read: {error.strerror or error}") from error
    except ValueError as error:
        raise DataError(f"the image {path} cannot be read: {error}") from error


def decode_image(data: bytes, size: list[int] | None) -> torch.Tensor:
    """Decode a PNG file's bytes into a grey uint8 1 x height x width image, resized to
    `size` (height, width) when it has another size.

    Raises:
        ValueError: the bytes are not a PNG, or a corrupt one; the message says which.
    """
    if not data.startswith(PNG_SIGNATURE):
        raise ValueError("the image is not a PNG (it does not start with the PNG signature)")
    try:
        with Image.open(io.BytesIO(data), formats=["PNG"]) as image:
            image = image.convert("L")
    except UnidentifiedImageError:
        raise ValueError("the PNG image is corrupt or truncated: its header cannot be read") from None
    except OSError as error:
        raise ValueError(f"the PNG image is corrupt or truncated: {error}") from None
    if size is not None and [image.height, image.width] != list(size):
        image = image.resize((size[1], size[0]), Image.Resampling.BILINEAR)
    return torch.from_numpy(np.array(image)).unsqueeze(0)


def encode_image(image: torch.Tensor) -> bytes:
    """The PNG file of a grey uint8 1 x height x width image."""
    buffer = io.BytesIO()
    Image.fromarray(image[0].numpy()).save(buffer, format="PNG")
    return buffer.getvalue()


def normalize(images: torch.Tensor) -> torch.Tensor:
    """Pixel values 0-255 (uint8 or float, 1 x H x W or N x 1 x H x W) to float -1..1."""
    return (images.float() / 255 - MEAN) / STD


class ImageFiles(Dataset):
    """PNG files and their labels, each decoded when it is read, and augmented at random
    when `augment` is given.

    Args:
        root: the folder the paths are relative to (--data-path).
        items: (path, label) of each image.
        state: what `ImageFolderData.create` returned, which holds the image size.
        augment: a random transform of the uint8 image (it draws from torch's global
            generator, which torchexp seeds per sample in the workers), or None.
    """

    def __init__(self, root: str, items: list[tuple[str, int]], state: dict, augment: v2.Transform | None = None):
        self.root, self.items, self.state, self.augment = root, items, state, augment

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.items[index]
        image = read_image(os.path.join(self.root, path), self.state["image_size"])
        if self.augment is not None:
            image = self.augment(image)
        return normalize(image), label


class ImageFolderData(torchexp.Data):
    """An image folder, its training images split once at init into training and
    validation sets; the test set is the test folder."""

    def create(self, data_path: str) -> dict[str, Any]:
        """Decide the classes, the validation files and the image size, and pick the
        example image, once; what this returns is saved to the experiment's data.json."""
        train, test = (list_images(data_path, split) for split in SPLITS)
        check_classes(data_path, train, test)
        files = [path for paths in train.values() for path in paths]
        order = torch.randperm(len(files), generator=torch.Generator().manual_seed(self.seed)).tolist()
        validation = round(len(files) * self.get_conf("data", "val_split"))
        size = measure_size(data_path, files[0])
        example_path = next(path for paths in test.values() for path in paths)
        return {
            "classes": list(train),
            "image_size": size,
            "train_images": len(files),
            "test_images": sum(map(len, test.values())),
            "validation_files": sorted(files[index] for index in order[:validation]),
            "example": make_example(data_path, example_path, size),
        }

    def load_datasets(self, data_path: str) -> None:
        """Fill self.datasets["train" | "validation" | "test"] with the files of the
        split saved at init; only training images are augmented."""
        train, test = (list_images(data_path, split) for split in SPLITS)
        self.check_counts(data_path, train, test)
        labels = {name: label for label, name in enumerate(self.state["classes"])}
        held_out = set(self.state["validation_files"])
        items = [(path, labels[name]) for name, paths in train.items() for path in paths]
        validation = [item for item in items if item[0] in held_out]
        if len(validation) != len(held_out):
            missing = sorted(held_out - {path for path, _ in validation})
            raise DataError(
                f"{len(missing)} validation images of the experiment are not in {data_path}, such as {missing[0]}: "
                "pass the --data-path the experiment was created with"
            )
        augment = make_augmentation(self.config) if self.get_conf("data", "augment") else None
        self.datasets = {
            "train": ImageFiles(data_path, [item for item in items if item[0] not in held_out], self.state, augment),
            "validation": ImageFiles(data_path, validation, self.state),
            "test": ImageFiles(data_path, [(path, labels[name]) for name, paths in test.items() for path in paths], self.state),
        }

    def load_loaders(self, data_path: str, num_workers: int) -> None:
        """Fill self.loaders with plain DataLoaders with `--num-workers` persistent
        workers, the training one shuffled. torchexp rebuilds the training one around
        batches it draws from (seed, epoch), which is what lets it resume mid-epoch."""
        workers = {"num_workers": num_workers, "persistent_workers": num_workers > 0}
        batch_size, evaluation = self.get_conf("data", "batch_size"), self.get_conf("data", "test_batch_size")
        self.loaders = {
            "train": DataLoader(self.datasets["train"], batch_size, shuffle=True, **workers),
            "validation": DataLoader(self.datasets["validation"], evaluation, **workers),
            "test": DataLoader(self.datasets["test"], evaluation, **workers),
        }

    def check_counts(self, data_path: str, train: dict[str, list[str]], test: dict[str, list[str]]) -> None:
        """Refuse an image folder whose classes or numbers of images are not the ones the
        experiment was created with.

        Raises:
            DataError: naming what differs.
        """
        if list(train) != self.state["classes"]:
            raise DataError(
                f"the classes of {os.path.join(data_path, 'train')} are {describe_classes(list(train))}, not the "
                f"{describe_classes(self.state['classes'])} the experiment was created with: pass its --data-path"
            )
        for split, found in (("train", train), ("test", test)):
            count, expected = sum(map(len, found.values())), self.state[f"{split}_images"]
            if count != expected:
                raise DataError(
                    f"{os.path.join(data_path, split)} holds {count} images, not the {expected} the experiment was created with: "
                    "pass its --data-path"
                )


def check_classes(data_path: str, train: dict[str, list[str]], test: dict[str, list[str]]) -> None:
    """Refuse a training class without images, and a test class the training set lacks.

    Raises:
        DataError: naming the class folder.
    """
    empty = [name for name, paths in train.items() if not paths]
    if empty:
        raise DataError(f"the class folder {os.path.join(data_path, 'train', empty[0])} holds no PNG files: every class needs training images")
    unknown = [name for name in test if name not in train]
    if unknown:
        raise DataError(f"the test class folder {os.path.join(data_path, 'test', unknown[0])} has no training class of that name in {os.path.join(data_path, 'train')}")
    if not any(test.values()):
        raise DataError(f"the image folder {os.path.join(data_path, 'test')} holds no PNG files: put the test images in its class folders")


def measure_size(data_path: str, path: str) -> list[int]:
    """Return [height, width] of an image, the size of every image of the experiment.

    Raises:
        DataError: the image is unreadable, or too small for the model.
    """
    height, width = read_image(os.path.join(data_path, path)).shape[1:]
    if min(height, width) < MIN_SIDE:
        raise DataError(f"the image {os.path.join(data_path, path)} is {height} x {width} pixels: the model needs at least {MIN_SIDE} x {MIN_SIDE}")
    return [height, width]


def make_example(data_path: str, path: str, size: list[int]) -> dict[str, str]:
    """An image as serving's example: a base64 PNG of it in grey at the experiment's
    size, and its class (the name of its folder)."""
    png = encode_image(read_image(os.path.join(data_path, path), size))
    return {"png": base64.b64encode(png).decode("ascii"), "class": path.split("/")[1]}


def make_augmentation(config: torchexp.Config) -> v2.Transform:
    """A small random rotation, shift and scaling of each training image, from data.rotation,
    data.shift and data.scale."""
    shift, scale = config.get("data", "shift"), config.get("data", "scale")
    return v2.RandomAffine(degrees=config.get("data", "rotation"), translate=(shift, shift), scale=(1 - scale, 1 + scale))


def describe_classes(classes: list[str]) -> str:
    """A class list in a message: its number and the first few names."""
    shown = ", ".join(repr(name) for name in classes[:5])
    return f"{len(classes)} classes ({shown}{', ...' if len(classes) > 5 else ''})"
