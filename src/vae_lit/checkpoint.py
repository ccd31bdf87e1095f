"""Loading a trained VAE from a checkpoint file alone: the config that built it travels inside."""

from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from vae_lit.callbacks.run_config import CONFIG_KEY
from vae_lit.errors import UserError
from vae_lit.lit_module import VAELitModule


def load_checkpoint(
    path: str | Path, map_location: str = "cpu"
) -> tuple[VAELitModule, DictConfig]:
    """Return the trained module (eval mode) and the resolved run config it was trained with."""
    path = Path(path)
    if not path.is_file():
        raise UserError(
            f"checkpoint {path} does not exist; pass ckpt=<run dir>/checkpoints/last.ckpt"
        )
    checkpoint = torch.load(path, map_location=map_location, weights_only=False)
    if CONFIG_KEY not in checkpoint:
        raise UserError(
            f"checkpoint {path} holds no vae-lit config; was it written by vae_lit.train?"
        )
    config = OmegaConf.create(checkpoint[CONFIG_KEY])
    module: VAELitModule = instantiate(config.model)
    module.load_state_dict(checkpoint["state_dict"])
    return module.eval(), config
