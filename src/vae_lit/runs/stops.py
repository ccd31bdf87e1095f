"""Why a run stopped before its end, as one line: a SIGTERM, a full disk, a setting Lightning
refuses once training starts (`max_epochs` below the resumed checkpoint's epoch).

Lightning turns SIGTERM (what SLURM, Kubernetes and `timeout` send) into `SIGTERMException`, a
`SystemExit` that would end the process with exit code 0; a full disk surfaces as an OSError deep
in a chain of exceptions. `stop_error` turns either into a UserError the entry point prints as one
line, naming the checkpoint the run can resume from.
"""

from pathlib import Path

from pytorch_lightning import Trainer
from pytorch_lightning.utilities.exceptions import SIGTERMException

from vae_lit.callbacks.non_finite_loss import last_good_checkpoint
from vae_lit.errors import UserError
from vae_lit.persistence.atomic_write import disk_full_error

SIGTERM_EXIT_CODE = 143  # 128 + 15: how a shell reports a process ended by SIGTERM


class Terminated(UserError):
    """The run got SIGTERM. Exit code 143, so a scheduler sees a killed job, not a finished one."""

    exit_code = SIGTERM_EXIT_CODE


def terminated(exc: BaseException | None) -> bool:
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, SIGTERMException):
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return False


def stop_error(exc: BaseException, trainer: Trainer) -> UserError | None:
    """The one line for a run stopped by SIGTERM, a full disk or a setting Lightning refuses;
    None for anything else."""
    if terminated(exc):
        return Terminated(
            f"terminated by SIGTERM at step {trainer.global_step} (epoch {trainer.current_epoch});"
            f" last checkpoint: {last_good_checkpoint(trainer)}; run the same command with "
            "resume=auto to continue"
        )
    if type(exc).__name__ == "MisconfigurationException":  # Lightning's word on the settings
        return UserError(" ".join(str(exc).split()))
    full = disk_full_error(exc)
    if full is not None:
        where = Path(full.filename).parent if full.filename else Path(trainer.default_root_dir)
        return UserError(
            f"no space left on {where} ({full.strerror}); last good checkpoint: "
            f"{last_good_checkpoint(trainer)}; free some space there, then run the same command "
            "with resume=auto"
        )
    return None
