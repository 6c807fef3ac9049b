"""`prepare`: MNIST's IDX files written once as PNG files in class folders.

The layout is the one every image folder of this project has, and the one torchvision's
`ImageFolder` reads: `<data-path>/train/<class>/*.png` and `<data-path>/test/<class>/*.png`.
MNIST's classes are its digits, `0` to `9`; each file is named by the image's index in
its IDX file (`train/7/00015.png` is image 15 of `train-images-idx3-ubyte`).

The folder is written whole beside its final place, then renamed into it: a kill or an
error leaves no half-written folder where training would read it, and a second run, or
one racing this one, finds the folder there and does nothing.
"""

import math
import os
import secrets
import shutil

import numpy as np
from PIL import Image

from torchexp import DataError

SPLITS = ("train", "test")
# torchvision's names for MNIST's four raw files, by split: (images, labels).
RAW_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"), "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def raw_folder(mnist_path: str) -> str:
    """The folder of MNIST's raw files under `mnist_path`, in torchvision's layout."""
    return os.path.join(mnist_path, "MNIST", "raw")


def is_image_folder(data_path: str) -> bool:
    """Whether `data_path` holds the two split folders, train/ and test/."""
    return all(os.path.isdir(os.path.join(data_path, split)) for split in SPLITS)


def prepare_image_folder(mnist_path: str, data_path: str, limit: int | None = None) -> dict[str, int] | None:
    """Write MNIST's images as PNG files in class folders under `data_path`, unless the
    image folder is there.

    Args:
        mnist_path: a folder holding MNIST/raw.
        data_path: the image folder to write; it must not exist, or be empty.
        limit: the number of images of each split to write, the first ones; None for all.

    Returns:
        The number of images written per split, or None when the image folder was there.

    Raises:
        DataError: MNIST's files are missing or unreadable, `data_path` holds something
            else, or the folder cannot be written.
    """
    if is_image_folder(data_path):
        return None
    check_destination(data_path)
    splits = {split: read_split(mnist_path, split, limit) for split in SPLITS}
    partial = make_partial_folder(data_path)
    try:
        for split, (images, labels) in splits.items():
            write_split(os.path.join(partial, split), images, labels)
        if not publish(partial, data_path):
            return None
    except OSError as error:
        raise DataError(f"the image folder {data_path} cannot be written: {error.strerror or error}") from error
    finally:
        if os.path.isdir(partial):
            shutil.rmtree(partial, ignore_errors=True)
    return {split: len(labels) for split, (_, labels) in splits.items()}


def check_destination(data_path: str) -> None:
    """Refuse a `data_path` that holds something else than an image folder.

    Raises:
        DataError: it is a file, or a folder that is not empty.
    """
    if os.path.isfile(data_path):
        raise DataError(f"--data-path {data_path} is a file: pass prepare a folder to write the images to")
    if os.path.isdir(data_path) and os.listdir(data_path):
        raise DataError(
            f"--data-path {data_path} holds other files and no train/ and test/ folders: "
            "pass prepare a new or empty folder to write the images to"
        )


def read_split(mnist_path: str, split: str, limit: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Return the images (uint8, N x height x width) and labels (N) of a split of MNIST,
    the first `limit` of them.

    Raises:
        DataError: a file is missing, is not an IDX file, or images and labels disagree.
    """
    folder = raw_folder(mnist_path)
    paths = [os.path.join(folder, name) for name in RAW_FILES[split]]
    missing = [os.path.basename(path) for path in paths if not os.path.isfile(path)]
    if missing:
        raise DataError(
            f"MNIST's {' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} not in {folder}: pass --mnist a folder "
            "holding MNIST/raw, as torchvision.datasets.MNIST(PATH, download=True) leaves it"
        )
    images, labels = (read_idx(path) for path in paths)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise DataError(f"MNIST's {split} files in {folder} disagree: {len(images)} images of shape {list(images.shape[1:])} for {len(labels)} labels")
    return images[:limit], labels[:limit]


def read_idx(path: str) -> np.ndarray:
    """Read an IDX file of unsigned bytes, MNIST's format: two zero bytes, the type code 0x08,
    the number of dimensions, each size as a big-endian 32-bit integer, then the data.

    Raises:
        DataError: the file cannot be read, or is not such a file.
    """
    try:
        with open(path, "rb") as file:
            content = file.read()
    except OSError as error:
        raise DataError(f"MNIST's file {path} cannot be read: {error.strerror or error}") from error
    if len(content) < 4 or content[:3] != b"\x00\x00\x08":
        raise DataError(f"MNIST's file {path} is not an IDX file of unsigned bytes")
    header = 4 + 4 * content[3]
    shape = tuple(np.frombuffer(content, dtype=">u4", count=content[3], offset=4)) if len(content) >= header else ()
    if len(content) != header + math.prod(shape):
        raise DataError(f"MNIST's file {path} is {len(content)} bytes, which its header does not announce: it is truncated or not MNIST's")
    return np.frombuffer(content, dtype=np.uint8, offset=header).reshape(shape)


def make_partial_folder(data_path: str) -> str:
    """Create and return a new hidden folder beside `data_path`, on the same file system,
    to write the image folder in before it is renamed into place."""
    parent, name = os.path.split(os.path.abspath(data_path))
    os.makedirs(parent, exist_ok=True)
    # os.mkdir, not tempfile.mkdtemp: the folder becomes the data folder, which should get
    # the user's usual permissions rather than mkdtemp's owner-only ones.
    partial = os.path.join(parent, f".{name}.partial-{secrets.token_hex(4)}")
    os.mkdir(partial)
    return partial


def write_split(folder: str, images: np.ndarray, labels: np.ndarray) -> None:
    """Write each image as folder/<label>/<index>.png, the index its place in the IDX file."""
    digits = len(str(max(len(images) - 1, 0)))
    for label in np.unique(labels):
        os.makedirs(os.path.join(folder, str(label)))
    for index, (image, label) in enumerate(zip(images, labels)):
        Image.fromarray(image).save(os.path.join(folder, str(label), f"{index:0{digits}d}.png"), format="PNG")


def publish(partial: str, data_path: str) -> bool:
    """Rename the written folder to `data_path`; return False when another process put an
    image folder there first (the written one is then left to be removed).

    Raises:
        OSError: the rename failed otherwise.
    """
    try:  # onto an empty folder too: POSIX renames a folder over an empty one
        os.rename(partial, data_path)
    except OSError:
        if is_image_folder(data_path):
            return False
        raise
    return True
