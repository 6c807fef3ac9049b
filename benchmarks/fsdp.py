"""trainer.strategy fsdp against ddp on 2 CPU ranks (torchrun, Gloo), for a GPT of about
100 M parameters: memory per rank, the training thread's stall per checkpoint, and the
throughput of sharded checkpoints.

    .venv/bin/python benchmarks/fsdp.py [--layers 14] [--width 768] [--rounds 3] [--steps 3]
        [--malloc-mmap-threshold 131072]

About 2 minutes on an idle 2-core machine (4 while other work shares it); each rank takes
about 3 GB of memory, and the checkpoints (1.2 GB each at full size) are written to a
temporary folder in /tmp, removed at the end.

The model is examples/nanogpt_chars's GPT scaled up (`--layers` blocks of `--width`, 64
wide heads, block 256, a vocabulary of 100 characters), trained on random characters,
2 x 256 tokens per rank and step, with AdamW in fp32. The script launches itself under
`torch.distributed.run --standalone --nproc-per-node 2` three times, each a fresh pair of
processes:

1. memory, ddp then fsdp: `--steps` training steps of the model as
   `torchexp.strategy.wrap_model` spreads it (fsdp: `fully_shard` on each Block, then the
   root), glibc's allocator set as `train` sets it by default (trainer.keep_freed_memory
   null: freed memory kept under ddp, returned at once under fsdp).
   Per rank: peak RSS (ru_maxrss) and the peak less the RSS before the model was built,
   what the training state itself costs. Goal: fsdp at most 0.6x ddp. With
   `--malloc-mmap-threshold`, glibc returns freed blocks above that size to the kernel
   instead: the memory fsdp's tensors need, rather than what the heap keeps after them.
2. stall, fsdp: seconds the training thread spends in `CheckpointSaver.save` (torchexp's
   own saver, driven with a stand-in runner holding what it reads), synchronous against
   trainer.async_checkpoint, glibc keeping freed memory as in `train`; one training step
   follows each save, and the wait for a background save still in flight is not
   counted. Median over `--rounds` saves of the slower rank. Goal: async at most 0.1x sync.
3. throughput, fsdp: a synchronous save (shards, plain state, hashes, sidecar, renames) and
   a load (`training_state.load_training_state`: verify, plain state, shards into the
   model and optimizer) in MB/s of checkpoint bytes, against each rank torch.save-ing its
   own shards (`DTensor.to_local()` of the model's and optimizer's state dicts; rank 0 also
   the plain state) with fsync, and torch.load(weights_only=True) + load_state_dict.
   Timed from a barrier to the last rank's end; the files are read back from the page
   cache either way. Goal: torchexp at least 0.8x.

Where the time of torchexp's save and load goes is measured by wrapping the functions it
calls (`collect_state`, `save_shards`, `hash_files`, `write_folder_sidecar`,
`verify_folder`, `load_shards`) with a clock.
"""

import argparse
import contextlib
import dataclasses
import json
import logging
import os
import resource
import sys
import tempfile
import time
import types
from collections.abc import Callable, Iterator
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import common  # after the path set-up above

# Then out again: this folder's nanogpt_chars.py (a benchmark) would shadow the example's package.
sys.path[:] = [path for path in sys.path if os.path.abspath(path or os.curdir) != HERE]

import torch  # this and what follows: after the path set-up above
import torch.nn.functional as F
from nanogpt_chars.model import GPT, GPTConfig
from torch.distributed.tensor import DTensor

from torchexp import checkpoints, saving, sharded, sidecar
from torchexp.distributed import World, barrier, gather_objects, join, leave, read_world
from torchexp.memory import keep_freed_memory_when_configured
from torchexp.precision import Precision, choose_precision
from torchexp.signals import StopSignals
from torchexp.strategy import wrap_model
from torchexp.training_state import collect_state, load_training_state

