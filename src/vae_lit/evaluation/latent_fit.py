"""How well the prior and each fitted sampler cover a split's posterior means (`vae_lit.eval`)."""

from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from vae_lit.errors import UserError
from vae_lit.sampling.fits import fitted_sampler, posterior_means, saved_sampler


def latent_log_likelihoods(
    module,
    datamodule,
    samplers_cfg: DictConfig | None,
    ckpt: Path,
    split: str = "test",
    fit: list[str] | tuple[str, ...] = ("gmm",),
) -> dict[str, Any]:
    """Mean log-density (nats per image) of the split's posterior means under the model's prior
    and under the samplers of `samplers_cfg`: how well each covers the aggregate posterior, higher
    is better. Those named in `fit` are fitted on the training split when no saved fit matches;
    the others are scored only when a fit is saved beside the checkpoint (`vae_lit.sample
    sampler=<name>` saves one)."""
    unknown = sorted(set(fit) - set(samplers_cfg or {}))
    if unknown:
        raise UserError(
            f"eval.samplers names {', '.join(unknown)}, which is not among samplers: "
            f"{', '.join(samplers_cfg or {}) or 'none'}"
        )
    means = posterior_means(module, datamodule, split).to(module.device)
    with torch.no_grad():
        values = {"prior": float(module.prior.log_prob(means).mean())}
    for name, sampler_cfg in (samplers_cfg or {}).items():
        if sampler_cfg is None:
            continue
        if name in fit:
            sampler = fitted_sampler(name, sampler_cfg, module, ckpt, lambda: datamodule)
        else:
            sampler = saved_sampler(name, sampler_cfg, module, ckpt)
        if sampler is not None:
            values[name] = float(sampler.log_prob(means).mean())
    return {"latent_log_likelihood": values}


def latent_likelihood_rows(metrics: dict[str, Any]) -> list[tuple[str, str, str]]:
    """Rows of the eval table for `latent_log_likelihood`."""
    values = metrics.get("latent_log_likelihood") or {}
    return [
        (
            f"log p(means), {name}",
            f"{value:.2f} nats",
            "posterior means under the model's prior"
            if name == "prior"
            else f"under the fitted {name} sampler; higher: covers them better",
        )
        for name, value in values.items()
    ]
