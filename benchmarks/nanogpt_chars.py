"""Tokens per second of torchexp's `train` on the nanogpt_chars example against nanoGPT's own
`train.py`, with the same model, batch, gradient accumulation and data, on the CPU.

nanoGPT's public source (karpathy/nanoGPT: `train.py`, `model.py`, `configurator.py`) is
passed with `--nanogpt PATH` and copied into a scratch folder under /tmp, with the corpus
of an experiment's `init` (the standard library's modules by default) encoded to its
`data/<dataset>/train.bin`, `val.bin` and `meta.json`; nothing of it enters the repository.
The copy of `train.py` reads its vocabulary's size from that JSON file instead of nanoGPT's
`meta.pkl` (`read_meta_as_json`): nothing here writes a pickle, and the two lines changed run
before training, outside the timed span.
Both run as whole processes, alternating over `--rounds` rounds: nanoGPT with
`device=cpu compile=False dtype=float32`, dropout 0, no bias, one-batch evaluations at an
interval out of the way; torchexp's `train --log-period 1 --num-workers 0` on a fresh
experiment each round (validation at the last step only, after the timed span).

The timed span is the same on both sides: from the end of the first optimizer step to
the end of the last, read from what each process prints or logs at every step (nanoGPT's
`iter N: ... time T ms` lines, torchexp's metrics.jsonl iteration lines), so that process
start, imports, data loading and nanoGPT's first evaluation are left out. Figures are medians,
with the ratio of the medians and the median of each round's ratio.

    .venv/bin/python benchmarks/nanogpt_chars.py --nanogpt /tmp/nanoGPT              # ~1.5 min on 2 cores
    .venv/bin/python benchmarks/nanogpt_chars.py --nanogpt /tmp/nanoGPT --threads 1  # ~2.5 min
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time

from common import REPO, emit, machine, median

EXAMPLE = os.path.join(REPO, "examples", "nanogpt_chars")

NANOGPT_FILES = ("train.py", "model.py", "configurator.py")
DATASET = "nanogpt_chars"
# The example's defaults; the optimizer's settings only matter to the losses printed beside.
SETTINGS = {"lr": 2e-3, "min_lr": 2e-4, "warmup_steps": 60, "weight_decay": 0.1, "beta1": 0.9, "beta2": 0.99, "grad_clip": 1.0}


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="torchexp's train of nanogpt_chars against nanoGPT's train.py, tokens/s on the CPU")
    parser.add_argument("--nanogpt", required=True, help="a folder holding nanoGPT's train.py, model.py and configurator.py (a checkout of karpathy/nanoGPT)")
    parser.add_argument("--data-path", help="the corpus folder (default: the standard library's, as the example's)")
    parser.add_argument("--steps", type=int, default=30, help="optimizer steps per run (default: %(default)s); the first is not timed")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds of both (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=8, help="blocks per batch (default: %(default)s, the example's)")
    parser.add_argument("--grad-accumulation", type=int, default=2, help="batches per optimizer step (default: %(default)s, the example's)")
    parser.add_argument("--model", default="6,6,192,128", help="n_layer,n_head,n_embd,block_size (default: %(default)s, the example's)")
    parser.add_argument(
        "--threads", type=int, help="torch threads of both processes (OMP_NUM_THREADS); 1 is the figure least moved by other work on the cores (default: torch's, every core)"
    )
    return parser.parse_args()


def model_settings(text: str) -> dict[str, int]:
    n_layer, n_head, n_embd, block_size = (int(value) for value in text.split(","))
    return {"n_layer": n_layer, "n_head": n_head, "n_embd": n_embd, "block_size": block_size}


def child_environment(threads: int | None) -> dict[str, str]:
    """This process's environment for both processes: the example's folder on PYTHONPATH
    for `python -m nanogpt_chars`, and OMP_NUM_THREADS when `threads` is given."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [EXAMPLE, env.get("PYTHONPATH")]))
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


def example_command(experiments: str, name: str, data_path: str | None, *arguments: str) -> list[str]:
    command = [sys.executable, "-m", "nanogpt_chars", "--experiments-path", experiments, "--experiment-name", name, "--quiet"]
    return [*command, *(["--data-path", data_path] if data_path else []), *arguments]


