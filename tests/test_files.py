"""Crash-safe writes and checked JSON reads."""

import errno
import json
import hashlib
import os
import stat

import pytest

from torchexp.errors import ConfigError, StorageError
from torchexp.files import hash_file, read_json, write_atomic, write_json_atomic


def test_write_atomic_writes_the_file_and_leaves_no_temporary_file(tmp_path):
    path = tmp_path / "file.bin"
    write_atomic(str(path), lambda file: file.write(b"new bytes"))
    assert path.read_bytes() == b"new bytes"
    assert os.listdir(tmp_path) == ["file.bin"]


def test_write_atomic_keeps_the_old_file_when_the_disk_is_full(tmp_path):
    path = tmp_path / "file.bin"
    path.write_bytes(b"old bytes")

    def write_until_full(file):
        file.write(b"half of the new")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with pytest.raises(StorageError, match=r"could not write .*file.bin: No space left on device"):
        write_atomic(str(path), write_until_full)
    assert path.read_bytes() == b"old bytes"
    assert os.listdir(tmp_path) == ["file.bin"]


def test_write_atomic_keeps_the_old_file_when_fsync_fails(tmp_path, monkeypatch):
    path = tmp_path / "file.bin"
    path.write_bytes(b"old bytes")

    def failing_fsync(fd):
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(StorageError, match=r"could not write .*file.bin: Input/output error"):
        write_atomic(str(path), lambda file: file.write(b"new"))
    assert path.read_bytes() == b"old bytes"
    assert os.listdir(tmp_path) == ["file.bin"]


def test_write_atomic_removes_the_temporary_file_on_any_exception(tmp_path):
    path = tmp_path / "file.bin"

    def interrupted(file):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_atomic(str(path), interrupted)
    assert os.listdir(tmp_path) == []


def test_write_atomic_into_a_missing_folder_raises_storage_error(tmp_path):
    with pytest.raises(StorageError, match=r"could not write .*missing/file.bin: No such file or directory"):
        write_atomic(str(tmp_path / "missing" / "file.bin"), lambda file: file.write(b"x"))


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_write_atomic_gives_the_permissions_the_umask_allows(tmp_path, umask, mode):
    previous = os.umask(umask)
    try:
        write_atomic(str(tmp_path / "file.bin"), lambda file: file.write(b"x"))
    finally:
        os.umask(previous)
    assert stat.S_IMODE(os.stat(tmp_path / "file.bin").st_mode) == mode


def test_write_json_atomic_round_trips_through_read_json(tmp_path):
    path = str(tmp_path / "data.json")
    obj = {"a": [1, 2.5, None, True], "b": {"c": "d"}}
    write_json_atomic(path, obj)
    assert read_json(path, "data file") == obj


def test_read_json_names_a_missing_file_and_uses_the_given_error_type(tmp_path):
    with pytest.raises(ConfigError, match=r"config file .*absent.json is missing"):
        read_json(str(tmp_path / "absent.json"), "config file", ConfigError)


def test_read_json_names_a_file_removed_between_its_check_and_its_read_as_missing(tmp_path, monkeypatch):
    path = tmp_path / "gone.json"
    path.write_text("{}")

    def remove_then_size(name):
        os.remove(name)
        return os.stat(name).st_size

    monkeypatch.setattr(os.path, "getsize", remove_then_size)
    with pytest.raises(StorageError, match=r"sidecar .*gone.json is missing"):
        read_json(str(path), "sidecar")


def test_read_json_refuses_a_folder(tmp_path):
    with pytest.raises(StorageError, match=r"data file .* is a folder, not a file"):
        read_json(str(tmp_path), "data file")


def test_read_json_refuses_invalid_json(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('{"a": 1,}')
    with pytest.raises(StorageError, match=r"data file .*bad.json is not valid JSON: .*line 1 column 9"):
        read_json(str(path), "data file")


def test_read_json_refuses_bytes_that_are_not_utf8(tmp_path):
    path = tmp_path / "bad.json"
    path.write_bytes(b'{"a": "\xff"}')
    with pytest.raises(StorageError, match=r"data file .*bad.json is not valid JSON"):
        read_json(str(path), "data file")


def test_read_json_refuses_a_file_over_the_size_limit_unread(tmp_path):
    path = tmp_path / "big.json"
    path.write_text("[" + "0," * 50 + "0]")
    with pytest.raises(StorageError, match=r"data file .*big.json is 103 bytes, more than the 100 allowed"):
        read_json(str(path), "data file", max_bytes=100)


def test_hash_file_is_the_sha256_of_the_bytes(tmp_path):
    path = tmp_path / "file.bin"
    data = os.urandom(3 << 20)  # several read blocks
    path.write_bytes(data)
    assert hash_file(str(path)) == hashlib.sha256(data).hexdigest()


def test_json_files_hold_null_for_nan_and_infinity(tmp_path):
    path = tmp_path / "record.json"
    write_json_atomic(str(path), {"loss": float("nan"), "history": [1.0, float("inf")], "ok": 2})
    assert json.loads(path.read_text()) == {"loss": None, "history": [1.0, None], "ok": 2}


def test_write_atomic_returns_the_sha256_of_what_it_wrote(tmp_path):
    path = tmp_path / "file.bin"
    assert write_atomic(str(path), lambda file: file.write(b"abc")) == hashlib.sha256(b"abc").hexdigest()


def test_write_atomic_hashes_the_file_when_the_writer_seeks(tmp_path):
    def write_then_patch(file):
        file.write(b"xbc")
        file.seek(0)
        file.write(b"a")

    path = tmp_path / "file.bin"
    assert write_atomic(str(path), write_then_patch) == hashlib.sha256(b"abc").hexdigest()
    assert path.read_bytes() == b"abc"
