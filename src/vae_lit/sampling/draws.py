"""Which latents `vae_lit.sample` decodes: the prior's, a fitted sampler's, or a VQ-VAE prior's
codes; and the sampler names a config offers."""

from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from vae_lit.errors import UserError
from vae_lit.model.code_prior import CodePriorLitModule
from vae_lit.model.vq_module import VQVAELitModule
from vae_lit.sampling.fits import fitted_sampler


def sampler_names(samplers_cfg: DictConfig | None) -> list[str]:
    return ["prior", *((samplers_cfg or {}).keys())]


def check_sampler_name(name: str, samplers_cfg: DictConfig | None) -> None:
    names = sampler_names(samplers_cfg)
    if name not in names:
        raise UserError(f"sampler={name} is unknown; use one of: {', '.join(names)}")


def data_factory(data_cfg: DictConfig):
    """A function that builds and sets up the datamodule of `data_cfg` (only when called)."""

    def build():
        datamodule = instantiate(data_cfg)
        datamodule.setup("fit")
        return datamodule

    return build


def lerp_rows(ends: torch.Tensor, steps: int) -> torch.Tensor:
    """2R points -> R straight paths of `steps` points each, flattened: (R * steps, D)."""
    rows = len(ends) // 2
    t = torch.linspace(0, 1, steps, device=ends.device).view(1, steps, 1)
    path = ends[:rows].unsqueeze(1) * (1 - t) + ends[rows : 2 * rows].unsqueeze(1) * t
    return path.flatten(0, 1)


def sample_latents(cfg: DictConfig, module, run_cfg: DictConfig) -> torch.Tensor | None:
    """The latents `vae_lit.sample` decodes when they are not the model prior's own: codes from a
    VQ-VAE's learned prior (at `cfg.temperature`), or draws from a fitted sampler (`cfg.sampler`).
    None: draw from the model's prior as usual."""
    name, temperature = str(cfg.get("sampler", "prior")), float(cfg.get("temperature", 1.0))
    if isinstance(module, VQVAELitModule):
        raise UserError(
            f"ckpt={cfg.ckpt} is a VQ-VAE, which samples through a prior over its codes; train "
            f"one with python -m vae_lit.train_prior ckpt={cfg.ckpt}, then pass its checkpoint"
        )
    if isinstance(module, CodePriorLitModule):
        if cfg.mode != "sample" or name != "prior":
            raise UserError(
                f"mode={cfg.mode} sampler={name}: a VQ-VAE prior checkpoint draws mode=sample "
                "sampler=prior only (its codes are discrete)"
            )
        return module.sample_latents(int(cfg.n), int(cfg.seed), temperature)
    check_sampler_name(name, cfg.get("samplers"))
    if name == "prior":
        return None  # the model's prior, at `temperature` (vae_lit.sample's latent_codes)
    if temperature != 1.0:
        raise UserError(
            f"temperature={temperature} scales the model's prior; sampler={name} draws at "
            "temperature 1 only"
        )
    if getattr(module, "net", None) is not None and hasattr(module.net, "latent_shapes"):
        raise UserError(
            f"sampler={name} fits one latent vector; a hierarchical VAE samples from its prior "
            "(sampler=prior, temperature=0.8 for cleaner images)"
        )
    sampler = fitted_sampler(
        name, cfg.samplers[name], module, Path(cfg.ckpt), data_factory(run_cfg.data)
    )
    generator = torch.Generator().manual_seed(int(cfg.seed))
    if cfg.mode == "sample":
        return sampler.sample(int(cfg.n), generator, module.device)
    ends = sampler.sample(2 * (int(cfg.n) // int(cfg.nrow)), generator, module.device)
    return lerp_rows(ends, int(cfg.nrow))  # straight lines: slerp assumes N(0, I)
