"""Every CUDA path of torchexp, end to end on real MNIST, in one table.

Rows: the default configuration trained with `train --device cuda` then tested; the fast
preset with trainer.precision auto (bf16 on GPUs that compute it natively); fp16 with its
GradScaler; torch.compile; channels-last; the data set held on the device; an interrupt
and resume compared with a straight run, with and without trainer.deterministic; seconds to
99 % test accuracy; FSDP in bf16 with background sharded saves, one process per GPU under
torchrun (NCCL), tested and verified. Commands run as processes of the MNIST classifier's command line, as a
user types them, except the device-placement and time-to-accuracy rows, which look inside
the runner.

On a machine without CUDA it says so and exits 0. `--device cpu` runs the same rows on the
CPU (fp16 is skipped), to check the script itself, e.g. on a small data set.

    .venv/bin/python benchmarks/gpu_check.py --data-path ../shared/datasets
    make gpu-check
"""

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # after the path set-up above


class Check:
    """Runs the rows on one device in one experiments folder and collects their results."""

    def __init__(self, args: Any, experiments_path: str):
        self.args = args
        self.experiments_path = experiments_path
        self.rows: list[dict[str, Any]] = []

    def command(self, name: str, *arguments: str) -> list[str]:
        return common.cli_command(self.experiments_path, name, self.args.data_path, *arguments)

    def init(self, name: str, config: str, *overrides: str) -> None:
        settings = [value for override in overrides for value in ("--set", override)]
        common.time_process(self.command(name, "init", "--config-path", config, "--schema-path", common.SCHEMA, *settings))

    def train_and_test(self, name: str, max_epochs: int | None) -> dict[str, Any]:
        """Bare `train` (or --max-epochs) then `test` on the device; seconds and accuracy."""
        epochs = ["--max-epochs", str(max_epochs)] if max_epochs else []
        seconds, output = common.time_process(self.command(name, "--verbose", "train", "--device", self.args.device, *epochs))
        common.time_process(self.command(name, "test", "--device", self.args.device))
        return {"seconds": round(seconds, 1), "accuracy": common.read_test_accuracy(self.experiments_path, name), "log": output}

    def row(self, check: str, run: Callable[[], dict[str, Any]]) -> None:
        """Run one row; a failure is a row too, with the error's last line."""
        started = time.perf_counter()
        try:
            result = run()
            status = result.pop("status", "ok")
        except Exception as error:  # the table must show every row, failed ones included
            result, status = {"notes": str(error).strip().splitlines()[-1][:200]}, "FAILED"
        result.pop("log", None)
        record = {"check": check, "status": status, "wall_seconds": round(time.perf_counter() - started, 1), **result}
        self.rows.append(record)
        common.emit({"benchmark": "gpu_check", **record})

    def default_config(self) -> dict[str, Any]:
        self.init("default", common.DEFAULT_CONFIG)
        return {**self.train_and_test("default", self.args.epochs), "notes": f"{self.args.epochs} epoch(s), cnn, fp32"}

    def fast_auto(self) -> dict[str, Any]:
        self.init("fast", common.PRESETS["fast"])
        result = self.train_and_test("fast", None)
        chosen = next((line for line in result["log"].splitlines() if "trainer.precision auto" in line), "no precision line")
        return {**result, "notes": chosen.split(": ", 1)[-1]}

    def fp16(self) -> dict[str, Any]:
        if self.args.device == "cpu":
            return {"status": "skipped", "notes": "fp16 needs CUDA"}
        self.init("fp16", common.DEFAULT_CONFIG, "trainer.precision=fp16")
        result = self.train_and_test("fp16", self.args.epochs)
        state = load_state(os.path.join(self.experiments_path, "fp16", "checkpoints", f"{self.args.epochs}.checkpoint.pt"))
        scale = state["scaler"]["scale"] if state.get("scaler") else None
        return {**result, "notes": f"GradScaler scale {scale} saved in the checkpoint"}

    def compiled(self) -> dict[str, Any]:
        self.init("compile", common.PRESETS["fast"], "trainer.compile=true")
        return {**self.train_and_test("compile", None), "notes": "fast preset with torch.compile (compile time included)"}

    def channels_last(self) -> dict[str, Any]:
        self.init("channels-last", common.DEFAULT_CONFIG, "trainer.channels_last=true")
        return {**self.train_and_test("channels-last", self.args.epochs), "notes": "default config, channels-last"}

    def data_on_device(self) -> dict[str, Any]:
        """Where TensorLoader keeps MNIST once training starts, and one epoch's speed with the
        data on the device against DataLoader workers feeding it from host memory."""
        import torch

        from mnist_classifier.runner import MNISTClassifierRunner
        from torchexp.loaders import prepare_loaders

        self.init("placement", common.PRESETS["fast"])
        runner = common.make_runner(self.experiments_path, "placement", self.args.data_path, MNISTClassifierRunner)
        try:
            prepare_loaders(runner.data.loaders, torch.device(self.args.device), 0, 1)
            where = str(runner.data.loaders["train"].tensors[0].device)
        finally:
            common.close_runner(runner)
        seconds = {}
        for name, workers in (("on-device", "0"), ("workers", "2")):
            self.init(name, common.PRESETS["fast"])
            train = self.command(name, "train", "--device", self.args.device, "--max-epochs", "1", "--num-workers", workers)
            seconds[name] = round(common.time_process(train)[0], 1)
        notes = f"training set on {where}; 1 epoch {seconds['on-device']} s on the device, {seconds['workers']} s with 2 DataLoader workers"
        return {"seconds": seconds["on-device"], "notes": notes}

    def resume(self, deterministic: bool) -> dict[str, Any]:
        """Train 2 epochs straight, and again with SIGINT mid-epoch 1 then a resume; compare
        every tensor of the two final checkpoints."""
        flag = f"trainer.deterministic={'true' if deterministic else 'false'}"
        names = [f"straight-{deterministic}", f"resumed-{deterministic}"]
        for name in names:
            self.init(name, common.DEFAULT_CONFIG, flag)
        common.time_process(self.command(names[0], "train", "--device", self.args.device, "--max-epochs", "2"))
        interrupted = interrupt_mid_epoch(self.command(names[1], "train", "--device", self.args.device, "--max-epochs", "2", "--log-period", "20"),
                                          os.path.join(self.experiments_path, names[1], "metrics.jsonl"))  # fmt: skip
        common.time_process(self.command(names[1], "train", "--device", self.args.device, "--max-epochs", "2"))
        straight, resumed = (load_state(os.path.join(self.experiments_path, name, "checkpoints", "2.checkpoint.pt")) for name in names)
        difference = max_difference(straight["model"], resumed["model"])
        exact = difference == 0.0
        where = f"stopped at {interrupted}" if interrupted else "the signal came after training ended"
        return {"status": "ok" if exact or not deterministic else "NOT EXACT",
                "notes": f"{where}; {'bit-identical' if exact else f'max weight difference {difference:.3g}'}"}  # fmt: skip

    def fsdp_bf16(self) -> dict[str, Any]:
        """trainer.strategy fsdp in bf16 with background saves, one process per GPU under
        torchrun (NCCL; Gloo for --device cpu), then `test` and `verify` of the last epoch."""
        import torch

        processes = torch.cuda.device_count() if self.args.device.startswith("cuda") else 2
        overrides = ("trainer.strategy=fsdp", "trainer.precision=bf16", "trainer.async_checkpoint=true")
        self.init("fsdp", common.DEFAULT_CONFIG, *overrides)
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}"]
        device = "cuda" if self.args.device.startswith("cuda") else "cpu"
        train = self.command("fsdp", "--verbose", "train", "--device", device, "--max-epochs", str(self.args.epochs))
        seconds, _ = common.time_process([*launcher, *train[1:]])
        common.time_process(self.command("fsdp", "test", "--device", self.args.device))
        _, verified = common.time_process([*launcher, *self.command("fsdp", "verify", "--device", device)[1:]])
        exact = "bit-identical" in verified
        backend = "NCCL" if device == "cuda" else "Gloo"
        shape = f"{processes} processes, {backend}" if processes > 1 else "1 GPU: one process, the model unsharded (NCCL sharding needs 2 GPUs)"
        return {"status": "ok" if exact else "NOT EXACT", "seconds": round(seconds, 1), "accuracy": common.read_test_accuracy(self.experiments_path, "fsdp"),
                "notes": f"{shape}, bf16, background sharded saves; verify: {'bit-identical' if exact else verified.strip().splitlines()[-1]}"}  # fmt: skip

    def seconds_to_99(self) -> dict[str, Any]:
        import torch
        from torchexp import loop

        import time_to_accuracy

        found: list[dict[str, Any]] = []
        runner_class = time_to_accuracy.TimedRunner
        runner_class.targets, runner_class.stop_at_targets, runner_class.report = [0.99], True, found.append
        common.create_experiment(self.experiments_path, "to-99", self.args.data_path, common.PRESETS["fast"], 0)
        runner = common.make_runner(self.experiments_path, "to-99", self.args.data_path, runner_class)
        try:
            loop.train(runner, torch.device(self.args.device), runner.get_conf("trainer", "max_epochs"), 100)
        finally:
            common.close_runner(runner)
        reached = next((record for record in found if record["test_accuracy"] >= 0.99), None)
        if reached is None:
            return {"status": "not reached", "accuracy": found[-1]["test_accuracy"], "notes": "fast preset"}
        return {"seconds": reached["train_seconds"], "accuracy": reached["test_accuracy"], "notes": f"fast preset, epoch {reached['epoch']}"}


