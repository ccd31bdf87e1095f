"""The table at the end of a multirun: one row per job, overrides -> best val loss, final KL,
test metrics, IWAE NLL, wall time and device (`eval.json`), epochs, status, run dir. Printed,
and written as `summary.csv` and `summary.md` in the sweep dir.

A Hydra callback (registered in `configs/hydra/default.yaml`). It reads what each job left on
disk (`.hydra/overrides.yaml`, `run_summary.json`, `test_metrics.json`, `eval.json`), so it
works the same for jobs run in this process, in joblib workers or on SLURM nodes.
"""

import csv
import json
import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from vae_lit.callbacks.run_summary import UnreadableRunSummary, read_run_summary
from vae_lit.persistence.atomic_write import atomic_write, write_text_atomic
from vae_lit.runs.run_report import read_test_metrics

log = logging.getLogger(__name__)

# Each job's test metrics (run_report's test_metrics.json) -> column; empty where a job has none
# (not tested, no factors for MIG, not sprites for the foreground IoU).
TEST_COLUMNS = {
    "test neg ELBO": "test/loss",
    "test bits/dim": "test/bits_per_dim",
    "likelihood_kind": "likelihood_kind",  # discrete: bits/dim are true code lengths
    "test MSE": "test/mse",
    "test PSNR": "test/psnr",
    "active units": "test/active_units",
    "foreground IoU": "test/foreground_iou",
    "MIG": "test/mig",
}
# Each job's eval.json (written by `eval_after_train`) -> column; empty where a job has none.
EVAL_FILE = "eval.json"
EVAL_COLUMNS = {
    "IWAE NLL": "iwae_nll",  # nats per image, the tighter estimate of -log p(x)
    "IWAE k": "iwae_k",
    "IWAE bits/dim": "bits_per_dim",  # IWAE NLL / (C*H*W*ln 2), of the kind in likelihood_kind
    "train+test s": "train_wall_s",  # wall time of the job before its evaluation
    "eval s": "eval_wall_s",
    "device": "device",
}
COLUMNS = [
    "job",
    "overrides",
    "best val/loss",
    "final val/kl",
    *TEST_COLUMNS,
    "MIG per factor",
    *EVAL_COLUMNS,
    "epochs",
    "status",
    "run dir",
]


def job_dirs(sweep_dir: Path) -> list[Path]:
    """Job dirs of a sweep (those holding Hydra's `.hydra/overrides.yaml`), in job order."""
    dirs = [p.parent.parent for p in sweep_dir.glob("*/.hydra/overrides.yaml")]
    return sorted(
        dirs, key=lambda p: (not p.name.isdigit(), int(p.name) if p.name.isdigit() else 0)
    )


def summary_rows(sweep_dir: Path) -> list[dict[str, Any]]:
    """One row per job. Only overrides that differ between jobs are shown: they name the job."""
    dirs = job_dirs(sweep_dir)
    overrides = [read_overrides(d) for d in dirs]
    shared = set.intersection(*map(set, overrides)) if len(overrides) > 1 else set()
    rows = []
    for run_dir, job_overrides in zip(dirs, overrides, strict=True):
        try:
            summary = read_run_summary(run_dir) or {}
        except UnreadableRunSummary as exc:  # one damaged job must not cost the sweep its table
            log.warning(f"Sweep summary: skipping {exc}")
            summary = {"status": f"skipped: {exc}"}
        rows.append(
            {
                "job": run_dir.name,
                "overrides": " ".join(o for o in job_overrides if o not in shared),
                "best val/loss": summary.get("best_val/loss"),
                "final val/kl": summary.get("final_val/kl"),
                **test_columns(run_dir),
                **eval_columns(run_dir),
                "epochs": summary.get("epochs"),
                "status": summary.get("status", "no run_summary.json: see the job's log"),
                "run dir": str(run_dir),
            }
        )
    return rows


def read_overrides(run_dir: Path) -> list[str]:
    """A job's command-line overrides; none, with a warning, when its file does not parse."""
    path = run_dir / ".hydra" / "overrides.yaml"
    try:
        return [str(o) for o in OmegaConf.load(path)]
    except Exception as exc:  # OSError, YAML errors, a file that is not a list
        log.warning(f"Sweep summary: skipping unreadable {path} ({exc})")
        return []


def test_columns(run_dir: Path) -> dict[str, Any]:
    """The TEST_COLUMNS cells of one job (and MIG per factor, `colour 0.46, y 0.16, ...`); a
    tested job without a kind ran a continuous one."""
    tested = read_test_metrics(run_dir)
    if not tested:
        return dict.fromkeys([*TEST_COLUMNS, "MIG per factor"])
    cells = {column: tested.get(key) for column, key in TEST_COLUMNS.items()}
    cells["likelihood_kind"] = cells["likelihood_kind"] or "continuous"
    if cells["active units"] is not None:
        cells["active units"] = int(cells["active units"])
    per_factor = [
        f"{key.removeprefix('test/mig/')} {value:.2f}"
        for key, value in tested.items()
        if key.startswith("test/mig/")
    ]
    cells["MIG per factor"] = ", ".join(per_factor) or None
    return cells


def eval_columns(run_dir: Path) -> dict[str, Any]:
    """The EVAL_COLUMNS cells of one job, from its eval.json; empty when it has none."""
    try:
        evaluated = json.loads((run_dir / EVAL_FILE).read_text())
    except (OSError, ValueError):  # not evaluated, or a damaged file: the table goes on
        return dict.fromkeys(EVAL_COLUMNS)
    return {column: evaluated.get(key) for column, key in EVAL_COLUMNS.items()}


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
    with atomic_write(sweep_dir / "summary.csv", "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    write_text_atomic(sweep_dir / "summary.md", markdown_table(rows))
    return rows


class SweepSummary(Callback):
    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if not sweep_dir.is_dir():
            return
        rows = write_summary(sweep_dir)
        if rows:
            print(f"\nSweep summary ({sweep_dir}/summary.md):\n{markdown_table(rows)}", flush=True)
        failed = [row for row in rows if not str(row["status"]).startswith("finished")]
        if failed:
            task = OmegaConf.select(config, "task_name") or "train"
            logs = ", ".join(f"job {row['job']} ({row['run dir']}/{task}.log)" for row in failed)
            print(f"vae-lit: {len(failed)} of {len(rows)} jobs did not finish: {logs}", flush=True)
