"""MNIST for torchexp: a validation split fixed at init, held in memory as uint8."""

import math
import os
import struct

import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

import torchexp
from torchexp import DataError
from torchexp.loaders import Batch, SeededDataLoader, TensorLoader

MEAN, STD = 0.1307, 0.3081  # MNIST training set pixel statistics
RAW_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def raw_folder(data_path: str) -> str:
    return os.path.join(data_path, "MNIST", "raw")


def ensure_mnist(data_path: str) -> None:
    """Download MNIST into `data_path` unless its raw files are there.

    Raises:
        DataError: the files are missing and the download failed; says where to put them.
    """
    folder = raw_folder(data_path)
    missing = [name for name in RAW_FILES if not os.path.isfile(os.path.join(folder, name))]
    if not missing:
        return
    created = not os.path.exists(data_path)
    try:
        download_mnist(data_path)
    except Exception as error:  # torchvision raises bare RuntimeError/URLError subclasses
        remove_empty_folders(folder, data_path if created else os.path.join(data_path, "MNIST"))
        raise DataError(
            f"MNIST is not in {folder} and could not be downloaded ({type(error).__name__}): "
            f"put {', '.join(RAW_FILES)} there, or point --data-path at a folder that has MNIST/raw"
        ) from error


def download_mnist(data_path: str) -> None:
    """Download MNIST's four raw files into `data_path`/MNIST/raw with torchvision.

    The one place that reaches the network: the tests replace it, so that no test downloads.

    Raises:
        Exception: whatever torchvision raises when the download fails (RuntimeError once
            every mirror failed, URLError...).
    """
    from torchvision.datasets import MNIST

    MNIST(data_path, train=True, download=True)


def remove_empty_folders(folder: str, stop: str) -> None:
    """Remove `folder` and its parents up to and including `stop`, while they are empty."""
    stop = os.path.abspath(stop)
    folder = os.path.abspath(folder)
    while folder.startswith(stop):
        try:
            os.rmdir(folder)
        except OSError:
            return
        folder = os.path.dirname(folder)


def read_mnist(data_path: str, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Return MNIST's (images uint8 N x 28 x 28, labels int64) for the train or test split.

    The raw files torchvision downloads are read here directly: importing torchvision's
    datasets costs about half a second of every command's start-up, for a format of a few
    lines. torchvision is still what downloads them (`ensure_mnist`).

    Raises:
        DataError: the files are missing and cannot be downloaded, or cannot be read.
    """
    ensure_mnist(data_path)
    prefix = "train" if train else "t10k"
    try:
        images = read_idx(os.path.join(raw_folder(data_path), f"{prefix}-images-idx3-ubyte"))
        labels = read_idx(os.path.join(raw_folder(data_path), f"{prefix}-labels-idx1-ubyte"))
    except (OSError, ValueError) as error:
        raise DataError(f"MNIST files in {raw_folder(data_path)} cannot be read: {error}") from error
    if images.dim() != 3 or labels.dim() != 1 or len(images) != len(labels):
        raise DataError(f"MNIST files in {raw_folder(data_path)} cannot be read: {len(images)} images for {len(labels)} labels")
    return images, labels.long()


def read_idx(path: str) -> torch.Tensor:
    """Read an IDX file of unsigned bytes, MNIST's format: two zero bytes, the type code 0x08,
    the number of dimensions, each size as a big-endian 32-bit integer, then the data.

    Raises:
        ValueError: the file is not such a file, or its length does not match its header.
    """
    with open(path, "rb") as file:
        content = file.read()
    if len(content) < 4 or content[:3] != b"\x00\x00\x08":
        raise ValueError(f"{os.path.basename(path)} is not an IDX file of unsigned bytes")
    header = 4 + 4 * content[3]
    shape = struct.unpack(f">{content[3]}I", content[4:header]) if len(content) >= header else ()
    expected = header + math.prod(shape)
    if len(content) < header or len(content) != expected:
        raise ValueError(f"{os.path.basename(path)} is {len(content)} bytes where its header announces {max(expected, header)}")
    return torch.frombuffer(bytearray(content), dtype=torch.uint8, offset=header).view(*shape)


def normalize(batch: Batch) -> Batch:
    """uint8 images to normalized float N x 1 x 28 x 28, on the batch's device."""
    images, labels = batch
    return images.unsqueeze(1).float().div_(255).sub_(MEAN).div_(STD), labels


def augment(batch: Batch) -> Batch:
    """Normalize, then apply a random small rotation, scale and shift to every image."""
    images, labels = normalize(batch)
    count = images.shape[0]
    angle = (torch.rand(count, device=images.device) - 0.5) * (2 * 0.17)  # +-10 degrees
    scale = 1 + (torch.rand(count, device=images.device) - 0.5) * 0.2  # +-10 %
    shift = (torch.rand(count, 2, device=images.device) - 0.5) * 0.2  # +-10 % of the size
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    background = -MEAN / STD
    images = F.grid_sample(images - background, grid, align_corners=False) + background
    return images, labels


class MNISTClassifierData(torchexp.Data):
    """MNIST with a validation split of `data.val_split` of the training set, drawn at init."""

    def create(self, data_path: str) -> dict:
        _, labels = read_mnist(data_path, train=True)
        size = len(labels)
        validation_size = round(size * self.get_conf("data", "val_split"))
        order = torch.randperm(size, generator=torch.Generator().manual_seed(self.seed))
        return {"train_size": size, "validation_indexes": sorted(order[:validation_size].tolist())}

    def load_datasets(self, data_path: str) -> None:
        images, labels = read_mnist(data_path, train=True)
        if len(labels) != self.state["train_size"]:
            raise DataError(
                f"MNIST in {raw_folder(data_path)} has {len(labels)} training images, "
                f"but the experiment was created with {self.state['train_size']}"
            )
        validation = torch.tensor(self.state["validation_indexes"], dtype=torch.long)
        keep = torch.ones(len(labels), dtype=torch.bool)
        keep[validation] = False
        self.datasets = {
            "train": (images[keep], labels[keep]),
            "validation": (images[validation], labels[validation]),
            "test": read_mnist(data_path, train=False),
        }

    def load_loaders(self, data_path: str, num_workers: int) -> None:
        sizes = {"train": self.get_conf("data", "batch_size")}
        sizes["validation"] = sizes["test"] = self.get_conf("data", "test_batch_size")
        transforms = {"train": augment if self.get_conf("data", "augment") else normalize}
        self.loaders = {}
        for split, tensors in self.datasets.items():
            options = {"batch_size": sizes[split], "shuffle": split == "train", "seed": self.seed}
            options["transform"] = transforms.get(split, normalize)
            if num_workers == 0:
                self.loaders[split] = TensorLoader(tensors, **options)
            else:
                self.loaders[split] = SeededDataLoader(TensorDataset(*tensors), num_workers=num_workers, **options)
