"""Test results on disk: `results/<epoch>.<standard|release>.test.json`, what `test` returned.

`test` writes them (`torchexp.evaluation`); `info`, `compare` and the experiments' API read
them, without importing torch.
"""

import os
import re

from torchexp import checkpoints
from torchexp.errors import TorchexpError
from torchexp.files import read_json, write_json_atomic
from torchexp.folder import Experiment

RESULTS_PATTERN = re.compile(r"(?P<epoch>0|[1-9]\d*)\.(?P<kind>standard|release)\.test\.json")


def write_report(experiment: Experiment, epoch: int, kind: str, report: dict) -> str:
    """Write a test's report, {"epoch", "checkpoint", "results"}, atomically; return its path."""
    path = os.path.join(experiment.results_path, f"{epoch}.{kind}.test.json")
    write_json_atomic(path, report)
    return path


def read_reports(experiment: Experiment) -> list[tuple[tuple[int, str], dict, str]]:
    """((epoch, kind), report, path) of every readable results file, oldest first;
    unreadable ones are left out."""
    folder = experiment.results_path
    found = []
    for name in os.listdir(folder) if os.path.isdir(folder) else []:
        match = RESULTS_PATTERN.fullmatch(name)
        if match is None:
            continue
        path = os.path.join(folder, name)
        try:
            report = read_json(path, "test results")
        except TorchexpError:
            continue
        if isinstance(report, dict) and isinstance(report.get("results"), dict):
            found.append(((int(match["epoch"]), match["kind"]), report, path))
    return sorted(found, key=lambda item: (item[0][0], checkpoints.KINDS.index(item[0][1])))
