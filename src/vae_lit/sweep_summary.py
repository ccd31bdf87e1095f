"""The table at the end of a multirun: one row per job, overrides -> best val loss, final KL,
epochs, status, run dir. Printed, and written as `summary.csv` and `summary.md` in the sweep dir.

A Hydra callback (registered in `configs/hydra/default.yaml`). It reads what each job left on
disk (`.hydra/overrides.yaml` and `run_summary.json`), so it works the same for jobs run in this
process, in joblib workers or on SLURM nodes.
"""

import csv
import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from vae_lit.callbacks.run_summary import read_run_summary

log = logging.getLogger(__name__)

COLUMNS = ["job", "overrides", "best val/loss", "final val/kl", "epochs", "status", "run dir"]


def job_dirs(sweep_dir: Path) -> list[Path]:
    """Job dirs of a sweep (those holding Hydra's `.hydra/overrides.yaml`), in job order."""
    dirs = [p.parent.parent for p in sweep_dir.glob("*/.hydra/overrides.yaml")]
    return sorted(
        dirs, key=lambda p: (not p.name.isdigit(), int(p.name) if p.name.isdigit() else 0)
    )


def summary_rows(sweep_dir: Path) -> list[dict[str, Any]]:
    """One row per job. Only overrides that differ between jobs are shown: they name the job."""
    dirs = job_dirs(sweep_dir)
    overrides = [list(OmegaConf.load(d / ".hydra" / "overrides.yaml")) for d in dirs]
    shared = set.intersection(*map(set, overrides)) if len(overrides) > 1 else set()
    rows = []
    for run_dir, job_overrides in zip(dirs, overrides, strict=True):
        summary = read_run_summary(run_dir) or {}
        rows.append(
            {
                "job": run_dir.name,
                "overrides": " ".join(o for o in job_overrides if o not in shared),
                "best val/loss": summary.get("best_val/loss"),
                "final val/kl": summary.get("final_val/kl"),
                "epochs": summary.get("epochs"),
                "status": summary.get("status", "no run_summary.json: see the job's log"),
                "run dir": str(run_dir),
            }
        )
    return rows


def markdown_table(rows: list[dict[str, Any]]) -> str:
    def cell(value: Any) -> str:
        text = f"{value:.4f}" if isinstance(value, float) else "" if value is None else str(value)
        return text.replace("|", "\\|")

    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(cell(row[c]) for c in COLUMNS) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def write_summary(sweep_dir: Path) -> list[dict[str, Any]]:
    """Write `summary.csv` and `summary.md` into `sweep_dir`; return the rows."""
    rows = summary_rows(sweep_dir)
    with open(sweep_dir / "summary.csv", "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    (sweep_dir / "summary.md").write_text(markdown_table(rows))
    return rows


class SweepSummary(Callback):
    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if not sweep_dir.is_dir():
            return
        rows = write_summary(sweep_dir)
        if rows:
            print(f"\nSweep summary ({sweep_dir}/summary.md):\n{markdown_table(rows)}", flush=True)