def init_example(experiments: str, name: str, args: argparse.Namespace) -> None:
    """`init` an experiment of the example with the benchmark's model, batch and steps."""
    shape = model_settings(args.model)
    settings = [f"model.{key}={value}" for key, value in shape.items()] + [
        f"data.batch_size={args.batch_size}", f"trainer.grad_accumulation={args.grad_accumulation}",
        f"trainer.max_steps={args.steps}", "trainer.validate_every_steps=null", "trainer.checkpoint_every_steps=null",
        "trainer.checkpoint_every_minutes=null", "model.dropout=0.0", "model.bias=false",
    ]  # fmt: skip
    pairs = [item for setting in settings for item in ("--set", setting)]
    subprocess.run(example_command(experiments, name, args.data_path, "init", *pairs), check=True, env=child_environment(args.threads))


def write_nanogpt_data(folder: str, experiments: str, name: str, data_path: str | None) -> int:
    """Encode the experiment's corpus, split as its data.json says, to nanoGPT's
    data/<dataset>/train.bin and val.bin (uint16 ids) and meta.json; return the vocabulary's size.

    The example's package is not imported here: this script's own name would shadow it.
    """
    import numpy as np

    with open(os.path.join(experiments, name, "data.json"), encoding="utf-8") as file:
        state = json.load(file)
    root = data_path or sysconfig.get_paths()["stdlib"]
    vocabulary = state["vocabulary"]
    ids = {character: index for index, character in enumerate(vocabulary)}
    split = len(state["files"]) - state["validation_files"]
    target = os.path.join(folder, "data", DATASET)
    os.makedirs(target)
    for part, files in (("train", state["files"][:split]), ("val", state["files"][split:])):
        text = "".join(read_file(os.path.join(root, entry["path"])) for entry in files)
        np.array([ids[character] for character in text], dtype=np.uint16).tofile(os.path.join(target, f"{part}.bin"))
    with open(os.path.join(target, "meta.json"), "w", encoding="utf-8") as file:
        json.dump({"vocab_size": len(vocabulary), "itos": dict(enumerate(vocabulary)), "stoi": ids}, file)
    return len(vocabulary)


def read_file(path: str) -> str:
    with open(path, encoding="utf-8") as file:
        return file.read()


def copy_nanogpt(source: str, folder: str) -> None:
    """Copy nanoGPT's three files into the scratch folder."""
    for name in NANOGPT_FILES:
        path = os.path.join(source, name)
        if not os.path.isfile(path):
            raise SystemExit(f"--nanogpt {source} has no {name}: pass a checkout of karpathy/nanoGPT")
        shutil.copy(path, folder)
    read_meta_as_json(os.path.join(folder, "train.py"))


# nanoGPT's train.py reads data/<dataset>/meta.pkl with pickle; its copy reads meta.json.
META_READ = ("meta_path = os.path.join(data_dir, 'meta.pkl')", "meta = pickle.load(f)")
META_READ_AS_JSON = ("meta_path = os.path.join(data_dir, 'meta.json')", "meta = __import__('json').load(f)")


def read_meta_as_json(path: str) -> None:
    """Make the copy of nanoGPT's train.py read its vocabulary from meta.json, not a pickle.

    Raises:
        SystemExit: the file does not read its meta.pkl as nanoGPT's train.py does.
    """
    text = read_file(path)
    for old, new in zip(META_READ, META_READ_AS_JSON, strict=True):
        if text.count(old) != 1:
            raise SystemExit(f"{path} has no line {old!r} to read meta.json instead: pass a checkout of karpathy/nanoGPT")
        text = text.replace(old, new)
    with open(path, "w", encoding="utf-8") as file:
        file.write(text)


def nanogpt_arguments(args: argparse.Namespace) -> list[str]:
    """nanoGPT's train.py options for the same model, batch, accumulation and optimizer;
    iterations 0 to steps - 1, so that it takes `steps` optimizer steps."""
    options = {
        **model_settings(args.model), "dataset": DATASET, "batch_size": args.batch_size,
        "gradient_accumulation_steps": args.grad_accumulation, "max_iters": args.steps - 1, "lr_decay_iters": args.steps,
        "warmup_iters": SETTINGS["warmup_steps"], "learning_rate": SETTINGS["lr"], "min_lr": SETTINGS["min_lr"],
        "weight_decay": SETTINGS["weight_decay"], "beta1": SETTINGS["beta1"], "beta2": SETTINGS["beta2"], "grad_clip": SETTINGS["grad_clip"],
        "dropout": 0.0, "bias": False, "device": "cpu", "compile": False, "dtype": "float32",
        "eval_interval": 10**6, "eval_iters": 1, "log_interval": 1, "always_save_checkpoint": False,
    }  # fmt: skip
    return [f"--{key}={value}" for key, value in options.items()]


