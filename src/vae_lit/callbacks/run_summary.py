"""A run's result in one small file (`run_summary.json` in the run dir): best validation loss,
final KL, epochs done, and how it ended. A sweep's summary table is built from these files, so it
works with every launcher, including jobs that ran on other machines.
"""

import json
import math
from pathlib import Path
from typing import Any

from pytorch_lightning import Callback, LightningModule, Trainer
from pytorch_lightning.utilities import rank_zero_only

RUN_SUMMARY_FILE = "run_summary.json"


class RunSummary(Callback):
    """Tracks the best `monitor` value (restored on resume) and writes the summary at the end."""

    def __init__(self, output_dir: str | Path, monitor: str = "val/loss"):
        self.path = Path(output_dir) / RUN_SUMMARY_FILE
        self.monitor = monitor
        self.best: float | None = None

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
        self.write(trainer, f"failed: {exception}")

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
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(summary, indent=2) + "\n")

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best = state_dict.get("best")


def read_run_summary(run_dir: str | Path) -> dict[str, Any] | None:
    """The summary a run left in `run_dir`, or None when it wrote none (it crashed hard)."""
    path = Path(run_dir) / RUN_SUMMARY_FILE
    return json.loads(path.read_text()) if path.is_file() else None