VOCABULARY = 100  # characters, about those of a source-code corpus
BLOCK = 256  # tokens per sequence
BATCH = 2  # sequences per rank and step
HEAD_WIDTH = 64  # as GPT-2's heads
LEARNING_RATE = 6e-4  # nanoGPT's
RANKS = 2
MB = 1e6
ROUND_PARTS = ("save_call_s", "step_after_save_s", "wait_for_save_in_flight_s")  # what the training thread spends per save and step


def main() -> None:
    args = parse_arguments()
    if args.part is not None:
        run_part(args)
        return
    options = {"layers": args.layers, "width": args.width, "rounds": args.rounds, "steps": args.steps, "malloc_mmap_threshold": args.malloc_mmap_threshold}
    machine = common.machine()
    common.emit({"benchmark": "fsdp", "machine": machine, **options})
    with tempfile.TemporaryDirectory(prefix="torchexp-fsdp-", dir="/tmp") as folder:
        memory = {strategy: launch(args, folder, "memory", strategy) for strategy in ("ddp", "fsdp")}
        measured = launch(args, folder, "checkpoints", "fsdp")
    summary = summarize(memory, measured)
    for strategy, ranks in memory.items():
        common.emit({"benchmark": "fsdp", "part": "memory", "strategy": strategy, "ranks": ranks})
    common.emit({"benchmark": "fsdp", "part": "checkpoints", **measured})
    common.emit({"benchmark": "fsdp", "summary": True, **summary})
    print(f"\ncpu flags: {machine['cpu_flags']}; load average {machine['load_avg_1_5_15'][0]} at the start, {summary['load_avg_1']} at the end")
    print(f"model: nanogpt_chars GPT, {summary['parameters']:,} parameters ({summary['parameters'] * 4 / MB:,.0f} MB in fp32); {RANKS} ranks (Gloo), {BATCH} x {BLOCK} tokens per rank and step, AdamW")
    print_memory(memory, summary, args.malloc_mmap_threshold)
    print_stall(measured, summary)
    print_throughput(measured, summary)


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=14, help="transformer blocks (default: %(default)s: 99.4 M parameters at width 768)")
    parser.add_argument("--width", type=int, default=768, help="embedding width, a multiple of 64 (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=3, help="saves and loads of each kind (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=3, help="training steps of each memory run (default: %(default)s)")
    parser.add_argument(
        "--malloc-mmap-threshold", type=int, metavar="BYTES",
        help="run the memory part with glibc's MALLOC_MMAP_THRESHOLD_ fixed at BYTES, which also keeps torchexp's keep_freed_memory "
        "from turning mmap off: freed blocks above it go back to the kernel (default: glibc's and torchexp's own settings)",
    )
    parser.add_argument("--part", choices=("memory", "checkpoints"), help=argparse.SUPPRESS)  # set by the launch, under torchrun
    parser.add_argument("--strategy", choices=("ddp", "fsdp"), help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    return parser.parse_args()


def launch(args: argparse.Namespace, folder: str, part: str, strategy: str) -> Any:
    """Run one part in a fresh pair of processes under torchrun; return what rank 0 wrote."""
    env = dict(os.environ)
    if part == "memory" and args.malloc_mmap_threshold is not None:
        env["MALLOC_MMAP_THRESHOLD_"] = str(args.malloc_mmap_threshold)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(RANKS), os.path.abspath(__file__)]
    command += ["--layers", str(args.layers), "--width", str(args.width), "--rounds", str(args.rounds), "--steps", str(args.steps)]
    command += ["--part", part, "--strategy", strategy, "--folder", folder]
    seconds, _ = common.time_process(command, env)
    print(f"{part} ({strategy}): {seconds:.0f} s", file=sys.stderr, flush=True)
    with open(results_path(folder, part, strategy), encoding="utf-8") as file:
        return json.load(file)


def results_path(folder: str, part: str, strategy: str) -> str:
    """Where rank 0 of a part leaves its results for the launching process."""
    return os.path.join(folder, f"{part}-{strategy}.json")


def run_part(args: argparse.Namespace) -> None:
    """Inside torchrun: join the ranks, measure, and have rank 0 write the results."""
    world, device = read_world(), torch.device("cpu")
    join(world, device)
    try:
        if args.part == "memory":
            results: Any = measure_memory(args, world, device)
        else:
            results = measure_checkpoints(args, world, device)
        if world.is_main:
            with open(results_path(args.folder, args.part, args.strategy), "w", encoding="utf-8") as file:
                json.dump(results, file)
    finally:
        leave()


# ---- the model and its training steps


def build_model(args: argparse.Namespace, strategy: str, world: World, device: torch.device) -> torch.nn.Module:
    """The example's GPT, scaled up, spread over the ranks by torchexp's own `wrap_model`."""
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=VOCABULARY, block_size=BLOCK, n_layer=args.layers, n_head=args.width // HEAD_WIDTH, n_embd=args.width)
    # Blocks named as units (trainer.fsdp_modules): the default units, the members of the
    # `transformer` ModuleDict, include the `h` ModuleList, which fully_shard refuses.
    return wrap_model(GPT(config).to(device), strategy, ["Block"], world, device, None)


def make_batch(rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random characters: (inputs, next characters), BATCH x BLOCK, different on each rank."""
    tokens = torch.randint(0, VOCABULARY, (BATCH, BLOCK + 1), generator=torch.Generator().manual_seed(rank))
    return tokens[:, :-1], tokens[:, 1:]


def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, batch: tuple[torch.Tensor, torch.Tensor]) -> float:
    """One forward, backward and AdamW step; return its seconds."""
    started = time.perf_counter()
    inputs, targets = batch
    logits = model(inputs)
    F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1)).backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - started


def count_parameters(model: torch.nn.Module) -> int:
    """Parameters of the whole model (sharded ones at full size), the tied head counted once."""
    return sum(parameter.numel() for parameter in model.parameters())


# ---- part 1: memory


def measure_memory(args: argparse.Namespace, world: World, device: torch.device) -> list[dict[str, Any]]:
    """Train `--steps` steps; return each rank's RSS before the model, peak RSS and step seconds."""
    before = read_rss_bytes()
    model = build_model(args, args.strategy, world, device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE)
    # As train does before its first step, trainer.keep_freed_memory being null by default:
    # kept under ddp, returned at once under fsdp.
    keep_freed_memory_when_configured(None, logging.getLogger("torchexp.benchmark"), args.strategy)
    batch = make_batch(world.rank)
    seconds = [train_step(model, optimizer, batch) for _ in range(args.steps)]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    mine = {"rank": world.rank, "parameters": count_parameters(model), "rss_before_model_bytes": before, "peak_rss_bytes": peak,
            "training_state_bytes": peak - before, "step_seconds": rounded(seconds)}
    return gather_objects(mine)


def read_rss_bytes() -> int:
    """This process's resident memory now."""
    with open("/proc/self/statm", encoding="ascii") as file:
        return int(file.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


# ---- parts 2 and 3: checkpoints


@dataclasses.dataclass
class StandInRunner:
    """What `CheckpointSaver`, `collect_state` and `load_training_state` read of a Runner,
    and nothing else: a run of one step, no scheduler, no validation history."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    world: World
    device: torch.device
    experiment: types.SimpleNamespace  # checkpoints_path
    logger: logging.Logger
    config: types.SimpleNamespace = dataclasses.field(default_factory=lambda: types.SimpleNamespace(data={"trainer": {"strategy": "fsdp", "keep_checkpoints": None}}))
    counters: dict = dataclasses.field(default_factory=lambda: {"epoch": 0, "iteration": 0, "step": 1})
    history: dict = dataclasses.field(default_factory=lambda: {"train": [], "validation": []})
    data: types.SimpleNamespace = dataclasses.field(default_factory=lambda: types.SimpleNamespace(num_workers=0))
    scheduler: None = None

    def get_conf(self, section: str, key: str) -> Any:
        return self.config.data[section][key]

    def save_states_others(self) -> dict:
        return {}


def measure_checkpoints(args: argparse.Namespace, world: World, device: torch.device) -> dict[str, Any]:
    """Stall of async and sync saves, then load, then torch.save and torch.load of the same state."""
    model = build_model(args, "fsdp", world, device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE)
    keep_freed_memory_when_configured(None, logging.getLogger("torchexp.benchmark"), "fsdp")  # as train does under fsdp
    batch = make_batch(world.rank)
    train_step(model, optimizer, batch)  # AdamW makes its state at the first step
    checkpoints_path = os.path.join(args.folder, "checkpoints")
    os.makedirs(checkpoints_path, exist_ok=True)
    runner = StandInRunner(model, optimizer, world, device, types.SimpleNamespace(checkpoints_path=checkpoints_path), logging.getLogger("torchexp.benchmark"))
    precision = Precision(choose_precision("fp32", device), device)
    signals = StopSignals(runner.logger)
    background = time_saves(runner, precision, signals, batch, True, range(1, args.rounds + 1))
    now = time_saves(runner, precision, signals, batch, False, range(args.rounds + 1, 2 * args.rounds + 1))
    loads = time_loads(runner, 2 * args.rounds, args.rounds)
    plain = time_plain(runner, precision, os.path.join(args.folder, "plain"), args.rounds)
    return {"parameters": count_parameters(model), "async": background, "sync": now, "load": loads, "plain": plain}


def time_saves(runner: StandInRunner, precision: Precision, signals: StopSignals, batch: tuple[torch.Tensor, torch.Tensor], background: bool, numbers: range) -> dict[str, Any]:
    """Save standard checkpoints `numbers` with a CheckpointSaver, a training step after
    each; return the seconds of each `save` call on the slower rank, of the steps, of the
    waits for the save in flight, and where the time went. The last synchronous one stays,
    for the loads."""
    saver = saving.CheckpointSaver(runner, background)
    stalls, steps, waits = [], [], []
    spent: dict[str, float] = {}
    watched = [(saving, "collect_state"), (sharded, "save_shards"), (sharded, "start_saving_shards"), (sidecar, "hash_files"), (sidecar, "write_folder_sidecar")]
    with clocking(watched, spent):
        for number in numbers:
            barrier()
            started = time.perf_counter()
            saver.save(precision, signals, "standard", number)
            stalls.append(time.perf_counter() - started)
            steps.append(train_step(runner.model, runner.optimizer, batch))
            started = time.perf_counter()
            saver.wait(signals)
            waits.append(time.perf_counter() - started)
            if background or number != numbers[-1]:
                remove_checkpoint(runner, number)
    every = gather_objects({"stalls": stalls, "steps": steps, "waits": waits, "spent": spent})
    return {
        "save_call_s": slowest(every, "stalls"),
        "step_after_save_s": slowest(every, "steps"),
        "wait_for_save_in_flight_s": slowest(every, "waits"),
        "spent_in_s_by_rank": [per_call(rank["spent"], len(numbers)) for rank in every],
        "checkpoint_bytes": None if background else read_checkpoint_bytes(runner, numbers[-1]),
    }


def time_loads(runner: StandInRunner, number: int, rounds: int) -> dict[str, Any]:
    """Load checkpoint `number` into the model and optimizer `rounds` times as a resume does,
    verified first as a checkpoint listed afresh is; return the seconds of each."""
    seconds = []
    spent: dict[str, float] = {}
    with clocking([(sidecar, "verify_folder"), (sharded, "load_plain"), (sharded, "load_shards")], spent):
        for _ in range(rounds):
            checkpoint = checkpoints.find_checkpoint(runner.experiment.checkpoints_path, number, ("standard",))
            barrier()
            started = time.perf_counter()
            load_training_state(runner, checkpoint)
            barrier()
            seconds.append(time.perf_counter() - started)
    every = gather_objects(spent)
    remove_checkpoint(runner, number)
    return {"load_s": rounded(seconds), "spent_in_s_by_rank": [per_call(rank, rounds) for rank in every]}


def time_plain(runner: StandInRunner, precision: Precision, folder: str, rounds: int) -> dict[str, Any]:
    """What the same state costs with torch.save (fsynced) and torch.load(weights_only=True) +
    load_state_dict: each rank's shards in a file of its own, rank 0's with the plain state."""
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f"rank{runner.world.rank}.pt")
    state = collect_state(runner, precision, None, with_tensors=False)  # on every rank: it gathers the random generators
    others = state if runner.world.is_main else {}
    saves, loads = [], []
    for _ in range(rounds):
        barrier()
        started = time.perf_counter()
        save_plain(runner, others, path)
        barrier()
        saves.append(time.perf_counter() - started)
        started = time.perf_counter()
        load_plain(runner, path)
        barrier()
        loads.append(time.perf_counter() - started)
    total = sum(gather_objects(os.path.getsize(path)))
    os.remove(path)
    return {"save_s": rounded(saves), "load_s": rounded(loads), "checkpoint_bytes": total}


def save_plain(runner: StandInRunner, others: dict, path: str) -> None:
    """torch.save this rank's shards (and `others`) to `path`, then fsync, the least a
    crash-safe save does."""
    state = {"model": to_local(runner.model.state_dict()), "optimizer": to_local(runner.optimizer.state_dict()), **others}
    with open(path, "wb") as file:
        torch.save(state, file)
        file.flush()
        os.fsync(file.fileno())


def load_plain(runner: StandInRunner, path: str) -> None:
    """torch.load(weights_only=True) this rank's shards, then load_state_dict them into the
    sharded model and optimizer, each local tensor made a DTensor of the live one's layout."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    runner.model.load_state_dict(to_distributed(state["model"], runner.model.state_dict()))
    runner.optimizer.load_state_dict(to_distributed(state["optimizer"], runner.optimizer.state_dict()))


def to_local(value: Any) -> Any:
    """`value` with every DTensor replaced by this rank's shard of it."""
    if isinstance(value, DTensor):
        return value.to_local()
    if isinstance(value, dict):
        return {key: to_local(item) for key, item in value.items()}
    if isinstance(value, list):
        return [to_local(item) for item in value]
    return value


def to_distributed(value: Any, like: Any) -> Any:
    """`value` (from `to_local`) with each local shard made a DTensor laid out as its
    counterpart in `like`."""
    if isinstance(like, DTensor):
        return DTensor.from_local(value, like.device_mesh, like.placements, run_check=False, shape=like.shape, stride=like.stride())
    if isinstance(value, dict):
        return {key: to_distributed(item, like[key]) for key, item in value.items()}
    if isinstance(value, list):
        return [to_distributed(item, counterpart) for item, counterpart in zip(value, like)]
    return value


def remove_checkpoint(runner: StandInRunner, number: int) -> None:
    """Remove standard checkpoint `number` (rank 0), so that the disk holds one at a time."""
    if runner.world.is_main:
        checkpoints.find_checkpoint(runner.experiment.checkpoints_path, number, ("standard",)).remove()
    barrier()


def read_checkpoint_bytes(runner: StandInRunner, number: int) -> int:
    """The bytes of every file of checkpoint `number`, as its sidecar records them."""
    return int(checkpoints.find_checkpoint(runner.experiment.checkpoints_path, number, ("standard",)).sidecar["bytes"])


@contextlib.contextmanager
def clocking(functions: list[tuple[types.ModuleType, str]], spent: dict[str, float]) -> Iterator[None]:
    """Add the seconds of each call of module.function to spent[function]: torchexp looks
    them up in their module when it calls them, so its own code path is what is timed."""
    originals = [(module, name, getattr(module, name)) for module, name in functions]
    for module, name, original in originals:
        setattr(module, name, clocked(original, name, spent))
    try:
        yield
    finally:
        for module, name, original in originals:
            setattr(module, name, original)


def clocked(function: Callable, name: str, spent: dict[str, float]) -> Callable:
    def call(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            spent[name] = spent.get(name, 0.0) + time.perf_counter() - started

    return call


def slowest(every: list[dict[str, Any]], key: str) -> list[float]:
    """Round by round, the slower rank's seconds: the one the next collective waits for."""
    return rounded([max(values) for values in zip(*(rank[key] for rank in every))])


def per_call(spent: dict[str, float], calls: int) -> dict[str, float]:
    return {name: round(seconds / calls, 3) for name, seconds in spent.items()}


def rounded(values: list[float]) -> list[float]:
    return [round(value, 3) for value in values]


# ---- the summary


def summarize(memory: dict[str, list[dict[str, Any]]], measured: dict[str, Any]) -> dict[str, Any]:
    """Medians, ratios and goals of the three comparisons; memory by its worse rank."""
    peak = {strategy: max(rank["peak_rss_bytes"] for rank in ranks) for strategy, ranks in memory.items()}
    state = {strategy: max(rank["training_state_bytes"] for rank in ranks) for strategy, ranks in memory.items()}
    stall = {mode: common.median(measured[mode]["save_call_s"]) for mode in ("sync", "async")}
    totals = {mode: common.median([sum(parts) for parts in zip(*(measured[mode][key] for key in ROUND_PARTS))]) for mode in ("sync", "async")}
    size, plain = measured["sync"]["checkpoint_bytes"], measured["plain"]
    rates = {
        "torchexp_save": size / MB / stall["sync"],
        "torch_save": plain["checkpoint_bytes"] / MB / common.median(plain["save_s"]),
        "torchexp_load": size / MB / common.median(measured["load"]["load_s"]),
        "torch_load": plain["checkpoint_bytes"] / MB / common.median(plain["load_s"]),
    }
    ratios = {
        "peak_rss_fsdp_over_ddp": peak["fsdp"] / peak["ddp"],
        "training_state_fsdp_over_ddp": state["fsdp"] / state["ddp"],
        "stall_async_over_sync": stall["async"] / stall["sync"],
        "save_torchexp_over_torch": rates["torchexp_save"] / rates["torch_save"],
        "load_torchexp_over_torch": rates["torchexp_load"] / rates["torch_load"],
    }
    goals = {
        "peak_rss_fsdp_over_ddp <= 0.6": ratios["peak_rss_fsdp_over_ddp"] <= 0.6,
        "training_state_fsdp_over_ddp <= 0.6": ratios["training_state_fsdp_over_ddp"] <= 0.6,
        "stall_async_over_sync <= 0.1": ratios["stall_async_over_sync"] <= 0.1,
        "save_torchexp_over_torch >= 0.8": ratios["save_torchexp_over_torch"] >= 0.8,
        "load_torchexp_over_torch >= 0.8": ratios["load_torchexp_over_torch"] >= 0.8,
    }
    return {
        "parameters": measured["parameters"],
        "peak_rss_bytes": peak,
        "training_state_bytes": state,
        "stall_s": {mode: round(value, 3) for mode, value in stall.items()},
        "save_step_wait_s": {mode: round(value, 3) for mode, value in totals.items()},
        "checkpoint_bytes": size,
        "mb_per_s": {name: round(value, 1) for name, value in rates.items()},
        "ratios": {name: round(value, 3) for name, value in ratios.items()},
        "goals_met": goals,
        "load_avg_1": round(os.getloadavg()[0], 2),
    }


def print_memory(memory: dict[str, list[dict[str, Any]]], summary: dict[str, Any], mmap_threshold: int | None) -> None:
    allocator = "glibc as train sets it (ddp keeps freed memory, fsdp returns it)" if mmap_threshold is None else f"MALLOC_MMAP_THRESHOLD_={mmap_threshold}"
    print(f"\n| memory per rank, {allocator} | ddp | fsdp | fsdp/ddp |\n| --- | --- | --- | --- |")
    for rank in range(RANKS):
        ddp, fsdp = memory["ddp"][rank], memory["fsdp"][rank]
        for label, key in (("peak RSS", "peak_rss_bytes"), ("peak less RSS before the model", "training_state_bytes")):
            print(f"| rank {rank} {label} | {ddp[key] / MB:,.0f} MB | {fsdp[key] / MB:,.0f} MB | {fsdp[key] / ddp[key]:.2f}x |")
    steps = {strategy: common.median([value for rank in ranks for value in rank["step_seconds"]]) for strategy, ranks in memory.items()}
    print(f"| training step, median s | {steps['ddp']:.2f} | {steps['fsdp']:.2f} | {steps['fsdp'] / steps['ddp']:.2f}x |")
    ratios = summary["ratios"]
    print(f"\ngoal: fsdp at most 0.6x ddp; worse rank {ratios['peak_rss_fsdp_over_ddp']:.2f}x peak, {ratios['training_state_fsdp_over_ddp']:.2f}x less the RSS before the model")


def print_stall(measured: dict[str, Any], summary: dict[str, Any]) -> None:
    now, background = measured["sync"], measured["async"]
    print("\n| fsdp checkpoint, slower rank | sync | async | async/sync |\n| --- | --- | --- | --- |")
    print(f"| training thread in save(), median s | {summary['stall_s']['sync']:.3f} | {summary['stall_s']['async']:.3f} | {summary['ratios']['stall_async_over_sync']:.3f}x |")
    print(f"| each save(), s | {now['save_call_s']} | {background['save_call_s']} | |")
    print(f"| the training step after it, s | {now['step_after_save_s']} | {background['step_after_save_s']} | |")
    print(f"| then waiting for the save in flight, s | {now['wait_for_save_in_flight_s']} | {background['wait_for_save_in_flight_s']} | |")
    totals = summary["save_step_wait_s"]
    print(f"| all three, median s | {totals['sync']:.2f} | {totals['async']:.2f} | {totals['async'] / totals['sync']:.2f}x |")
    print("\ngoal: async at most 0.1x sync")


def print_throughput(measured: dict[str, Any], summary: dict[str, Any]) -> None:
    rates, ratios, plain = summary["mb_per_s"], summary["ratios"], measured["plain"]
    print(f"\n| checkpoint of {summary['checkpoint_bytes'] / MB:,.0f} MB (torch.save: {plain['checkpoint_bytes'] / MB:,.0f} MB) | torchexp MB/s | torch.save, torch.load MB/s | ratio |")
    print("| --- | --- | --- | --- |")
    print(f"| save | {rates['torchexp_save']:,.0f} | {rates['torch_save']:,.0f} | {ratios['save_torchexp_over_torch']:.2f}x |")
    print(f"| load | {rates['torchexp_load']:,.0f} | {rates['torch_load']:,.0f} | {ratios['load_torchexp_over_torch']:.2f}x |")
    print("\ngoal: torchexp at least 0.8x\n\nwhere torchexp's time goes, seconds per call:")
    for label, spent in (("sync save", measured["sync"]), ("async save", measured["async"]), ("load", measured["load"])):
        for rank, times in enumerate(spent["spent_in_s_by_rank"]):
            print(f"  {label}, rank {rank}: " + ", ".join(f"{name} {seconds}" for name, seconds in sorted(times.items())))


if __name__ == "__main__":
    main()
