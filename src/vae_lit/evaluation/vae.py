"""A Gaussian-latent VAE's numbers on one split: the importance-weighted likelihood (a loose ELBO
undersells a model), reconstruction error, active units (posterior collapse) and, where the data
has ground-truth factors, the mutual information gap."""

import logging
import math
from typing import Any

import numpy as np
import torch
from pytorch_lightning import LightningDataModule
from rich.markup import escape
from rich.progress import track
from rich.table import Table

from vae_lit.callbacks.host_memory import freed_host_memory_kept
from vae_lit.data.sprites import FACTOR_NAMES
from vae_lit.data.sprites_datamodule import SpritesDataModule
from vae_lit.errors import UserError
from vae_lit.evaluation.latent_fit import latent_likelihood_rows
from vae_lit.metrics.active_units import ACTIVITY_THRESHOLD, ActiveUnits
from vae_lit.metrics.foreground_iou import foreground_iou_per_image
from vae_lit.metrics.image_quality import mse_per_image, psnr_per_image
from vae_lit.metrics.mig import NUM_BINS, factor_gaps
from vae_lit.model.vae_module import VAELitModule, to_float_images

log = logging.getLogger(__name__)
DECODES_WITHOUT_GPU = 512  # max_decodes=auto on a CPU: about 4 GB at 150 px


def factor_names(datamodule: LightningDataModule, num_factors: int) -> list[str]:
    """Names for the columns of `datamodule.factors`, for the per-factor MIG rows."""
    if isinstance(datamodule, SpritesDataModule):
        return list(FACTOR_NAMES)
    return [f"factor_{i}" for i in range(num_factors)]


def is_hierarchical(module: torch.nn.Module) -> bool:
    """A model with latent layers (model=hvae) rather than one latent vector."""
    return hasattr(getattr(module, "net", None), "latent_shapes")


@torch.no_grad()
def decodes_per_pass(
    setting: int | str, module: VAELitModule, images: torch.Tensor, k: int, device: torch.device
) -> int:
    """`max_decodes`, the images decoded at once by the IWAE bound: a number, or auto. Auto on a
    CUDA GPU: as many as fit in half the memory free for them, measured by one probe pass that
    decodes one image min(k, 16) times (the logistic mixture at 150 px needs 15-25 GB for 512);
    on a CPU, 512."""
    if setting != "auto":
        return int(setting)
    if device.type != "cuda":
        return DECODES_WITHOUT_GPU
    probe = min(k, 16)
    torch.cuda.synchronize(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    generator = torch.Generator(images.device).manual_seed(0)  # not the evaluation's draws
    module.importance_weighted_log_likelihood(images[:1], probe, probe, generator)
    per_decode = max(1, torch.cuda.max_memory_allocated(device) - before) / probe
    free, _ = torch.cuda.mem_get_info(device)
    free += torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)  # cached
    chosen = max(1, int(0.5 * free / per_decode))
    log.info(
        f"eval max_decodes=auto: {chosen} images decoded at once ({per_decode / 2**20:.1f} MB "
        f"each, {free / 2**30:.1f} GiB free on {device})"
    )
    return chosen


