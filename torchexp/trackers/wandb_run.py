"""Weights & Biases' tracker: one W&B run per experiment, across every resume.

Turned on by `--tracker wandb` (or TORCHEXP_TRACKERS=wandb), with `torchexp[wandb]`
installed. W&B's own settings apply: WANDB_MODE (`offline` writes the run under the
experiment folder's `wandb/`, for `wandb sync` to upload later), WANDB_PROJECT (default:
the project's package, e.g. `mnist_classifier`), WANDB_ENTITY, WANDB_DIR (default: the
experiment folder).

The run's id is kept in the experiment folder (wandb.json), so that a resume, also after
a SIGKILL, continues the same run. W&B cannot take a step back, so training's numbers are
held until a checkpoint covers them (`torchexp.trackers.base.is_covered`): what a killed
run logged after its last checkpoint is never sent, and the resumed run sends it once.
W&B's own step (`_step`) is counted in wandb.json too: an offline run resumed in a new
process would start it at 0 again, and the server drops rows whose step goes back.

Known limit: W&B writes what it is sent every 0.1 s (`FLUSH_INTERVAL_S`); a SIGKILL within
that time of a checkpoint loses that checkpoint's rows from W&B (the experiment folder keeps
them: metrics.jsonl, TensorBoard).
"""

import logging
import os
from typing import Any

from torchexp.budget import unit_of
from torchexp.extras import require_extra
from torchexp.files import read_json, write_json_atomic
from torchexp.trackers.base import FINISHED, RunInfo, Tracker, is_covered

STATE_FILE = "wandb.json"
EXIT_CODES = {FINISHED: 0}  # any other status ends the W&B run as failed (exit code 1)
# How often W&B writes what it was sent to the run's .wandb file (its default: 15 s). A kill
# loses what it has not written, and the resumed run will not send what a checkpoint covers.
FLUSH_INTERVAL_S = 0.1

Pending = tuple[str, int, dict[str, float], dict[str, Any]]  # log_metrics' arguments: kind, step, metrics, where


class WandbTracker(Tracker):
    """Sends each experiment to one W&B run: config, metrics by epoch or step, tests, releases.

    Args:
        logger: the command's logger.

    Raises:
        MissingExtraError: wandb is not installed.
    """

    name = "wandb"

    def __init__(self, logger: logging.Logger, **options: str):
        super().__init__(logger, **options)
        require_extra("wandb", "the wandb tracker (--tracker wandb)")
        self.run: Any = None
        self.pending: list[Pending] = []
        self.exit_code = 0
        self.state_path = ""
        self.next_step = 0  # W&B's step of the next row

    def start(self, run: RunInfo) -> None:
        """Open the experiment's W&B run, created on the first command, resumed after."""
        import wandb

        self.state_path = os.path.join(run.folder, STATE_FILE)
        state = read_json(self.state_path, "the W&B run state") if os.path.isfile(self.state_path) else {}
        self.next_step = state.get("next_step", 0)
        package = run.definition.get("classes", {}).get("runner", "").partition(":")[0].split(".")[0]
        self.run = wandb.init(
            project=os.environ.get("WANDB_PROJECT") or package or None,
            name=run.name,
            id=state.get("run_id"),
            resume="allow",
            dir=os.environ.get("WANDB_DIR") or run.folder,
            group=run.group,
            job_type=run.command,
            settings=wandb.Settings(console="off", silent=True, x_transaction_log_flush_interval=FLUSH_INTERVAL_S),
        )
        self.save_state(self.next_step)
        # Each kind of number has its own x axis: W&B's own step only counts what was sent.
        self.run.define_metric("step")
        self.run.define_metric("epoch")
        self.run.define_metric("iteration/*", step_metric="step")
        for kind in ("train", "validation"):
            self.run.define_metric(f"{kind}/*", step_metric=unit_of(run.definition["config"]))
        self.run.define_metric("test/*", step_metric="epoch")

    def log_hyperparameters(self, hyperparameters: dict[str, Any]) -> None:
        self.run.config.update(hyperparameters, allow_val_change=True)

    def log_metrics(self, kind: str, step: int, metrics: dict[str, float], where: dict[str, Any]) -> None:
        self.pending.append((kind, step, metrics, where))

    def log_checkpoint(self, step: int, epoch: int) -> None:
        """Send what the checkpoint of (`step`, `epoch`) covers, in the order it was logged."""
        covered: list[Pending] = []
        pending, self.pending = self.pending, []
        for entry in pending:
            (covered if is_covered(entry[0], entry[1], entry[3], step, epoch) else self.pending).append(entry)
        rows = [
            {axis_of(kind, where): at, **{f"{kind}/{name}": value for name, value in metrics.items()}}
            for kind, at, metrics, where in covered
        ]
        self.log_rows(rows)

    def resume(self, step: int, epoch: int) -> None:
        self.pending = []

    def finish(self, status: str) -> None:
        """What no checkpoint covers is dropped: the run resumed from the last one logs it again."""
        self.pending = []
        self.exit_code = EXIT_CODES.get(status, 1)

    def log_test(self, epoch: int, checkpoint: str, results: dict[str, Any]) -> None:
        numbers = {f"test/{key}": value for key, value in results.items() if isinstance(value, (int, float))}
        self.log_rows([{"epoch": epoch, **numbers}])
        self.run.summary.update({**numbers, "test/checkpoint": checkpoint})

    def log_artifact(self, path: str, name: str) -> None:
        self.run.save(path, base_path=os.path.dirname(path), policy="now")

    def log_release(self, epoch: int, path: str) -> None:
        self.run.summary.update({"release/epoch": epoch, "release/checkpoint": os.path.basename(path)})

    def log_rows(self, rows: list[dict[str, Any]]) -> None:
        """Log `rows` at the next W&B steps, counted in wandb.json first: a kill in between
        leaves a gap in the steps, never a step used twice."""
        first = self.next_step
        self.save_state(first + len(rows))
        for offset, row in enumerate(rows):
            self.run.log(row, step=first + offset, commit=True)  # W&B holds a row open for more keys otherwise

    def save_state(self, next_step: int) -> None:
        self.next_step = next_step
        write_json_atomic(self.state_path, {"run_id": self.run.id, "next_step": next_step})

    def close(self) -> None:
        if self.run is not None:
            self.run.finish(exit_code=self.exit_code)
            self.run = None


def axis_of(kind: str, where: dict[str, Any]) -> str:
    """The x axis of a `log_metrics` event: "step" for iterations and an experiment trained
    by steps, else "epoch"."""
    return "step" if kind == "iteration" or where.get("unit") == "step" else "epoch"
