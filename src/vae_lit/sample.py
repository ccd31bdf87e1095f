"""Pictures from a trained model: `python -m vae_lit.sample ckpt=<path> [n=64] [out=<file>]`.

The checkpoint alone is enough: the config that built the model travels inside it. A model folder
written by `python -m vae_lit.export` works as well as a `.ckpt`.
`mode=sample` decodes `n` points z ~ N(0, I) drawn from `seed`, the very points the sample grid
callback draws, so `n=64 seed=0` redraws a run's `sample_{epoch}.png` from that epoch's checkpoint.
`mode=interpolate` draws rows of `nrow` points along great circles between two such points.
`temperature=0.8` scales the prior's standard deviations (an N(0, I) prior, a hierarchical VAE's
every layer, or the softmax of a VQ-VAE prior's codes).
`mode=partial` (a hierarchical VAE): rows of test images, each followed by images that keep the
top k latent layers of its posterior and draw the rest, k from all layers (the reconstruction)
down to none (a plain sample): what the coarse layers decide, and what they leave open.
"""

import logging
from pathlib import Path

import hydra
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from PIL import Image

from vae_lit.callbacks.image_grids import image_grid, save_png
from vae_lit.callbacks.latent_views import slerp
from vae_lit.data.datamodule import recorded_data
from vae_lit.errors import UserError, exit_on_user_error
from vae_lit.model.vae_module import VAELitModule, to_float_images
from vae_lit.persistence.atomic_write import check_output_file
from vae_lit.persistence.checkpoint import load_checkpoint
from vae_lit.runs.config_checks import (
    non_negative_int,
    not_given,
    positive_int,
    run_cli,
    shown,
)
from vae_lit.sampling.draws import sample_latents

log = logging.getLogger(__name__)

MODES = ("sample", "interpolate", "partial")


def pick_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(
            f"device={device} asks for a GPU but no CUDA GPU was found; use device=cpu"
        )
    return torch.device(device)


def latent_codes(
    module: VAELitModule, mode: str, n: int, nrow: int, seed: int, temperature: float = 1.0
) -> torch.Tensor:
    """The (n, latent_dim) points a grid decodes, drawn from the model's prior."""
    tempered = {} if temperature == 1.0 else {"temperature": temperature}
    if mode == "sample":
        return module.sample_latents(n, seed, **tempered)
    ends = module.sample_latents(2 * (n // nrow), seed, **tempered)
    rows = len(ends) // 2
    return slerp(ends[:rows], ends[rows:], nrow).flatten(0, 1)


def sample(cfg: DictConfig) -> Path:
    """Write the grid the config asks for; return its path."""
    if not_given(cfg, "ckpt"):
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
    temperature = cfg.get("temperature", 1.0)
    # below 1e-3 a VQ prior's logits / temperature overflow to inf and draw NaN probabilities
    if not (isinstance(temperature, int | float) and 1e-3 <= temperature < float("inf")):
        raise UserError(f"temperature={shown(temperature)} must be a number >= 0.001, e.g. 0.8")
    device = pick_device(cfg.device)
    module, run_cfg = load_checkpoint(cfg.ckpt, vqvae=cfg.get("vqvae"))
    run_cfg.data = recorded_data(cfg.get("data"), run_cfg.get("data"), str(cfg.ckpt))
    module.to(device)
    if cfg.mode == "partial":
        picture, nrow = partial_samples(module, run_cfg, cfg, float(temperature))
        out = save_png(picture, Path(cfg.out))
        log.info(f"Wrote partial samples ({nrow} columns) from {cfg.ckpt} to {out}")
        return out
    # a VQ-VAE prior's codes (temperature), or a fitted sampler's draws (sampler=gmm|two_stage)
    codes = sample_latents(cfg, module, run_cfg)
    if codes is None:
        codes = latent_codes(module, cfg.mode, cfg.n, cfg.nrow, cfg.seed, float(temperature))
    with torch.no_grad():
        images = torch.cat([module.decode(batch.to(device)).cpu() for batch in codes.split(256)])
    out = save_png(image_grid(images, cfg.nrow), Path(cfg.out))
    log.info(f"Wrote {cfg.n} images ({cfg.mode}) from {cfg.ckpt} to {out}")
    return out


def partial_samples(module, run_cfg: DictConfig, cfg: DictConfig, temperature: float):
    """`cfg.nrow` test images (from the data the model was trained on, or `data.*`), each row:
    the image, then the top k layers of its posterior kept and the rest drawn, k = L .. 0."""
    if not hasattr(module, "partial_samples"):
        raise UserError(
            f"mode=partial keeps some latent layers of a hierarchical VAE; {cfg.ckpt} has one "
            "latent vector (train one with model=hvae)"
        )
    data_cfg = run_cfg.get("data")
    if data_cfg is None:
        raise UserError(f"{cfg.ckpt} records no data to take test images from")
    datamodule = instantiate(data_cfg)
    datamodule.setup("test")
    images = []
    for batch in datamodule.test_dataloader():
        images.append(batch)
        if sum(len(b) for b in images) >= cfg.nrow:
            break
    if not images:
        raise UserError(f"the test split of {cfg.ckpt}'s data has no images")
    x = to_float_images(torch.cat(images)[: cfg.nrow].to(module.device))
    torch.manual_seed(int(cfg.seed))
    layers = module.net.num_layers
    columns = [x] + [
        module.partial_samples(x, keep, temperature) for keep in range(layers, -1, -1)
    ]
    grid = torch.stack(columns, 1).flatten(0, 1).cpu()  # row-major: an image, then its columns
    return image_grid(grid, layers + 2), layers + 2


@hydra.main(version_base="1.3", config_path="../../configs", config_name="sample.yaml")
def main(cfg: DictConfig) -> None:
    exit_on_user_error(lambda: sample(cfg))


if __name__ == "__main__":
    run_cli(main, model_data=True)  # a typo is one line; data.root=/new works
