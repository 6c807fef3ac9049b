"""Trackers: the services that follow experiments beside the experiment folder.

`base` declares what a tracker receives; `tensorboard` is the one always on (TensorBoard and
metrics.jsonl); `plugins` finds the others through the `torchexp.trackers` entry point
group; `fanout` sends each event to every tracker turned on. MLflow's lives with the mirror
(`torchexp.mirror.tracker`), Weights & Biases' in `wandb_run`.
"""

from torchexp.trackers.base import RunInfo, Tracker

__all__ = ["RunInfo", "Tracker"]
