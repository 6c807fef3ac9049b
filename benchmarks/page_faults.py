"""The page faults that keep_freed_memory saves: training steps of the MNIST example's CNN,
and 64 MiB blocks (above glibc's highest mmap threshold, as a validation batch of 1,000
images is), each counted in a fresh process with glibc's defaults and with the memory kept,
side by side.

    python benchmarks/page_faults.py
"""

import os
import subprocess
import sys

from common import emit, machine, make_parser
from torchexp import memory

# Runs 20 training steps of the MNIST example's CNN on the CPU, then prints the minor page
# faults they took: the activations a step frees are what the next step allocates again.
FAULT_COUNTER = """
import resource, sys, torch
from mnist_classifier.model import CNN
from torchexp.memory import keep_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "keep" else False
torch.manual_seed(0)
model = CNN()
optimizer = torch.optim.Adadelta(model.parameters())
inputs, targets = torch.randn(64, 1, 28, 28), torch.randint(0, 10, (64,))
def step():
    optimizer.zero_grad(set_to_none=True)
    torch.nn.functional.nll_loss(model(inputs), targets).backward()
    optimizer.step()
step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    step()
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""

# Allocates, fills and frees a 64 MiB tensor, above the highest mmap threshold glibc
# accepts (32 MiB) as one validation batch of 1,000 images is, 12 times to settle the heap
# (small allocations between the blocks move the first few; measured here, 3 left up to 5 of
# the next 9 faulting), then prints the minor page faults that 9 more took.
LARGE_BLOCK_FAULT_COUNTER = """
import resource, sys, torch
from torchexp.memory import keep_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "keep" else False
for _ in range(12):
    torch.empty(16 * 2**20).fill_(1.0)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(9):
    torch.empty(16 * 2**20).fill_(1.0)
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def count_faults(program: str, mode: str) -> int:
    """The minor page faults `program` counts in a process of its own, "keep" or "default"."""
    env = {key: value for key, value in os.environ.items() if key not in memory.USER_SETTINGS}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [os.path.dirname(os.path.dirname(os.path.abspath(__file__))), env.get("PYTHONPATH")]))
    result = subprocess.run([sys.executable, "-c", program, mode], capture_output=True, text=True, env=env, check=True)
    return int(result.stdout.split()[1])


def main() -> None:
    parser = make_parser(__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="processes per variant (default: %(default)s)")
    args = parser.parse_args()
    emit({"machine": machine()})
    if memory.find_mallopt() is None:
        emit({"skipped": "the C library is not glibc: keep_freed_memory does nothing here"})
        return
    for name, program in (("training_steps_20", FAULT_COUNTER), ("blocks_64mib_9", LARGE_BLOCK_FAULT_COUNTER)):
        default = [count_faults(program, "default") for _ in range(args.repeats)]
        kept = [count_faults(program, "keep") for _ in range(args.repeats)]
        emit({"workload": name, "faults_default": default, "faults_kept": kept, "ratio_kept_to_default": round(min(kept) / max(min(default), 1), 4)})


if __name__ == "__main__":
    main()
