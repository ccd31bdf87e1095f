"""Which checkpoint `trainer.fit` resumes from: `ckpt_path` as given, or with `resume=auto` the
newest readable checkpoint of this run dir, so the same command run again after a crash carries on.

Lightning restores everything from that file (weights, optimizer, scheduler, epoch, step and every
callback's state); this module only picks the file and refuses one that cannot fit the model. Both
read it with `torch.load(weights_only=True)` (train.py passes `weights_only=True` to Lightning), so
a checkpoint's pickle can hold tensors and plain values but no code.
"""

import logging
import re
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from pytorch_lightning import Trainer
from pytorch_lightning.callbacks import ModelCheckpoint

from vae_lit.errors import UserError
from vae_lit.persistence.checkpoint import read_checkpoint
from vae_lit.persistence.file_layout import CONFIG_KEY

log = logging.getLogger(__name__)

RESUME_MODES = ("auto", "never")
HPC_CHECKPOINT = re.compile(r"^hpc_ckpt_\d+\.ckpt$")  # what SLURM auto-requeue saves


def run_checkpoints(trainer: Trainer) -> list[Path]:
    """Every checkpoint of this run: those of its ModelCheckpoints, and SLURM's `hpc_ckpt_*`."""
    found = []
    root = Path(trainer.default_root_dir)
    if root.is_dir():
        found += [p for p in root.iterdir() if HPC_CHECKPOINT.match(p.name)]
    for callback in trainer.checkpoint_callbacks:
        if isinstance(callback, ModelCheckpoint) and callback.dirpath:
            folder = Path(callback.dirpath)
            found += sorted(folder.glob("*.ckpt")) if folder.is_dir() else []
    return found


def newest_readable(paths: list[Path]) -> tuple[Path, dict[str, Any]] | None:
    """The most recent checkpoint that loads: a kill while one was being written truncates it."""
    for path in sorted(set(paths), key=lambda p: p.stat().st_mtime, reverse=True):
        try:
            return path, read_checkpoint(path)
        except (UserError, OSError) as exc:  # cut short by a kill, empty: the one before
            log.warning(f"Skipping checkpoint {path}: {exc}")
    return None


def resume_path(cfg: DictConfig, trainer: Trainer) -> str | None:
    """The checkpoint to resume from, or None to start fresh. Raises UserError for a bad choice."""
    ckpt_path, resume = cfg.get("ckpt_path"), cfg.get("resume") or "never"
    if resume not in RESUME_MODES:
        raise UserError(f"resume={resume!r} is unknown; use one of: {', '.join(RESUME_MODES)}")
    if ckpt_path == "last" or (ckpt_path is None and resume == "auto"):
        found = newest_readable(run_checkpoints(trainer))
        if found is None:
            if ckpt_path is None:
                return None  # resume=auto on a fresh run dir: nothing to resume
            raise UserError(
                "ckpt_path=last but this run dir holds no readable checkpoint; pass "
                "hydra.run.dir=<the interrupted run's dir> or ckpt_path=<a .ckpt file>"
            )
        path, checkpoint = found
    elif ckpt_path is None:
        return None
    else:
        path = Path(ckpt_path)
        if path.is_dir():
            raise UserError(
                f"ckpt_path={ckpt_path} is a folder; ckpt_path takes a .ckpt file to resume "
                "from (a model folder holds no optimizer state), or 'last'"
            )
        if not path.is_file():
            raise UserError(f"ckpt_path={ckpt_path} does not exist; pass a .ckpt file or 'last'")
        checkpoint = read_checkpoint(path)  # one line when it is no checkpoint, or not safe
    check_same_network(path, checkpoint, cfg)
    log.info(f"Resuming from {path} (epoch {checkpoint.get('epoch')})")
    return str(path)


def check_same_network(path: Path, checkpoint: dict[str, Any], cfg: DictConfig) -> None:
    """A checkpoint of another network would fail deep inside load_state_dict; say so plainly.
    An option the checkpoint's config lacks was added to the network after it was written (say
    `fp32_output`): its default builds the network the checkpoint has, so it is not compared."""
    saved = (checkpoint.get(CONFIG_KEY) or {}).get("model", {}).get("net")
    if saved is None:
        return
    wanted = OmegaConf.to_container(cfg.model.net, resolve=True)
    changed = [
        f"{key} {saved[key]} -> {wanted[key]}"
        for key in wanted
        if key != "_target_" and key in saved and saved[key] != wanted[key]
    ]
    if changed:
        raise UserError(
            f"{path} holds a different network (model.net: {', '.join(changed)}); "
            "resume with the same model config, or start in a new run dir"
        )