def interrupt_mid_epoch(command: list[str], metrics_path: str) -> str | None:
    """Start `train`, send SIGINT once it has logged an iteration, wait for it to stop;
    return where it stopped, or None when it finished first."""
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    while process.poll() is None and not has_iteration_line(metrics_path):
        time.sleep(0.05)
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
    output, _ = process.communicate()
    if process.returncode == 0:
        return None
    if process.returncode != 130:
        raise RuntimeError(f"the interrupted train exited with {process.returncode}: {output.strip().splitlines()[-1]}")
    return next(line.split("at ", 1)[1].split(";")[0] for line in output.splitlines() if "training stopped by SIGINT" in line)


def has_iteration_line(metrics_path: str) -> bool:
    try:
        with open(metrics_path, encoding="utf-8") as file:
            return any('"kind": "iteration"' in line for line in file)
    except FileNotFoundError:
        return False


def load_state(path: str) -> dict[str, Any]:
    import torch

    return torch.load(path, map_location="cpu", weights_only=True)


def max_difference(first: dict[str, Any], second: dict[str, Any]) -> float:
    """The largest absolute difference between two state dicts' tensors."""
    return max(float((first[key].double() - second[key].double()).abs().max()) for key in first)


def print_table(rows: list[dict[str, Any]], device: str) -> None:
    """The table of the closing note: one line per check."""
    print(f"\n| check ({device}) | status | seconds | test accuracy | notes |\n| --- | --- | --- | --- | --- |")
    for row in rows:
        accuracy = f"{row['accuracy'] * 100:.2f} %" if "accuracy" in row else ""
        seconds = row.get("seconds", row["wall_seconds"])
        print(f"| {row['check']} | {row['status']} | {seconds} | {accuracy} | {row.get('notes', '')} |")


