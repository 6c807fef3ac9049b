"""The cost of crash-safe checkpoints: seconds per write, plain `torch.save` vs torchexp.

The state is what a training checkpoint of the MNIST `cnn` holds after one Adadelta step:
the model, the optimizer's two buffers per parameter, the step scheduler, every RNG state,
counters and history (about 14 MB).

    plain: torch.save(state, path), as the original Skeltorch does; nothing is fsynced, so
           the bytes may still be in the page cache when it returns.
    safe:  torchexp.checkpoints.save_checkpoint: a temporary file, fsync, rename, folder
           fsync, then the SHA-256 of the file and its JSON record, written the same way.

Both write a new file each time (as each epoch does), in the same folder, interleaved
(alternating which goes first) so that drifts in load hit both alike. Prints one JSON line
per repetition, then a summary line with medians and the ratio:

    .venv/bin/python benchmarks/checkpoint_safety.py --repeats 10
"""

import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402  (after the path set-up above)

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from mnist_classifier.model import build_model  # noqa: E402
from torchexp import checkpoints  # noqa: E402
from torchexp.rng import capture_rng_states  # noqa: E402
from torchexp.files import hash_file  # noqa: E402


def build_state() -> dict:
    """A training checkpoint's state: the cnn and its Adadelta state after one step."""
    torch.manual_seed(0)
    model = build_model("cnn")
    optimizer = torch.optim.Adadelta(model.parameters(), lr=1.0)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.7)
    images, labels = torch.randn(64, 1, 28, 28), torch.randint(0, 10, (64,))
    F.nll_loss(model(images), labels).backward()
    optimizer.step()
    return {
        "format": 1,
        "counters": {"epoch": 1, "iteration": 0, "step": 1},
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": None,
        "rng": capture_rng_states(),
        "history": {"train": [{"loss": 0.3, "accuracy": 0.9}], "validation": [{"loss": 0.1, "accuracy": 0.97}]},
        "partial": None,
        "others": {},
    }


def time_plain(state: dict, folder: str, repeat: int) -> float:
    path = os.path.join(folder, f"plain-{repeat}.pt")
    started = time.perf_counter()
    torch.save(state, path)
    return time.perf_counter() - started


def time_safe(state: dict, folder: str, repeat: int) -> float:
    summary = {"iteration": 0, "metrics": {"train": state["history"]["train"][-1]}}
    started = time.perf_counter()
    checkpoints.save_checkpoint(folder, repeat + 1, "standard", state, summary)
    return time.perf_counter() - started


def main() -> None:
    parser = common.make_parser(__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10, help="writes of each kind (default: %(default)s)")
    parser.add_argument(
        "--folder",
        default=os.path.join(common.REPO, "experiments"),
        help="where to write, on the file system experiments live on (default: %(default)s)",
    )
    args = parser.parse_args()
    state = build_state()
    os.makedirs(args.folder, exist_ok=True)
    folder = tempfile.mkdtemp(dir=args.folder, prefix=".checkpoint-safety-")
    try:
        time_plain(state, folder, -1)  # warm-up: first-call costs of the pickler and zip writer
        size = os.path.getsize(os.path.join(folder, "plain--1.pt"))
        os.remove(os.path.join(folder, "plain--1.pt"))
        plain, safe, hashing = [], [], []
        for repeat in range(args.repeats):
            order = [time_plain, time_safe] if repeat % 2 == 0 else [time_safe, time_plain]
            figures = {function.__name__: function(state, folder, repeat) for function in order}
            plain.append(figures["time_plain"])
            safe.append(figures["time_safe"])
            path = os.path.join(folder, checkpoints.make_filename(repeat + 1, "standard"))
            started = time.perf_counter()
            hash_file(path)
            hashing.append(time.perf_counter() - started)
            common.emit({"repeat": repeat, "plain_s": round(plain[-1], 5), "safe_s": round(safe[-1], 5), "sha256_s": round(hashing[-1], 5)})
            for name in os.listdir(folder):  # keep one file of each kind at a time
                os.remove(os.path.join(folder, name))
        common.emit(
            {
                "benchmark": "checkpoint_safety",
                "model": "cnn",
                "optimizer": "adadelta",
                "checkpoint_bytes": size,
                "repeats": args.repeats,
                "plain_median_s": round(common.median(plain), 5),
                "safe_median_s": round(common.median(safe), 5),
                "ratio_safe_to_plain": round(common.median(safe) / common.median(plain), 2),
                "plain_min_s": round(min(plain), 5),
                "safe_min_s": round(min(safe), 5),
                "sha256_median_s": round(common.median(hashing), 5),
                "folder": args.folder,
                "machine": common.machine(),
            }
        )
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
