"""One run at a time in a run dir, no silent overwrite of an earlier run, and a start that fails
leaves the dir as it was.

- A lock (`.vae-lit.lock`) while a run uses its dir: a second run started into the same dir stops
  with one line instead of interleaving `metrics.csv` and the pictures.
- A plain rerun (no `resume`) into a dir that holds a run's checkpoints, pictures or metrics is
  refused with one line: `resume=auto` continues that run, another `hydra.run.dir` starts anew.
- Hydra writes `.hydra/` (the command's config) into the run dir before the task starts. The
  `RunDirGuard` Hydra callback takes the lock and keeps a copy of the old `.hydra/` first; when the
  run then fails before training starts (a typo in `resume=auto` on a finished run), the copy is
  put back. `RunStarted` marks the point of no return: the data are set up and training begins.
"""

import logging
import os
import sys
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback as HydraCallback
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning import Callback, LightningModule, Trainer
from pytorch_lightning.utilities import rank_zero_only

from vae_lit.errors import UserError
from vae_lit.persistence.atomic_write import remove_stale_partials, write_bytes_atomic

log = logging.getLogger(__name__)

LOCK_FILE = ".vae-lit.lock"
HYDRA_SUBDIR = ".hydra"
# What a run leaves in its dir, anywhere below it: finding any of these means the dir holds a run.
RUN_OUTPUTS = ("run_summary.json", "*.ckpt", "metrics.csv", "*.png", "*.gif")
SHOWN = 3  # outputs named in the refusal


class RunDirClaim:
    """The lock on one run dir, and the `.hydra/` files it held before this command."""

    def __init__(self, run_dir: Path):
        self.run_dir = run_dir
        self.lock = FileLock(run_dir / LOCK_FILE)
        self.saved_hydra: dict[str, bytes] = {}
        self.started = False

    def acquire(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        try:
            self.lock.acquire(timeout=0)
        except Timeout:
            raise UserError(
                f"{self.run_dir} is in use by another vae-lit run (it holds {LOCK_FILE}); wait "
                "for that run to end, or pass another hydra.run.dir"
            ) from None
        hydra_dir = self.run_dir / HYDRA_SUBDIR
        if hydra_dir.is_dir():
            self.saved_hydra = {p.name: p.read_bytes() for p in hydra_dir.iterdir() if p.is_file()}

    def start(self) -> None:
        """Training begins: the new `.hydra/` stays; checkpoints half-written by killed runs go."""
        if self.started:
            return
        self.started = True
        self.saved_hydra = {}
        # checkpoints only: an eval may be writing its eval.json here right now, unlocked
        for path in remove_stale_partials(self.run_dir, "*.ckpt"):
            log.info(f"Removed {path}, a checkpoint half-written by a run that was killed")

    def restore(self) -> None:
        """The start failed: put back the `.hydra/` files of the run that was there before."""
        if self.started or not self.saved_hydra:
            return
        for name, content in self.saved_hydra.items():
            write_bytes_atomic(self.run_dir / HYDRA_SUBDIR / name, content)

    def release(self) -> None:
        self.lock.release(force=True)


_claims: dict[Path, RunDirClaim] = {}


def claim(run_dir: str | Path) -> RunDirClaim:
    """Lock `run_dir` for this process (again: the claim it already holds). Raises UserError when
    another process holds it."""
    path = Path(run_dir).resolve()
    if path not in _claims:
        new = RunDirClaim(path)
        new.acquire()
        _claims[path] = new
    return _claims[path]


def release(run_dir: str | Path, failed: bool) -> None:
    """Let go of `run_dir`; with `failed`, a start that never began training is undone."""
    held = _claims.pop(Path(run_dir).resolve(), None)
    if held is None:
        return
    try:
        if failed:
            held.restore()
    finally:
        held.release()


def started(run_dir: str | Path) -> None:
    held = _claims.get(Path(run_dir).resolve())
    if held is not None:
        held.start()


def is_main_process() -> bool:
    """False in the processes Lightning's DDP starts for ranks 1..N: they share rank 0's dir."""
    return rank_zero_only.rank == 0


def previous_outputs(run_dir: Path) -> list[Path]:
    found: set[Path] = set()
    for pattern in RUN_OUTPUTS:
        found.update(p for p in run_dir.rglob(pattern) if p.is_file())
    return sorted(found)


def refuse_overwrite(run_dir: str | Path, resuming: bool) -> None:
    """A fresh start must not overwrite an earlier run's pictures, metrics and checkpoints."""
    run_dir = Path(run_dir)
    if resuming or not is_main_process():
        return
    if any(run_dir.glob("hpc_ckpt_*.ckpt")):  # SLURM requeued the job: Lightning resumes it
        return
    outputs = previous_outputs(run_dir) if run_dir.is_dir() else []
    if outputs:
        named = ", ".join(str(p.relative_to(run_dir)) for p in outputs[:SHOWN])
        more = f" and {len(outputs) - SHOWN} more" if len(outputs) > SHOWN else ""
        raise UserError(
            f"{run_dir} already holds a run ({named}{more}); add resume=auto to continue it, "
            "or pass a new hydra.run.dir to start another"
        )


class RunStarted(Callback):
    """When training (or a test-only run) actually starts, the config goes to every logger and the
    run dir's new `.hydra/` is kept. Until then a failure changes nothing on disk."""

    def __init__(self, run_dir: str | Path, hyperparameters: dict[str, Any]):
        self.run_dir = run_dir
        self.hyperparameters = hyperparameters
        self.done = False

    def _start(self, trainer: Trainer) -> None:
        if self.done:
            return
        self.done = True
        for logger in trainer.loggers:
            logger.log_hyperparams(self.hyperparameters)
        if trainer.is_global_zero:
            started(self.run_dir)

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._start(trainer)

    def on_test_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._start(trainer)


class RunDirGuard(HydraCallback):
    """Takes the run dir's lock before Hydra writes `.hydra/` into it (a single run; a multirun's
    jobs each get a new dir, locked by `train`)."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        if not is_main_process():
            return
        HydraConfig.instance().set_config(config)  # run.dir may use ${hydra:...}
        run_dir = os.path.abspath(str(OmegaConf.select(config, "hydra.run.dir")))
        try:
            claim(run_dir)
        except UserError as error:  # Hydra turns a callback's exception into a warning
            print(f"vae-lit: error: {error}", file=sys.stderr)
            sys.exit(2)

    def on_run_end(self, config: DictConfig, **kwargs: Any) -> None:
        if is_main_process():
            release(os.path.abspath(str(OmegaConf.select(config, "hydra.run.dir"))), failed=False)
