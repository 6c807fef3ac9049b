"""The corpus of nanogpt_chars: a folder of text files, its characters and their ids.

By default the folder is the Python standard library's own (`sysconfig`'s "stdlib" path)
and the files its top-level `*.py` modules, about 4.7 MB on CPython 3.11: a real corpus
present wherever Python is. `--data-path` and `data.pattern` name any other folder and files.

A character's id is its rank in the sorted vocabulary. The corpus is held as one tensor
of ids, uint8 when the vocabulary has at most 256 characters (the standard library's has
about 170), so that the training set takes a byte a character.
"""

import glob
import os

import numpy as np
import torch

from torchexp import DataError


def list_files(root: str, pattern: str) -> list[dict]:
    """The files under `root` that `pattern` matches, sorted by relative path, with their
    sizes: [{"path": "abc.py", "bytes": 6538}, ...].

    Raises:
        DataError: `root` is not a folder, or no file matches.
    """
    if not os.path.isdir(root):
        raise DataError(f"the corpus folder {root} is missing: pass --data-path a folder of text files")
    paths = sorted(path for path in glob.glob(pattern, root_dir=root, recursive=True) if os.path.isfile(os.path.join(root, path)))
    if not paths:
        raise DataError(f"no file under {root} matches data.pattern {pattern!r}: pass --data-path another folder, or init with --set data.pattern=...")
    return [{"path": path, "bytes": os.path.getsize(os.path.join(root, path))} for path in paths]


def read_text(root: str, files: list[dict]) -> str:
    """The files' text, one after the other.

    Raises:
        DataError: a file cannot be read, or is not UTF-8 text.
    """
    parts = []
    for entry in files:
        path = os.path.join(root, entry["path"])
        try:
            with open(path, encoding="utf-8") as file:
                parts.append(file.read())
        except UnicodeDecodeError as error:
            raise DataError(f"the corpus file {path} is not UTF-8 text (byte {error.start}): remove it or narrow data.pattern") from error
        except OSError as error:
            raise DataError(f"the corpus file {path} cannot be read: {error.strerror or error}") from error
    return "".join(parts)


def describe_difference(found: list[dict], recorded: list[dict]) -> str | None:
    """The first difference between the files found now and those recorded at init, in
    words ("abc.py has 6540 bytes, not 6538"); None when they are the same."""
    now = {entry["path"]: entry["bytes"] for entry in found}
    then = {entry["path"]: entry["bytes"] for entry in recorded}
    for path, size in then.items():
        if path not in now:
            return f"{path} is missing"
        if now[path] != size:
            return f"{path} has {now[path]} bytes, not {size}"
    extra = sorted(set(now) - set(then))
    return f"{extra[0]} is new" if extra else None


def build_vocabulary(text: str) -> list[str]:
    """The distinct characters of `text`, sorted: a character's id is its index."""
    return sorted(set(text))


def token_dtype(vocabulary: list[str]) -> torch.dtype:
    """The smallest integer type that holds every id of the vocabulary."""
    if len(vocabulary) <= 256:
        return torch.uint8
    return torch.int16 if len(vocabulary) <= 2**15 else torch.int32


def encode(text: str, vocabulary: list[str]) -> torch.Tensor:
    """The ids of `text`'s characters, in the vocabulary's smallest integer type.

    Raises:
        ValueError: `text` holds characters the vocabulary lacks; the message ("holds 1
            character the corpus lacks: 'é'") names them, after the caller's subject.
    """
    # Code points through numpy, searched in the sorted vocabulary's: 4.7 MB in a tenth of a second.
    # surrogatepass: a lone surrogate (JSON allows "\ud800") is a character like any other, and unknown.
    points = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
    known = np.array([ord(character) for character in vocabulary], dtype=np.uint32)
    ids = np.searchsorted(known, points).clip(max=len(known) - 1)
    unknown = known[ids] != points
    if unknown.any():
        missing = sorted({chr(point) for point in points[unknown]})
        shown = ", ".join(repr(character) for character in missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise ValueError(f"holds {len(missing)} character{'s' if len(missing) > 1 else ''} the corpus lacks: {shown}")
    return torch.from_numpy(ids.astype(np.int64)).to(token_dtype(vocabulary))


def decode(ids: list[int], vocabulary: list[str]) -> str:
    """The text of character ids."""
    return "".join(vocabulary[index] for index in ids)


def split_files(files: list[dict], fraction: float) -> int:
    """How many of the last files are the validation set: the fewest holding at least
    `fraction` of the corpus's bytes, one at least, and never all.

    Raises:
        DataError: there is a single file, which cannot be split.
    """
    if len(files) < 2:
        raise DataError(f"the corpus has a single file ({files[0]['path']}): it needs two at least, one for training and one for validation")
    total = sum(entry["bytes"] for entry in files)
    count, held = 1, files[-1]["bytes"]
    while count < len(files) - 1 and held < fraction * total:
        count += 1
        held += files[-count]["bytes"]
    return count
