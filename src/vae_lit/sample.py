"""Pictures from a trained model: `python -m vae_lit.sample ckpt=<path> [n=64] [out=<file>]`.

The checkpoint alone is enough: the config that built the model travels inside it. A model folder
written by `python -m vae_lit.export` works as well as a `.ckpt`.
`mode=sample` decodes `n` points z ~ N(0, I) drawn from `seed`, the very points the sample grid
callback draws, so `n=64 seed=0` redraws a run's `sample_{epoch}.png` from that epoch's checkpoint.
`mode=interpolate` draws rows of `nrow` points along great circles between two such points.
"""

import logging
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig, OmegaConf
from PIL import Image

from vae_lit.atomic_write import check_output_file
from vae_lit.callbacks.image_grids import image_grid, save_png
from vae_lit.callbacks.latent_views import slerp
from vae_lit.checkpoint import load_checkpoint
from vae_lit.config_checks import non_negative_int, positive_int, run_cli, shown
from vae_lit.errors import UserError, exit_on_user_error
from vae_lit.lit_module import VAELitModule
from vae_lit.samplers import sample_latents

log = logging.getLogger(__name__)

MODES = ("sample", "interpolate")


def pick_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(
            f"device={device} asks for a GPU but no CUDA GPU was found; use device=cpu"
        )
    return torch.device(device)


def latent_codes(module: VAELitModule, mode: str, n: int, nrow: int, seed: int) -> torch.Tensor:
    """The (n, latent_dim) points a grid decodes, drawn from the model's prior."""
    if mode == "sample":
        return module.sample_latents(n, seed)
    ends = module.sample_latents(2 * (n // nrow), seed)
    rows = len(ends) // 2
    return slerp(ends[:rows], ends[rows:], nrow).flatten(0, 1)


def sample(cfg: DictConfig) -> Path:
    """Write the grid the config asks for; return its path."""
    if OmegaConf.is_missing(cfg, "ckpt"):
        raise UserError("ckpt is missing; pass ckpt=<run dir>/checkpoints/last.ckpt")
    if cfg.mode not in MODES:
        raise UserError(f"mode={cfg.mode} is unknown; use one of: {', '.join(MODES)}")
    for key in ("n", "nrow", "seed"):
        problem = (non_negative_int if key == "seed" else positive_int)(cfg[key])
        if problem:
            raise UserError(f"{key}={shown(cfg[key])} {problem}")
    check_output_file(Path(cfg.out), "out")  # before loading the model, not after drawing
    if Path(cfg.out).suffix.lower() not in Image.registered_extensions():
        raise UserError(f"out={cfg.out} names no image format; end it with .png or .jpg")
    if cfg.mode == "interpolate" and cfg.n % cfg.nrow:
        raise UserError(
            f"n={cfg.n} must be a multiple of nrow={cfg.nrow} with mode=interpolate "
            "(each row is one path)"
        )
    device = pick_device(cfg.device)
    module, run_cfg = load_checkpoint(cfg.ckpt)
    module.to(device)
    # a VQ-VAE prior's codes (temperature), or a fitted sampler's draws (sampler=gmm|two_stage)
    codes = sample_latents(cfg, module, run_cfg)
    if codes is None:
        codes = latent_codes(module, cfg.mode, cfg.n, cfg.nrow, cfg.seed)
    with torch.no_grad():
        images = torch.cat([module.decode(batch.to(device)).cpu() for batch in codes.split(256)])
    out = save_png(image_grid(images, cfg.nrow), Path(cfg.out))
    log.info(f"Wrote {cfg.n} images ({cfg.mode}) from {cfg.ckpt} to {out}")
    return out


@hydra.main(version_base="1.3", config_path="../../configs", config_name="sample.yaml")
def main(cfg: DictConfig) -> None:
    exit_on_user_error(lambda: sample(cfg))


if __name__ == "__main__":
    run_cli(main)  # a typo in a key or a config name is one line too
