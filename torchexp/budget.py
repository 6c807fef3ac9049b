"""The budget: how far `train` goes, in epochs or in optimizer steps, and the one notion of
progress every record speaks.

An experiment trains by epochs unless its configuration sets `trainer.max_steps`; the unit
is fixed at `init` with the configuration. Training stops at *points*: under epochs, each
epoch's end; under steps, every `trainer.validate_every_steps` steps and the budget's last
step, which may fall in the middle of an epoch. At a point torchexp validates, logs the
train and validation metrics, writes a standard checkpoint and asks the search's pruner;
checkpoint file names, metrics.jsonl, TensorBoard, MLflow, `info`, `compare`, `verify` and
search rungs all count in the unit (`3.checkpoint.pt` is epoch 3, or step 3 of a run by
steps). Nothing here imports torch.
"""

import dataclasses
from typing import Any

from torchexp.errors import ConfigError, ExperimentError

EPOCH = "epoch"
STEP = "step"


def unit_of(config: dict) -> str:
    """ "step" when a configuration sets trainer.max_steps, else "epoch"."""
    trainer = config.get("trainer") if isinstance(config, dict) else None
    return STEP if isinstance(trainer, dict) and trainer.get("max_steps") is not None else EPOCH


def describe_count(count: int, unit: str) -> str:
    """ "1 epoch", "300 steps"."""
    return f"{count} {unit}{'' if count == 1 else 's'}"


@dataclasses.dataclass(frozen=True)
class Budget:
    """Where training stops, and where its points lie.

    Attributes:
        unit: "epoch" or "step" (one optimizer step: a group of trainer.grad_accumulation batches).
        limit: the epochs or steps to reach, counting those done.
        every: steps between points under "step" (trainer.validate_every_steps); None:
            the budget's end is the only point.
    """

    unit: str
    limit: int
    every: int | None = None

    def done(self, counters: dict[str, int]) -> int:
        """Epochs or steps done."""
        return counters[self.unit]

    def reached(self, counters: dict[str, int]) -> bool:
        return self.done(counters) >= self.limit

    def is_step_point(self, step: int) -> bool:
        """Whether step `step` ends a point (under "step"; epoch ends are the points otherwise)."""
        if self.unit != STEP:
            return False
        return step >= self.limit or (self.every is not None and step % self.every == 0)


def read_limit(config: dict, unit: str, where: str) -> int:
    """trainer.max_epochs (unit "epoch") or trainer.max_steps of a configuration, checked.

    Raises:
        ExperimentError: the trainer section does not hold a whole number there; `where`
            names the configuration.
    """
    trainer = config.get("trainer")
    key = f"max_{unit}s"
    value = trainer.get(key) if isinstance(trainer, dict) else None
    if not isinstance(value, int) or isinstance(value, bool):
        raise ExperimentError(f"{where} has no valid trainer.{key}: {value!r}")
    return value


def read_budget(config: Any, limit: int | None, flag: str | None) -> tuple[Budget, str]:
    """The budget of a run, and where its limit comes from ("--max-steps", "trainer.max_epochs"...).

    Args:
        config: the experiment's `Config`.
        limit: `--max-epochs` or `--max-steps`, or None for the configuration's.
        flag: which of the two `limit` came from ("--max-epochs" or "--max-steps"), or None.

    Raises:
        ConfigError: the flag's unit is not the experiment's.
    """
    trainer = config.get("trainer")
    unit = STEP if trainer.get("max_steps") is not None else EPOCH
    every = trainer.get("validate_every_steps")
    expected = f"--max-{unit}s"
    if flag is not None and flag != expected:
        which = "steps (trainer.max_steps)" if unit == STEP else "epochs (trainer.max_steps is null)"
        raise ConfigError(f"this experiment trains by {which}: use {expected}, not {flag}")
    if limit is None:
        return Budget(unit, trainer[f"max_{unit}s"], every), f"trainer.max_{unit}s"
    return Budget(unit, limit, every), expected
