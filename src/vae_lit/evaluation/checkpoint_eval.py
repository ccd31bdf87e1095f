"""Evaluating a trained checkpoint where a run keeps its numbers: the device, the table,
`eval.json` and `eval/*` in the run's own loggers."""

import json
import logging
import time
from pathlib import Path
from typing import Any

import torch
from hydra.utils import get_object, instantiate
from omegaconf import DictConfig
from pytorch_lightning import LightningDataModule
from pytorch_lightning.loggers import CSVLogger, Logger
from rich.console import Console

from vae_lit.errors import UserError
from vae_lit.evaluation.vae import evaluate_model, metrics_table
from vae_lit.evaluation.vq import evaluate_vq_model, is_vq_model, vq_metrics_table
from vae_lit.loggers.wandb_run import finish_wandb
from vae_lit.persistence.atomic_write import write_text_atomic
from vae_lit.persistence.checkpoint import checkpoint_step, load_checkpoint
from vae_lit.persistence.trusted_config import check_targets

log = logging.getLogger(__name__)

# What goes to the loggers as eval/<key>; the rest of eval.json (k, image count, ...) is metadata.
LOGGED_METRICS = (
    "neg_elbo",
    "recon",
    "kl",
    "iwae_nll",
    "bits_per_dim",
    "mse",
    "psnr",
    "foreground_iou",
    "active_units",
    "mig",
    "fid",
)


def resolve_device(name: str) -> torch.device:
    """`auto` picks a CUDA GPU when there is one; asking for one that is not there is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(
            f"device={name!r} is not a device; use auto, cpu, cuda or cuda:N"
        ) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device={name} but no CUDA GPU is visible; use device=cpu or device=auto")
    return device


def in_its_run_dir(ckpt: Path, run_cfg: DictConfig) -> bool:
    """Whether `ckpt` lies in the run dir its config names (`<run>/checkpoints/` or `<run>/`): only
    then may eval write where the config's loggers say. A moved or downloaded checkpoint, or a
    model folder, gets eval.json alone."""
    run_dir = (run_cfg.get("paths") or {}).get("output_dir")
    if not run_dir or not run_cfg.get("logger") or not ckpt.is_file():
        return False
    here = ckpt.resolve().parent
    if Path(run_dir).resolve() not in (here, here.parent):
        log.info(f"Not logging eval/* to the run's loggers: {ckpt} is outside its run {run_dir}")
        return False
    return True


def log_to_run_loggers(
    run_cfg: DictConfig, metrics: dict[str, Any], step: int, source: str = "the run config"
) -> None:
    """Log eval/* to the loggers the run was trained with. CSV is skipped: Lightning's CSV logger
    would replace the run's metrics.csv, and eval.json is the same record in a file.

    The config came from a checkpoint (`source`): only the loggers vae-lit ships are built, and
    only when their files go inside the run dir it names."""
    scalars = {f"eval/{key}": float(metrics[key]) for key in LOGGED_METRICS if key in metrics}
    run_dir = Path((run_cfg.get("paths") or {}).get("output_dir") or ".").resolve()
    loggers: list[Logger] = []
    for name, entry in (run_cfg.get("logger") or {}).items():
        if not entry or "_target_" not in entry:
            continue
        check_targets(entry, source, f"logger.{name}", allowed="logger")  # before any import
        target = get_object(entry._target_)
        if isinstance(target, type) and issubclass(target, CSVLogger):
            continue
        outside = [
            f"{key}={entry[key]}"
            for key in ("save_dir", "run_id_file")
            if entry.get(key) and not Path(entry[key]).resolve().is_relative_to(run_dir)
        ]
        if outside:
            log.info(f"Not logging to {name}: {', '.join(outside)} is outside the run {run_dir}")
            continue
        save_dir = entry.get("save_dir")
        if save_dir and not Path(save_dir).exists():
            log.info(f"Not logging to {name}: its directory {save_dir} is gone")
            continue
        logger = instantiate(entry)
        logger.log_metrics(scalars, step=step)
        logger.finalize("success")
        loggers.append(logger)
        log.info(f"Logged eval/* to the run's {name} logger")
    finish_wandb(loggers)  # W&B keeps the run open otherwise; the id file resumed the same run


def device_name(device: torch.device) -> str:
    """What a run's wall time was measured on: the GPU's name, or the CPU threads torch used."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    threads = torch.get_num_threads()
    return f"{device.type} ({threads} thread{'' if threads == 1 else 's'})"


def bound_name(module: torch.nn.Module, k: int) -> str:
    """What the log says the evaluation estimates: a VQ-VAE's encoder is deterministic, so it has
    no IWAE bound; its NLL is the code prior's plus the reconstruction's."""
    return "VQ-VAE: code prior + reconstruction NLL" if is_vq_model(module) else f"IWAE k={k}"


def evaluate_after_training(
    ckpt: str | Path,
    datamodule: LightningDataModule,
    run_dir: str | Path,
    device: torch.device,
    k: int = 100,
    max_decodes: int | str = "auto",
    seed: int = 0,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """This module's numbers for a run's best checkpoint on the test split of the run's own
    (set-up) datamodule, at the end of training (`eval_after_train`). Prints the table and writes
    `<run_dir>/eval.json` with `extra` (wall time, device) and `eval_wall_s`, which a sweep's
    summary reads."""
    started = time.perf_counter()
    module, _ = load_checkpoint(ckpt, map_location=str(device))
    module.to(device)
    log.info(f"Evaluating {ckpt} on the test split ({bound_name(module, k)}, {device})")
    if is_vq_model(module):
        metrics, table = evaluate_vq_model(module, datamodule, "test", seed=seed), vq_metrics_table
    else:
        metrics = evaluate_model(
            module, datamodule, "test", k=k, max_decodes=max_decodes, seed=seed
        )
        table = metrics_table
    metrics = {"checkpoint": str(ckpt), "global_step": checkpoint_step(ckpt), **metrics}
    metrics.update(extra or {}, device=device_name(device))
    metrics["eval_wall_s"] = time.perf_counter() - started
    Console().print(table(metrics, title=f"vae-lit eval: {ckpt}"))
    path = Path(run_dir) / "eval.json"
    write_text_atomic(path, json.dumps(metrics, indent=2) + "\n")
    log.info(f"Wrote {path}")
    return metrics