def run_nanogpt(folder: str, args: argparse.Namespace) -> dict:
    """One process of nanoGPT's train.py; the seconds of iterations 1 to the last (their printed times)."""
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "train.py", *nanogpt_arguments(args)], cwd=folder, capture_output=True, text=True, env=child_environment(args.threads))
    process_seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"nanoGPT's train.py failed ({done.returncode}):\n{done.stdout}{done.stderr}")
    steps = [(int(number), float(ms), float(loss)) for number, loss, ms in re.findall(r"iter (\d+): loss ([\d.]+), time ([\d.]+)ms", done.stdout)]
    timed = [ms for number, ms, _ in steps if number >= 1]
    return {"seconds": sum(timed) / 1000, "steps_timed": len(timed), "process_seconds": process_seconds, "last_loss": steps[-1][2]}


def run_torchexp(experiments: str, name: str, args: argparse.Namespace) -> dict:
    """One process of the example's `train` on a fresh experiment; the seconds from the end
    of its first optimizer step to the end of its last (metrics.jsonl's iteration times)."""
    init_example(experiments, name, args)
    command = example_command(experiments, name, args.data_path, "train", "--log-period", "1", "--device", "cpu", "--num-workers", "0")
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=child_environment(args.threads))
    process_seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"torchexp's train failed ({done.returncode}):\n{done.stdout}{done.stderr}")
    with open(os.path.join(experiments, name, "metrics.jsonl"), encoding="utf-8") as file:
        steps = [line for line in map(json.loads, file) if line["kind"] == "iteration"]
    return {
        "seconds": steps[-1]["time"] - steps[0]["time"],
        "steps_timed": len(steps) - 1,
        "process_seconds": process_seconds,
        "last_loss": steps[-1]["metrics"]["loss"],
    }


def main() -> None:
    args = parse_arguments()
    tokens_per_step = args.batch_size * model_settings(args.model)["block_size"] * args.grad_accumulation
    emit({"machine": machine()})
    with tempfile.TemporaryDirectory(prefix="torchexp-nanogpt-chars-") as scratch:
        experiments, nanogpt = os.path.join(scratch, "experiments"), os.path.join(scratch, "nanogpt")
        os.makedirs(nanogpt)
        copy_nanogpt(args.nanogpt, nanogpt)
        init_example(experiments, "corpus", args)
        vocabulary = write_nanogpt_data(nanogpt, experiments, "corpus", args.data_path)
        emit({"model": args.model, "threads": args.threads or "torch's default", "vocabulary": vocabulary, "batch_size": args.batch_size, "grad_accumulation": args.grad_accumulation, "tokens_per_step": tokens_per_step, "steps": args.steps})
        results = run_rounds(args, experiments, nanogpt, tokens_per_step)
    medians = {variant: median(values) for variant, values in results.items()}
    # Each round's own ratio as well: the two runs of a round are neighbours in time, so a
    # load that comes and goes over the rounds moves both.
    ratios = [ours / theirs for ours, theirs in zip(results["torchexp"], results["nanogpt"])]
    emit({
        "summary": True, "torchexp_tokens_per_s": round(medians["torchexp"]), "nanogpt_tokens_per_s": round(medians["nanogpt"]),
        "ratio_torchexp_to_nanogpt": round(medians["torchexp"] / medians["nanogpt"], 3), "median_ratio_of_rounds": round(median(ratios), 3),
        "load_avg_1_5_15": [round(value, 2) for value in os.getloadavg()],
    })  # fmt: skip


def run_rounds(args: argparse.Namespace, experiments: str, nanogpt: str, tokens_per_step: int) -> dict[str, list[float]]:
    """Run both, in turns, `--rounds` times, each round in the other order; emit each run and
    return the tokens per second of each variant's runs."""
    results: dict[str, list[float]] = {"torchexp": [], "nanogpt": []}
    for round_number in range(args.rounds):
        order = ("torchexp", "nanogpt") if round_number % 2 == 0 else ("nanogpt", "torchexp")
        for variant in order:
            run = run_torchexp(experiments, f"round-{round_number}", args) if variant == "torchexp" else run_nanogpt(nanogpt, args)
            tokens_per_second = run["steps_timed"] * tokens_per_step / run["seconds"]
            results[variant].append(tokens_per_second)
            figures = {key: round(value, 3) for key, value in run.items()}
            # The load after the run: another process on the cores shows here, and in the seconds.
            emit({"variant": variant, "round": round_number, "tokens_per_s": round(tokens_per_second), **figures, "load_avg_1": round(os.getloadavg()[0], 2)})
    return results

if __name__ == "__main__":
    main()
