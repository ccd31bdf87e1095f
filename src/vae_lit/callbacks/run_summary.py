"""A run's result in one small file (`run_summary.json` in the run dir): best validation loss,
final KL, epochs done, and how it ended. A sweep's summary table is built from these files, so it
works with every launcher, including jobs that ran on other machines.

The file is replaced whole (temporary name, then rename), so a kill or a full disk leaves the
previous summary, never an empty one. A run that fails before training starts leaves an earlier
run's summary alone.
"""

import json
import logging
import math
from pathlib import Path
from typing import Any

from pytorch_lightning import Callback, LightningModule, Trainer
from pytorch_lightning.utilities import rank_zero_only
from pytorch_lightning.utilities.exceptions import SIGTERMException

from vae_lit.persistence.atomic_write import write_text_atomic

log = logging.getLogger(__name__)

RUN_SUMMARY_FILE = "run_summary.json"
TERMINATED = "terminated (SIGTERM)"


class UnreadableRunSummary(Exception):
    """A run_summary.json that exists but does not parse (a disk that filled up, a hand edit)."""


class RunSummary(Callback):
    """Tracks the best `monitor` value (restored on resume) and writes the summary at the end."""

    def __init__(self, output_dir: str | Path, monitor: str = "val/loss"):
        self.path = Path(output_dir) / RUN_SUMMARY_FILE
        self.monitor = monitor
        self.best: float | None = None
        self.started = False

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.started = True

    def on_test_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.started = True

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        value = trainer.callback_metrics.get(self.monitor)
        if trainer.sanity_checking or value is None or not math.isfinite(float(value)):
            return
        self.best = float(value) if self.best is None else min(self.best, float(value))

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.write(trainer, "finished")

    def on_exception(
        self, trainer: Trainer, pl_module: LightningModule, exception: BaseException
    ) -> None:
        if not self.started and self.path.is_file():
            return  # failed before training: the earlier run's summary stays
        if isinstance(exception, SIGTERMException):
            status = TERMINATED
        else:
            status = f"failed: {str(exception) or type(exception).__name__}"
        try:
            self.write(trainer, status)
        except OSError as exc:  # a full disk: the run stops with that error, not this one
            log.warning(f"Could not write {self.path}: {exc.strerror}")

    @rank_zero_only
    def write(self, trainer: Trainer, status: str) -> None:
        kl = trainer.callback_metrics.get("val/kl")
        summary = {
            f"best_{self.monitor}": self.best,
            "final_val/kl": None if kl is None else float(kl),
            "epochs": trainer.current_epoch,
            "global_step": trainer.global_step,
            "status": status,
        }
        write_text_atomic(self.path, json.dumps(summary, indent=2) + "\n")

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best = state_dict.get("best")


def record_failure(run_dir: str | Path, reason: str) -> None:
    """Mark a run failed in its summary (a sweep job that stopped before or during training),
    keeping what the run wrote itself when that already says how it failed."""
    try:
        summary = read_run_summary(run_dir) or {}
    except UnreadableRunSummary:
        summary = {}
    if str(summary.get("status", "")).startswith(("failed", TERMINATED)):
        return
    summary["status"] = f"failed: {reason}"
    try:
        write_text_atomic(Path(run_dir) / RUN_SUMMARY_FILE, json.dumps(summary, indent=2) + "\n")
    except OSError as exc:  # a full disk: the console line still names the failure
        log.warning(f"Could not write {Path(run_dir) / RUN_SUMMARY_FILE}: {exc.strerror}")


def read_run_summary(run_dir: str | Path) -> dict[str, Any] | None:
    """The summary a run left in `run_dir`, or None when it wrote none (it crashed hard). Raises
    UnreadableRunSummary, naming the file and why, when it cannot be read."""
    path = Path(run_dir) / RUN_SUMMARY_FILE
    if not path.is_file():
        return None
    try:
        summary = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        reason = "empty file" if path.stat().st_size == 0 else str(exc)
        raise UnreadableRunSummary(f"{path} is unreadable ({reason})") from exc
    if not isinstance(summary, dict):
        raise UnreadableRunSummary(f"{path} is unreadable (not a JSON object)")
    return summary
