"""The MNIST classifier's command line, its training held after epoch 1's checkpoint until
the file $TORCHEXP_TEST_GATE exists: a test does something to the world while training
waits (kills a server), instead of racing epochs that may end first."""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torchexp  # noqa: E402
from mnist_classifier.data import MNISTClassifierData  # noqa: E402
from mnist_classifier.runner import MNISTClassifierRunner  # noqa: E402

GATE_TIMEOUT_S = 120


class GatedRunner(MNISTClassifierRunner):
    def train_before_epoch_tasks(self, device):
        gate = os.environ.get("TORCHEXP_TEST_GATE")
        deadline = time.monotonic() + GATE_TIMEOUT_S
        while gate and self.counters["epoch"] == 1 and not os.path.exists(gate) and time.monotonic() < deadline:
            time.sleep(0.05)
        super().train_before_epoch_tasks(device)


if __name__ == "__main__":
    torchexp.make_cli(MNISTClassifierData, GatedRunner)()
