"""The data of breast_cancer: scikit-learn's breast cancer data set, kept as a CSV file.

569 tumours, each 30 measurements of the cell nuclei in an image of a fine needle
aspirate, diagnosed malignant or benign (scikit-learn's `load_breast_cancer`, the
Wisconsin Diagnostic Breast Cancer data set). scikit-learn bundles it: nothing is
downloaded. At init, `create` writes it to `--data-path`/breast_cancer.csv when that file
is missing, decides the split from the seed, and keeps the training set's per-feature mean
and standard deviation in the state, where serving, export and `load_model` find them
without the file.
"""

import csv
import os
import tempfile

import numpy as np
import torch

import torchexp
from torchexp import DataError
from torchexp.loaders import TensorLoader

FILE_NAME = "breast_cancer.csv"
LABEL = "malignant"  # the file's last column: 1 for a malignant tumour, 0 for a benign one


def data_file(data_path: str) -> str:
    """Return the path of the data set's file under `data_path`."""
    return os.path.join(data_path, FILE_NAME)


def write_data_file(data_path: str) -> str:
    """Write scikit-learn's breast cancer data set to `data_path`/breast_cancer.csv, unless
    the file is there, and return its path.

    The header holds the 30 feature names, then `malignant`. scikit-learn's own target is
    0 for malignant and 1 for benign; the file turns it round, so that the column is 1 for
    the class the model's logit scores.

    Raises:
        DataError: the file cannot be written there.
    """
    from sklearn.datasets import load_breast_cancer  # only writing the file needs scikit-learn

    path = data_file(data_path)
    if os.path.isfile(path):
        return path
    bundle = load_breast_cancer()
    try:
        os.makedirs(data_path, exist_ok=True)
        # Written beside, then renamed: search trials may init at once on one --data-path,
        # and none of them may read a half-written file.
        with tempfile.NamedTemporaryFile("w", dir=data_path, prefix=f".{FILE_NAME}.", delete=False, newline="") as file:
            writer = csv.writer(file)
            writer.writerow([*bundle.feature_names, LABEL])
            for row, target in zip(bundle.data, bundle.target):
                writer.writerow([*(repr(float(value)) for value in row), int(target == 0)])
        os.replace(file.name, path)
    except OSError as error:
        raise DataError(f"the data file {path} cannot be written: {error.strerror or error}") from error
    return path


def read_data_file(data_path: str) -> tuple[list[str], torch.Tensor, torch.Tensor]:
    """Return the file's feature names, features (float32, N x 30) and labels (float32, 1
    for malignant).

    Raises:
        DataError: the file is missing or is not the file `write_data_file` writes.
    """
    path = data_file(data_path)
    if not os.path.isfile(path):
        raise DataError(
            f"the data file {path} is missing: pass the --data-path that init wrote it to, "
            f"or write it there with `python -m breast_cancer --data-path {data_path} write-data`"
        )
    try:
        with open(path, newline="") as file:
            header = next(csv.reader(file), [])
            values = np.loadtxt(file, delimiter=",", dtype=np.float32, ndmin=2)
    except (OSError, ValueError) as error:
        raise DataError(f"the data file {path} cannot be read: {error}") from error
    if header[-1:] != [LABEL] or values.shape[1] != len(header):
        raise DataError(f"the data file {path} is not a breast cancer data set: delete it and write it again with write-data")
    return header[:-1], torch.from_numpy(values[:, :-1]), torch.from_numpy(values[:, -1])


def normalize(features: torch.Tensor, state: dict) -> torch.Tensor:
    """Standardize features (N x 30, or one instance's 30) with the training set's mean and
    standard deviation, which `create` kept in the state."""
    mean = torch.tensor(state["mean"], dtype=features.dtype, device=features.device)
    std = torch.tensor(state["std"], dtype=features.dtype, device=features.device)
    return (features - mean) / std


class BreastCancerData(torchexp.Data):
    """The data set's file, split once at init into training, validation and test sets."""

    def create(self, data_path: str) -> dict:
        """Write the file if needed, decide the split and compute the training set's
        statistics, once; what this returns is saved to the experiment's data.json."""
        write_data_file(data_path)
        names, features, _ = read_data_file(data_path)
        samples = len(features)
        order = torch.randperm(samples, generator=torch.Generator().manual_seed(self.seed)).tolist()
        validation = round(samples * self.get_conf("data", "val_split"))
        test = round(samples * self.get_conf("data", "test_split"))
        train = torch.tensor(order[validation + test :])
        # float64: the statistics are kept as JSON numbers, at full precision.
        train_features = features[train].double()
        return {
            "features": names,
            "samples": samples,
            "validation_indexes": sorted(order[:validation]),
            "test_indexes": sorted(order[validation : validation + test]),
            "mean": train_features.mean(0).tolist(),
            "std": train_features.std(0).tolist(),
        }

    def load_datasets(self, data_path: str) -> None:
        """Fill self.datasets["train" | "validation" | "test"] with the split saved at init."""
        names, features, labels = read_data_file(data_path)
        if names != self.state["features"] or len(features) != self.state["samples"]:
            raise DataError(
                f"the data file {data_file(data_path)} holds {len(features)} samples of {len(names)} features, not the "
                f"{self.state['samples']} samples of the {len(self.state['features'])} features the experiment was created with: "
                "delete it and write it again with write-data"
            )
        held_out = {"validation": self.state["validation_indexes"], "test": self.state["test_indexes"]}
        train = torch.ones(len(labels), dtype=torch.bool)
        self.datasets = {}
        for split, indexes in held_out.items():
            indexes = torch.tensor(indexes, dtype=torch.long)
            train[indexes] = False
            self.datasets[split] = (features[indexes], labels[indexes])
        self.datasets["train"] = (features[train], labels[train])

    def load_loaders(self, data_path: str, num_workers: int) -> None:
        """Fill self.loaders with the same keys, the features normalized with the state's
        statistics. TensorLoader keeps the tensors in memory and draws each epoch's order
        from (seed, epoch), which is what lets an interrupted run resume exactly."""
        batch_size = self.get_conf("data", "batch_size")
        self.loaders = {
            split: TensorLoader((normalize(features, self.state), labels), batch_size=batch_size, shuffle=split == "train", seed=self.seed)
            for split, (features, labels) in self.datasets.items()
        }
