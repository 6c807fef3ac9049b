"""Samples per second of one MNIST training epoch with 1 and with 2 processes (torchrun, Gloo).

Usage: .venv/bin/python benchmarks/distributed.py [--data-path ../shared/datasets] [--model cnn]

Both runs train the same model, batch and seed on the full 60,000 images (val_split 0),
one after the other; each prints a JSON line, then the ratio. On a 2-core machine the two
processes share the cores (one thread each), so this shows the framework's overhead more
than a speed-up.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_cli(experiments: str, data_path: str, *args: str, processes: int = 0) -> None:
    launcher = [sys.executable]
    if processes:
        launcher += ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}"]
    command = [*launcher, "-m", "mnist_classifier", "--quiet", "--experiments-path", experiments, "--data-path", data_path, *args]
    subprocess.run(command, check=True, cwd=REPO)


def measure(processes: int, data_path: str, model: str) -> dict:
    """Train one epoch with `processes` processes; return its samples per second."""
    with tempfile.TemporaryDirectory() as experiments:
        name = ["--experiment-name", f"p{processes}"]
        run_cli(experiments, data_path, *name, "init", "--set", "data.val_split=0", "--set", f"model.name={model}",
                "--config-path", os.path.join(REPO, "config.default.json"), "--schema-path", os.path.join(REPO, "config.schema.json"))
        run_cli(experiments, data_path, *name, "train", "--max-epochs", "1", "--device", "cpu", processes=processes if processes > 1 else 0)
        with open(os.path.join(experiments, f"p{processes}", "metrics.jsonl")) as file:
            epoch = next(line for line in map(json.loads, file) if line["kind"] == "train")
    return {"benchmark": "distributed", "processes": processes, "model": model, "epoch_seconds": epoch["seconds"],
            "samples_per_s": round(60000 / epoch["seconds"], 1), "train_loss": round(epoch["metrics"]["loss"], 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-path", default=os.path.join(REPO, "..", "shared", "datasets"))
    parser.add_argument("--model", default="cnn")
    args = parser.parse_args()
    results = [measure(processes, os.path.abspath(args.data_path), args.model) for processes in (1, 2)]
    for result in results:
        print(json.dumps(result), flush=True)
    print(json.dumps({"benchmark": "distributed", "ratio_2_over_1": round(results[1]["samples_per_s"] / results[0]["samples_per_s"], 3)}))


if __name__ == "__main__":
    main()
