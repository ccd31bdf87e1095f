"""`vae_lit.eval` for a VQ-VAE checkpoint, or for a code prior's checkpoint (from
`vae_lit.train_prior`), which evaluates the VQ-VAE it was trained on together with the prior.

Without a prior: reconstruction NLL, MSE/PSNR, perplexity and codebook usage of the split's codes.
With one, also -log p(x) <= -log p(x|z_q) - log p(z_q), the reconstruction NLL plus the prior's NLL
of the image's codes (the ELBO of a one-hot posterior, whose KL to the prior is -log p(z_q); van
den Oord et al. 2017, section 3.2), in nats and in bits per dimension; and the prior's NLL of code
grids drawn from it next to that of uniformly random grids, which says the prior learned something.
"""

import math
from typing import Any

import torch
from rich.markup import escape
from rich.progress import track
from rich.table import Table

from vae_lit.callbacks.host_memory import freed_host_memory_kept
from vae_lit.errors import UserError
from vae_lit.metrics.image_quality import mse_per_image, psnr_per_image
from vae_lit.model.code_prior import CodePriorLitModule
from vae_lit.model.vae_module import to_float_images
from vae_lit.model.vq_module import VQVAELitModule, perplexity


def is_vq_model(module: Any) -> bool:
    return isinstance(module, VQVAELitModule | CodePriorLitModule)


@torch.no_grad()
@freed_host_memory_kept()  # large batches reuse freed memory: 157 -> 84 s at 150 px
def evaluate_vq_model(
    module: VQVAELitModule | CodePriorLitModule,
    datamodule,
    split: str = "test",
    prior_samples: int = 64,
    seed: int = 0,
) -> dict[str, Any]:
    """All metrics of a VQ-VAE (and its prior, for a prior's module) on one split, as numbers."""
    prior = module if isinstance(module, CodePriorLitModule) else None
    vqvae = module.vqvae if prior is not None else module
    vqvae.eval()
    device = vqvae.device
    keys = ("recon", "commitment", "mse", "psnr", "prior_nll")
    sums = {key: torch.zeros((), dtype=torch.float64, device=device) for key in keys}
    counts = torch.zeros(vqvae.num_codes, dtype=torch.long, device=device)
    count = 0
    loader = datamodule.dataloader(split)
    total = len(loader) if hasattr(loader, "__len__") else None
    for batch in track(loader, description="Evaluating the VQ-VAE", total=total):
        images = to_float_images(batch.to(device, non_blocking=True))
        out = vqvae.net(images)
        codes = out.quantized.codes
        reconstructions = vqvae.likelihood.mean(out.params)
        values = {
            "recon": -vqvae.likelihood.log_prob(out.params, images),
            "commitment": out.quantized.commitment,
            "mse": mse_per_image(images, reconstructions),
            "psnr": psnr_per_image(images, reconstructions),
        }
        if prior is not None:
            values["prior_nll"] = prior.nll(codes.to(prior.device))
        for key, value in values.items():
            sums[key] += value.double().sum().to(device)
        counts += torch.bincount(codes.flatten(), minlength=vqvae.num_codes)
        count += len(images)
    if count == 0:
        raise UserError(
            f"the {split} split has no images; evaluate another split (split=val) or give the "
            f"data a {split} share (data.{split}_fraction)"
        )
    mean = {key: float(value) / count for key, value in sums.items()}
    net = vqvae.net
    dims = net.channels * net.image_size**2
    metrics: dict[str, Any] = {
        "split": split,
        "num_images": count,
        "recon": mean["recon"],
        "recon_bits_per_dim": mean["recon"] / (dims * math.log(2)),
        "commitment": mean["commitment"],
        "mse": mean["mse"],
        "psnr": mean["psnr"],
        "perplexity": float(perplexity(counts)),
        "codebook_usage": float((counts > 0).float().mean()),
        "num_codes": vqvae.num_codes,
        "grid_size": vqvae.grid_size,
        "likelihood_kind": vqvae.likelihood.kind,
    }
    if prior is not None:
        nll = mean["prior_nll"] + mean["recon"]
        metrics.update(
            prior_nll=mean["prior_nll"],
            nll=nll,
            bits_per_dim=nll / (dims * math.log(2)),
            **prior_against_uniform(prior, prior_samples, seed),
        )
    return metrics


@torch.no_grad()
def prior_against_uniform(prior: CodePriorLitModule, n: int, seed: int) -> dict[str, Any]:
    """Mean prior NLL of `n` code grids drawn from the prior and of `n` uniformly random grids;
    log(K) * h * w is what a prior that learned nothing gives every grid."""
    if n <= 0:
        return {}
    generator = torch.Generator().manual_seed(seed)
    size, num_codes = prior.grid_size, prior.vqvae.num_codes
    drawn = prior.sample_codes(n, 1.0, generator)
    uniform = torch.randint(num_codes, (n, size, size), generator=generator).to(prior.device)
    return {
        "prior_samples": n,
        "prior_nll_drawn": float(prior.nll(drawn).mean()),
        "prior_nll_uniform": float(prior.nll(uniform).mean()),
        "uniform_code_nll": size * size * math.log(num_codes),
    }


def vq_metrics_table(metrics: dict[str, Any], title: str = "Evaluation") -> Table:
    """The metrics as a rich table, each row saying what its number means."""
    m = metrics
    table = Table(title=escape(f"{title} ({m['split']} split, {m['num_images']} images)"))
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_column("what it says")
    code_length = m.get("likelihood_kind") == "discrete"
    rows = []
    if "nll" in m:
        rows += [
            ("NLL", f"{m['nll']:.2f} nats", "prior NLL of the codes + reconstruction, per image"),
            ("  prior NLL of codes", f"{m['prior_nll']:.2f} nats", "-log p(z_q) under the prior"),
        ]
    rows += [
        ("reconstruction NLL", f"{m['recon']:.2f} nats", "-log p(x|z_q), per image"),
    ]
    if "bits_per_dim" in m:
        rows.append(
            (
                "bits per dim",
                f"{m['bits_per_dim']:.4f}",
                "true bits per 8-bit subpixel (discrete likelihood)"
                if code_length
                else "NLL / (dims*ln 2); continuous likelihood: not a code length",
            )
        )
    rows += [
        (
            "reconstruction bits/dim",
            f"{m['recon_bits_per_dim']:.4f}",
            "-log p(x|z_q) / (dims*ln 2)",
        ),
        ("commitment", f"{m['commitment']:.4f}", "||z_e - e||^2 per image"),
        ("MSE", f"{m['mse']:.5f}", "reconstruction from the codes"),
        ("PSNR", f"{m['psnr']:.2f} dB", "mean over images; higher is better"),
        (
            "perplexity",
            f"{m['perplexity']:.1f}",
            f"of the code histogram; at most {m['num_codes']}",
        ),
        ("codebook usage", f"{m['codebook_usage']:.1%}", "share of the codes used by the split"),
    ]
    if "prior_nll_drawn" in m:
        n = m["prior_samples"]
        rows += [
            (
                f"prior NLL, {n} drawn grids",
                f"{m['prior_nll_drawn']:.2f} nats",
                "codes the prior drew",
            ),
            (
                f"prior NLL, {n} uniform grids",
                f"{m['prior_nll_uniform']:.2f} nats",
                "random codes",
            ),
            ("uniform code length", f"{m['uniform_code_nll']:.2f} nats", "h*w*log K"),
        ]
    for row in rows:
        table.add_row(*row)
    return table
