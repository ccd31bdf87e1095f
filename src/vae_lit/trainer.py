"""Building the Lightning Trainer from its config, with `trainer.gpus=N` mapped the 1.x way.

`Trainer(gpus=...)` was removed in Lightning 2.0, but users (and our own docs) still type it, so it
maps to `accelerator` + `devices`. A request for a GPU on a machine without one stops here, before
any data is read.
"""

from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning import Trainer
from pytorch_lightning.strategies.launchers import _SubprocessScriptLauncher

from vae_lit.errors import UserError


def map_gpus(trainer_cfg: DictConfig) -> DictConfig:
    """A copy of the trainer config without `gpus`, its meaning moved to accelerator/devices."""
    cfg = OmegaConf.to_container(trainer_cfg, resolve=True)
    gpus = cfg.pop("gpus", None)
    if gpus is not None:
        if gpus == 0 or gpus == "0":
            cfg["accelerator"], cfg["devices"] = "cpu", cfg.get("devices") or 1
            if cfg["devices"] == "auto":
                cfg["devices"] = 1
        else:
            cfg["accelerator"], cfg["devices"] = "gpu", gpus
    check_accelerator(cfg.get("accelerator"), cfg.get("devices"), gpus)
    return OmegaConf.create(cfg)


def check_accelerator(accelerator: Any, devices: Any, gpus: Any = None) -> None:
    """Fail fast, in one line, when the config asks for GPUs this machine does not have."""
    if accelerator not in ("gpu", "cuda"):
        return
    asked = f"trainer.gpus={gpus}" if gpus is not None else f"trainer.accelerator={accelerator}"
    available = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if available == 0:
        raise UserError(
            f"{asked} asks for a GPU but no CUDA GPU was found; run on CPU with trainer=cpu"
        )
    wanted = (
        devices if isinstance(devices, int) else len(devices) if isinstance(devices, list) else 1
    )
    if wanted > available:
        raise UserError(
            f"{asked} asks for {wanted} GPUs but this machine has {available}; "
            f"set trainer.gpus={available} or fewer"
        )


def check_launcher(trainer: Trainer, in_multirun: bool) -> None:
    """`strategy=ddp` starts its other ranks by running this command line again; inside a Hydra
    multirun that starts a whole sweep per rank (Lightning #11300, hydra #2070). Under SLURM or
    torchrun the ranks already exist and nothing is relaunched, so that case is fine."""
    relaunches = isinstance(trainer.strategy.launcher, _SubprocessScriptLauncher)
    if in_multirun and relaunches and trainer.num_devices > 1:
        raise UserError(
            "trainer.strategy=ddp relaunches the command line and cannot run inside a Hydra "
            "multirun; use trainer.strategy=ddp_spawn for sweeps on one machine"
        )


def build_trainer(trainer_cfg: DictConfig, **kwargs: Any) -> Trainer:
    """Instantiate the Trainer; `kwargs` (callbacks, logger) go straight to its constructor."""
    return instantiate(map_gpus(trainer_cfg), **kwargs)
