"""Read back what W&B wrote offline: the records of a `run-ID.wandb` file.

The file is a LevelDB-style log (W&B's own format since 0.10: a 7-byte header `:W&B`, magic
0xBEE1, version 0, then 32 KiB blocks of records, each with a 7-byte header of CRC-32,
length and type; a record too long for a block is cut into first, middle and last parts).
Each record is a protobuf `Record` from `wandb.proto.wandb_internal_pb2`.
"""

import glob
import json
import os
import struct
import zlib

BLOCK = 32768
HEADER = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def read_records(path: str) -> list:
    """Every protobuf Record of a .wandb file, in order; a CRC mismatch fails."""
    from wandb.proto import wandb_internal_pb2

    data = open(path, "rb").read()
    ident, magic, version = struct.unpack("<4sHB", data[:HEADER])
    assert (ident, magic, version) == (b":W&B", 0xBEE1, 0), f"{path} is not a W&B log"
    records, parts, offset = [], b"", HEADER
    while offset + HEADER <= len(data):
        left = BLOCK - offset % BLOCK
        if left < HEADER:  # the rest of a block too short for a header is padding
            offset += left
            continue
        checksum, length, kind = struct.unpack("<IHB", data[offset : offset + HEADER])
        if length == 0 and kind == 0:  # the zeroed end of a file still being written
            break
        payload = data[offset + HEADER : offset + HEADER + length]
        assert zlib.crc32(bytes([kind]) + payload) & 0xFFFFFFFF == checksum, f"{path}: bad record at {offset}"
        offset += HEADER + length
        parts = payload if kind in (FULL, FIRST) else parts + payload
        if kind in (FULL, LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(parts)
            records.append(record)
    return records


def read_runs(folder: str) -> list[dict]:
    """Each offline run under a wandb folder, oldest first: its id, history rows (dicts of
    the logged values), config keys, summary and exit code."""
    runs = []
    for path in sorted(glob.glob(os.path.join(folder, "offline-run-*", "run-*.wandb"))):
        run = {"path": path, "id": None, "history": [], "config": {}, "summary": {}, "exit_code": None}
        for record in read_records(path):
            kind = record.WhichOneof("record_type")
            if kind == "run":
                run["id"] = record.run.run_id
            elif kind == "history":
                run["history"].append({item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item})
            elif kind == "config":
                run["config"].update({item.key: json.loads(item.value_json) for item in record.config.update})
            elif kind == "summary":
                run["summary"].update({item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.summary.update})
            elif kind == "exit":
                run["exit_code"] = record.exit.exit_code
        runs.append(run)
    return runs
