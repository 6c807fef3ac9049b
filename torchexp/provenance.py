"""Provenance: what produced an experiment's results, so that a result can be traced and a
changed ingredient named.

Recorded at `init` and at the start of every `train` (one line each in the experiment's
provenance.jsonl), and carried by every checkpoint's sidecar, every release and export:

- code: the project's git commit, whether its work tree is dirty, and a hash of the
  uncommitted diff; outside a git work tree, a hash of the project package's sources;
- data: a digest of the files the data set was read from: `Data.data_files`, by default
  the files `Data.create` or `Data.load_datasets` opened under --data-path, as the command
  line's audit hook notes them (in a library caller's process, `Data.data_files` alone);
- environment: Python, torch, CUDA, cuDNN, numpy, the CPU and its flags, the GPU;
- settings: trainer.precision and trainer.deterministic, which decide exactness.

A resume whose provenance differs from the last run's warns once, naming what changed.
"""

import contextlib
import contextvars
import hashlib
import importlib.util
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

from torchexp.files import hash_file, read_json_lines
from torchexp.process import READ_HOOK, allows

GIT_TIMEOUT_S = 10  # a git that does not answer in this long is taken as absent
SOURCE_SUFFIXES = (".py", ".json")  # a package's sources, outside git

# The files opened for reading while a data set loads, collected by an audit hook that is
# installed once and records only while a `watching_reads` block is active in this context.
# Python cannot remove an audit hook, so only the command line installs it (torchexp.process).
WATCHED: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar("torchexp_watched_reads", default=None)
HOOK_INSTALLED = False


def record_read(event: str, arguments: tuple) -> None:
    """The audit hook: note a file opened for reading while a block watches."""
    if event != "open":
        return
    reads = WATCHED.get()
    if reads is None:
        return
    path, mode, flags = (*arguments, None, None)[:3]
    if not isinstance(path, (str, bytes, os.PathLike)):
        return  # a file descriptor
    writing = (
        any(letter in mode for letter in "wax+")
        if isinstance(mode, str)
        else bool((flags or 0) & (os.O_WRONLY | os.O_RDWR))
    )
    if not writing:
        reads.append(os.path.abspath(os.fsdecode(path)))


@contextlib.contextmanager
def watching_reads() -> Iterator[list[str]]:
    """Within the block, collect the paths of the files this thread opens for reading (through
    Python's `open`, `os.open`, numpy and torch.load among them).

    In a library caller's process the list stays empty, unless TORCHEXP_READ_HOOK=1 or the
    command line installed the hook before: the project's `Data.data_files` names the files.
    """
    global HOOK_INSTALLED
    if not HOOK_INSTALLED and allows(READ_HOOK):
        sys.addaudithook(record_read)
        HOOK_INSTALLED = True
    reads: list[str] = []
    token = WATCHED.set(reads)
    try:
        yield reads
    finally:
        WATCHED.reset(token)


def digest_data(paths: list[str], data_path: str, known: dict | None = None) -> dict[str, Any]:
    """The digest of the data files under `data_path` among `paths`.

    Args:
        paths: files the data set was read from.
        data_path: --data-path; files elsewhere (a package's own files) are left out.
        known: an earlier digest, whose files' hashes are reused when their size and
            modification time are unchanged, so that a large data set is hashed once.

    Returns:
        {"files": {relative path: {"bytes", "mtime_ns", "sha256"}}, "sha256": of them all}.
    """
    root = os.path.abspath(data_path)
    previous = (known or {}).get("files") or {}
    files = {}
    for path in sorted(set(paths)):
        if not path.startswith(root + os.sep) or not os.path.isfile(path):
            continue
        name = os.path.relpath(path, root)
        stat = os.stat(path)
        entry = previous.get(name) or {}
        same = entry.get("bytes") == stat.st_size and entry.get("mtime_ns") == stat.st_mtime_ns
        files[name] = {
            "bytes": stat.st_size,
            "mtime_ns": stat.st_mtime_ns,
            "sha256": entry["sha256"] if same else hash_file(path),
        }
    combined = hashlib.sha256(
        json.dumps({name: entry["sha256"] for name, entry in files.items()}, sort_keys=True).encode()
    )
    return {"files": files, "sha256": combined.hexdigest()}