def main() -> None:
    parser = common.make_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N, or cpu to check the script itself (default: %(default)s)")
    parser.add_argument("--epochs", type=int, default=2, help="epochs of the default-config rows (default: %(default)s)")
    args = parser.parse_args()
    import torch

    from torchexp.precision import read_cpu_model

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(json.dumps({"benchmark": "gpu_check", "skipped": "this machine has no CUDA device: nothing to check"}))
        return
    device_name = torch.cuda.get_device_name(torch.device(args.device)) if args.device.startswith("cuda") else read_cpu_model()
    common.emit({"benchmark": "gpu_check", "device": device_name, "machine": common.machine()})
    with tempfile.TemporaryDirectory(prefix="torchexp-gpu-check-") as experiments_path:
        check = Check(args, experiments_path)
        check.row("default config: train, then test", check.default_config)
        check.row("fast preset, trainer.precision auto", check.fast_auto)
        check.row("fp16 with GradScaler", check.fp16)
        check.row("torch.compile", check.compiled)
        check.row("channels-last", check.channels_last)
        check.row("data set held on the device", check.data_on_device)
        check.row("interrupt + resume = straight, deterministic", lambda: check.resume(True))
        check.row("interrupt + resume = straight, default settings", lambda: check.resume(False))
        check.row("fsdp, bf16, background saves, verify", check.fsdp_bf16)
        check.row("seconds to 99 % test accuracy", check.seconds_to_99)
    print_table(check.rows, device_name)


if __name__ == "__main__":
    main()
