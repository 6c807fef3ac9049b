"""What the MLflow mirror costs training: fast-preset epochs with tracking off and with
`--mlflow-uri` pointing at a real local `mlflow server`.

Each round trains two fresh experiments of the fast preset (`configs/fast.json`) for
`--epochs` epochs through the command line, as a user runs them (`python -m
mnist_classifier ... train`), one without tracking and one with `--mlflow-uri`, in
alternating order. The mirror sends each epoch from a thread of its own, so what it can cost
an epoch is that thread's share of the CPU; the figure compared is therefore each epoch's own
seconds, as `train` records them in metrics.jsonl (its iterations and validation). A
process with tracking also imports mlflow and opens its run before the first epoch: that is
reported apart, as the difference of the `train` processes' wall seconds.

The server is tests/mlflow_server.py's: SQLite store and artifacts in the temporary folder,
uvicorn with one worker, on a free loopback port. Each tracked run is checked on the server
(its `train/loss` steps and its FINISHED status), so that a mirror that silently sent
nothing cannot pass for a cheap one.

    .venv/bin/python benchmarks/mlflow_overhead.py --rounds 3 --epochs 2
"""

import json
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # after the path set-up above

sys.path.insert(0, os.path.join(common.REPO, "tests"))  # the tests' mlflow server helper

VARIANTS = ("off", "on")


def read_epoch_seconds(experiments_path: str, name: str) -> list[float]:
    """Each epoch's seconds, as `train` logged them in metrics.jsonl, oldest first."""
    with open(os.path.join(experiments_path, name, "metrics.jsonl"), encoding="utf-8") as file:
        entries = [json.loads(line) for line in file if line.strip()]
    return [entry["seconds"] for entry in entries if entry.get("kind") == "train"]


def check_run(server_url: str, experiments_path: str, name: str, epochs: int) -> None:
    """Fail unless the experiment's MLflow run holds every epoch's train/loss and FINISHED.

    Raises:
        RuntimeError: the run is missing, incomplete or not finished.
    """
    from mlflow import MlflowClient

    with open(os.path.join(experiments_path, name, "mlflow.json"), encoding="utf-8") as file:
        run_id = json.load(file)["runs"][server_url]["run_id"]
    client = MlflowClient(server_url)
    steps = sorted(metric.step for metric in client.get_metric_history(run_id, "train/loss"))
    status = client.get_run(run_id).info.status
    if steps != list(range(1, epochs + 1)) or status != "FINISHED":
        raise RuntimeError(f"MLflow run {run_id} of {name} holds train/loss steps {steps} and status {status}, expected 1-{epochs} and FINISHED")


def train_once(args, experiments_path: str, name: str, server_url: str | None) -> dict:
    """Create a fast-preset experiment and train it `--epochs` epochs in a process of its
    own; return its epoch and process seconds."""
    common.create_experiment(experiments_path, name, args.data_path, common.PRESETS["fast"], args.seed)
    tracking = ["--mlflow-uri", server_url] if server_url else []
    command = common.cli_command(experiments_path, name, args.data_path, *tracking, "train", "--max-epochs", str(args.epochs), "--device", "cpu")
    env = {key: value for key, value in os.environ.items() if not key.startswith("MLFLOW_")}  # off means off
    process_seconds, _ = common.time_process(command, env)
    if server_url:
        check_run(server_url, experiments_path, name, args.epochs)
    return {"epoch_seconds": read_epoch_seconds(experiments_path, name), "process_seconds": round(process_seconds, 3)}


def mean(values: list[float]) -> float:
    return round(sum(values) / len(values), 3)


def main() -> None:
    parser = common.make_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="rounds of off and on, alternating their order (default: %(default)s)")
    parser.add_argument("--epochs", type=int, default=2, help="epochs trained per experiment (default: %(default)s)")
    args = parser.parse_args()
    from mlflow_server import start_mlflow_server

    machine = common.machine()
    common.emit({"benchmark": "mlflow_overhead", "machine": machine})
    runs: dict[str, list[dict]] = {variant: [] for variant in VARIANTS}
    with tempfile.TemporaryDirectory(prefix="torchexp-mlflow-overhead-") as folder:
        experiments_path = os.path.join(folder, "experiments")
        server_folder = os.path.join(folder, "mlflow")
        os.makedirs(server_folder)
        with start_mlflow_server(server_folder) as server:
            for round_index in range(args.rounds):
                order = VARIANTS if round_index % 2 == 0 else tuple(reversed(VARIANTS))
                for variant in order:
                    name = f"{variant}-{round_index + 1}"
                    result = train_once(args, experiments_path, name, server.url if variant == "on" else None)
                    runs[variant].append(result)
                    common.emit({"benchmark": "mlflow_overhead", "round": round_index + 1, "tracking": variant, **result})
    epochs = {variant: [seconds for run in runs[variant] for seconds in run["epoch_seconds"]] for variant in VARIANTS}
    processes = {variant: [run["process_seconds"] for run in runs[variant]] for variant in VARIANTS}
    # An epoch after the first overlaps the sending of the one before: the steady state.
    later = {variant: [seconds for run in runs[variant] for seconds in run["epoch_seconds"][1:]] for variant in VARIANTS}
    summary = {
        "benchmark": "mlflow_overhead", "summary": True, "rounds": args.rounds, "epochs": args.epochs,
        "mean_epoch_seconds": {variant: mean(epochs[variant]) for variant in VARIANTS},
        "epoch_ratio_on_off": round(mean(epochs["on"]) / mean(epochs["off"]), 4),
        "mean_process_seconds": {variant: mean(processes[variant]) for variant in VARIANTS},
        "process_seconds_added": round(mean(processes["on"]) - mean(processes["off"]), 3),
        "cpu_flags": machine["cpu_flags"], "machine": common.machine(),
    }  # fmt: skip
    if all(later.values()):
        summary["mean_later_epoch_seconds"] = {variant: mean(later[variant]) for variant in VARIANTS}
        summary["later_epoch_ratio_on_off"] = round(mean(later["on"]) / mean(later["off"]), 4)
    common.emit(summary)
    print(f"cpu flags: {machine['cpu_flags']}", flush=True)
    print(f"mean epoch: off {summary['mean_epoch_seconds']['off']} s, on {summary['mean_epoch_seconds']['on']} s, ratio on/off {summary['epoch_ratio_on_off']}", flush=True)


if __name__ == "__main__":
    main()