def describe_code(project_root: str | None, package_folder: str | None) -> dict[str, Any]:
    """The identity of the project's code: its git commit, dirtiness and the hash of the
    uncommitted diff; outside git, the hash of its package's sources; {} when unknown."""
    if project_root is None:
        return {}
    commit = run_git(project_root, "rev-parse", "HEAD")
    if commit is not None:
        diff = run_git(project_root, "diff", "HEAD") or ""
        code = {"commit": commit.strip(), "dirty": bool(diff)}
        if diff:
            code["diff_sha256"] = hashlib.sha256(diff.encode()).hexdigest()
        return code
    if package_folder is None:
        return {}
    digest = hashlib.sha256()
    for folder, names, files in sorted(os.walk(package_folder)):
        names[:] = sorted(name for name in names if not name.startswith((".", "__pycache__")))
        for name in sorted(files):
            if name.endswith(SOURCE_SUFFIXES):
                path = os.path.join(folder, name)
                digest.update(os.path.relpath(path, package_folder).encode() + b"\0" + hash_file(path).encode())
    return {"source_sha256": digest.hexdigest()}


def run_git(folder: str, *arguments: str) -> str | None:
    """git's output in `folder`, or None when git is missing or the folder is no work tree."""
    try:
        done = subprocess.run(
            ["git", "-C", folder, *arguments], capture_output=True, text=True, timeout=GIT_TIMEOUT_S, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None


def find_package_folder(spec: str | None) -> str | None:
    """The folder of the top-level package of a "module:Class" spec, or None."""
    if not spec:
        return None
    try:
        found = importlib.util.find_spec(spec.partition(":")[0].split(".")[0])
    except (ImportError, ValueError):
        return None
    locations = list(found.submodule_search_locations or []) if found is not None else []
    return locations[0] if locations else None


def describe_environment(device: Any = None) -> dict[str, Any]:
    """Python, torch, CUDA, cuDNN and numpy versions, the CPU and its flags, and the GPU of
    `device` when it is one."""
    import numpy
    import torch

    from torchexp.precision import describe_cpu, read_cpu_model

    environment = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "cpu": read_cpu_model(),
        "cpu_flags": describe_cpu().partition("; ")[2],
    }
    if device is not None and getattr(device, "type", None) == "cuda":
        environment["gpu"] = torch.cuda.get_device_name(device)
    return environment


def collect(
    definition: dict, data_files: list[str], data_path: str, device: Any = None, known: dict | None = None
) -> dict[str, Any]:
    """The provenance of a run of an experiment.

    Args:
        definition: the experiment's config.json.
        data_files: the files its data set was read from.
        data_path: --data-path.
        device: the training device, if any.
        known: the last provenance recorded, whose data hashes may be reused.
    """
    trainer = definition["config"].get("trainer") or {}
    runner_spec = (definition.get("classes") or {}).get("runner")
    return {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "code": describe_code(definition.get("project_root"), find_package_folder(runner_spec)),
        "data": digest_data(data_files, data_path, (known or {}).get("data")),
        "environment": describe_environment(device),
        "settings": {
            "precision": trainer.get("precision", "fp32"),
            "deterministic": bool(trainer.get("deterministic", False)),
        },
    }


def describe_changes(old: dict | None, new: dict) -> list[str]:
    """What differs between two provenances, in words: "torch 2.14.1 -> 2.15.0",
    "data digest of train-images-idx3-ubyte changed", "code: commit a1b2c3 -> d4e5f6, dirty"."""
    if not old:
        return []
    changes = describe_code_change(old.get("code") or {}, new.get("code") or {})
    old_files, new_files = (old.get("data") or {}).get("files") or {}, (new.get("data") or {}).get("files") or {}
    changes += [
        f"data digest of {name} changed"
        for name in sorted(old_files.keys() & new_files.keys())
        if old_files[name]["sha256"] != new_files[name]["sha256"]
    ]
    for group in ("environment", "settings"):
        before, after = old.get(group) or {}, new.get(group) or {}
        prefix = "trainer." if group == "settings" else ""
        changes += [
            f"{prefix}{key} {before.get(key)} -> {after.get(key)}"
            for key in sorted(before.keys() | after.keys())
            if before.get(key) != after.get(key)
        ]
    return changes


def describe_code_change(old: dict, new: dict) -> list[str]:
    """The change of the code's identity, in words; [] when none is known or it is the same."""
    if old.get("commit") and new.get("commit"):
        if (old["commit"], old.get("diff_sha256")) == (new["commit"], new.get("diff_sha256")):
            return []
        return [f"code: commit {old['commit'][:7]} -> {new['commit'][:7]}{', dirty' if new.get('dirty') else ''}"]
    if old.get("source_sha256") and new.get("source_sha256") and old["source_sha256"] != new["source_sha256"]:
        return ["code: the project's sources changed"]
    return []


def append_record(path: str, event: str, provenance: dict) -> None:
    """Append one provenance line (`event`: "init" or "train") to provenance.jsonl."""
    with open(path, "a", encoding="utf-8") as file:
        file.write(json.dumps({"event": event, **provenance}) + "\n")


def read_last(path: str) -> dict | None:
    """The last provenance provenance.jsonl records, or None."""
    last = None
    for record in read_json_lines(path):
        last = record
    return last