@torch.no_grad()
@freed_host_memory_kept()  # large batches reuse freed memory: 157 -> 84 s at 150 px
def evaluate_model(
    module: VAELitModule,
    datamodule: LightningDataModule,
    split: str = "test",
    k: int = 100,
    max_decodes: int | str = "auto",
    active_threshold: float = ACTIVITY_THRESHOLD,
    mig_bins: int = NUM_BINS,
    fid: Any = None,
    seed: int = 0,
) -> dict[str, Any]:
    """All metrics of `module` on one split of a set-up datamodule, as plain numbers.

    `fid` is an optional torchmetrics FID metric: it compares the split's images with as many
    samples from the prior.
    """
    device = module.device
    module.eval()
    torch.manual_seed(seed)
    generator = torch.Generator(device).manual_seed(seed)
    sample_generator = torch.Generator().manual_seed(seed)
    # one process sees the whole split (also after a DDP run, whose other ranks have gone)
    active = ActiveUnits(module.latent_dim, active_threshold, sync_on_compute=False).to(device)
    keys = ("neg_elbo", "recon", "kl", "iwae_ll", "mse", "psnr", "foreground_iou")
    sums = {key: torch.zeros((), dtype=torch.float64, device=device) for key in keys}
    means, count, layer_sums = [], 0, 0
    if fid is not None:
        from vae_lit.metrics.fid import as_rgb
    loader = getattr(datamodule, f"{split}_dataloader")()
    total = len(loader) if hasattr(loader, "__len__") else None
    for batch in track(loader, description=f"Evaluating (IWAE k={k})", total=total):
        images = to_float_images(batch.to(device, non_blocking=True))
        n = images.shape[0]
        terms, mu = module.bound_terms(images)
        reconstructions = module.decode(mu)
        if count == 0:  # auto: measured on the first batch, on the device
            max_decodes = decodes_per_pass(max_decodes, module, images, k, device)
        iwae = module.importance_weighted_log_likelihood(images, k, max_decodes, generator)
        if "kl_per_layer" in terms.extras:  # a hierarchical VAE's layers
            layer_sums = layer_sums + terms.extras["kl_per_layer"].double() * n
        for key, value in (
            ("neg_elbo", terms.neg_elbo * n),
            ("recon", terms.recon * n),
            ("kl", terms.kl * n),
            ("iwae_ll", iwae.sum()),
            ("mse", mse_per_image(images, reconstructions).sum()),
            ("psnr", psnr_per_image(images, reconstructions).sum()),
            ("foreground_iou", foreground_iou_per_image(images, reconstructions).sum()),
        ):
            sums[key] += value.double()
        active.update(mu)
        means.append(mu.float().cpu())
        if fid is not None:
            fid.update(as_rgb(images), real=True)
            fid.update(as_rgb(module.sample(n, generator=sample_generator)), real=False)
        count += n
    if count == 0:
        raise UserError(
            f"the {split} split has no images; evaluate another split (split=val) or give the "
            f"data a {split} share (data.{split}_fraction)"
        )
    totals = {key: float(value) / count for key, value in sums.items()}
    dims = module.net.channels * module.net.image_size**2
    metrics: dict[str, Any] = {
        "split": split,
        "num_images": count,
        "neg_elbo": totals["neg_elbo"],
        "recon": totals["recon"],
        "kl": totals["kl"],
        "iwae_k": k,
        "iwae_nll": -totals["iwae_ll"],
        "bits_per_dim": -totals["iwae_ll"] / (dims * math.log(2)),
        # discrete: true bits per 8-bit subpixel, comparable with published numbers;
        # continuous: a density's "bits", comparable only between continuous runs
        "likelihood_kind": module.likelihood.kind,
        "likelihood": module.hparams["likelihood"],
        "objective": module.hparams["objective"],
        "prior": module.hparams["prior"],
        "mse": totals["mse"],
        "psnr": totals["psnr"],
        "active_units": int(active.compute()),
        "active_threshold": active_threshold,
        "latent_dim": module.latent_dim,
    }
    if torch.is_tensor(layer_sums):
        metrics["kl_per_layer"] = (layer_sums / count).tolist()
    if isinstance(datamodule, SpritesDataModule):  # objects on a black background
        metrics["foreground_iou"] = totals["foreground_iou"]
    factors = getattr(datamodule, "factors", {}).get(split)
    if factors is not None and len(factors) == count:
        gaps = factor_gaps(torch.cat(means).numpy(), factors, mig_bins)
        if not np.isnan(gaps).all():
            metrics["mig"] = float(np.nanmean(gaps))
            names = factor_names(datamodule, factors.shape[1])
            metrics["mig_per_factor"] = {
                name: float(gap)
                for name, gap in zip(names, gaps, strict=True)
                if not np.isnan(gap)
            }
    if fid is not None:
        metrics["fid"] = float(fid.compute())
    return metrics


def metrics_table(metrics: dict[str, Any], title: str = "Evaluation") -> Table:
    """The metrics as a rich table, each row saying what its number means."""
    n = metrics["num_images"]
    table = Table(title=escape(f"{title} ({metrics['split']} split, {n} images)"))
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_column("what it says")
    m = metrics
    rows = [
        ("negative ELBO", f"{m['neg_elbo']:.2f} nats", "bound on -log p(x), per image"),
        ("  reconstruction", f"{m['recon']:.2f} nats", "-log p(x|z), one z ~ q(z|x)"),
        ("  KL", f"{m['kl']:.2f} nats", "KL(q(z|x) || p(z)); ~0: collapse"),
        *(
            (f"    layer {i:02d}", f"{kl:.2f} nats", "~0: the layer collapsed")
            for i, kl in enumerate(m.get("kl_per_layer") or [])
        ),
        (f"IWAE NLL (k={m['iwae_k']})", f"{m['iwae_nll']:.2f} nats", "tighter -log p(x) estimate"),
        (
            "bits per dim",
            f"{m['bits_per_dim']:.4f}",
            "true bits per 8-bit subpixel (discrete likelihood)"
            if m.get("likelihood_kind") == "discrete"
            else "IWAE NLL / (dims*ln 2); continuous likelihood: not a code length",
        ),
        ("MSE", f"{m['mse']:.5f}", "posterior-mean reconstruction"),
        ("PSNR", f"{m['psnr']:.2f} dB", "mean over images; higher is better"),
        *(
            [("foreground IoU", f"{m['foreground_iou']:.3f}", "object masks vs reconstruction")]
            if "foreground_iou" in m
            else []
        ),
        (
            "active units",
            f"{m['active_units']} / {m['latent_dim']}",
            f"posterior-mean variance > {m.get('active_threshold', ACTIVITY_THRESHOLD):g}",
        ),
    ]
    if "mig" in m:
        rows.append(("MIG", f"{m['mig']:.3f}", "disentanglement, 0 to 1"))
        rows += [(f"  {name}", f"{gap:.3f}", "") for name, gap in m["mig_per_factor"].items()]
    if "fid" in m:
        rows.append(("FID", f"{m['fid']:.2f}", "prior samples vs images; lower is better"))
    rows += latent_likelihood_rows(m)  # the prior and the fitted samplers (vae_lit.sampling)
    for row in rows:
        table.add_row(*row)
    return table
