"""Evaluation entry point: `python -m vae_lit.eval ckpt=<path> [overrides]`.

Scores a checkpoint on the test split with numbers that expose what a loss curve hides: the
importance-weighted likelihood (a loose ELBO undersells a model), reconstruction error, active
units (posterior collapse) and, where the data has ground-truth factors, the mutual information
gap. Prints a table, writes `eval.json` next to the checkpoint, logs `eval/*` to the run's loggers.
"""

import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from hydra.utils import get_object, instantiate
from omegaconf import DictConfig, OmegaConf, open_dict
from pytorch_lightning import LightningDataModule
from pytorch_lightning.loggers import CSVLogger, Logger
from rich.console import Console
from rich.markup import escape
from rich.progress import track
from rich.table import Table

from vae_lit.atomic_write import check_output_file, write_text_atomic
from vae_lit.checkpoint import checkpoint_step, load_checkpoint
from vae_lit.config_checks import run_cli
from vae_lit.data.datamodule import SPLITS
from vae_lit.data.sprites import FACTOR_NAMES
from vae_lit.data.sprites_datamodule import SpritesDataModule
from vae_lit.errors import UserError, exit_on_user_error
from vae_lit.lit_module import VAELitModule, to_float_images
from vae_lit.loggers import finish_wandb
from vae_lit.metrics.active_units import ACTIVITY_THRESHOLD, ActiveUnits
from vae_lit.metrics.foreground_iou import foreground_iou_per_image
from vae_lit.metrics.image_quality import mse_per_image, psnr_per_image
from vae_lit.metrics.iwae import importance_weighted_log_likelihood
from vae_lit.metrics.mig import NUM_BINS, factor_gaps
from vae_lit.objectives import elbo_terms, forward_pass
from vae_lit.samplers import latent_likelihood_rows, latent_log_likelihoods
from vae_lit.trusted_config import check_targets
from vae_lit.vq_eval import evaluate_vq_model, is_vq_model, vq_metrics_table

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


def factor_names(datamodule: LightningDataModule, num_factors: int) -> list[str]:
    """Names for the columns of `datamodule.factors`, for the per-factor MIG rows."""
    if isinstance(datamodule, SpritesDataModule):
        return list(FACTOR_NAMES)
    return [f"factor_{i}" for i in range(num_factors)]


@torch.no_grad()
def evaluate_model(
    module: VAELitModule,
    datamodule: LightningDataModule,
    split: str = "test",
    k: int = 100,
    max_decodes: int = 512,
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
    active = ActiveUnits(module.latent_dim, active_threshold).to(device)
    keys = ("neg_elbo", "recon", "kl", "iwae_ll", "mse", "psnr", "foreground_iou")
    sums = {key: torch.zeros((), dtype=torch.float64, device=device) for key in keys}
    means, count = [], 0
    if fid is not None:
        from vae_lit.metrics.fid import as_rgb
    loader = getattr(datamodule, f"{split}_dataloader")()
    total = len(loader) if hasattr(loader, "__len__") else None
    for batch in track(loader, description=f"Evaluating (IWAE k={k})", total=total):
        images = to_float_images(batch.to(device, non_blocking=True))
        n = images.shape[0]
        out = forward_pass(images, module.net, module.likelihood)
        terms = elbo_terms(images, out, module.prior)
        reconstructions = module.decode(out.mu)
        iwae = importance_weighted_log_likelihood(
            module.net, module.likelihood, module.prior, images, k, max_decodes, generator
        )
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
        active.update(out.mu)
        means.append(out.mu.float().cpu())
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
        "likelihood": module.likelihood.name,
        "objective": module.objective.name,
        "prior": module.prior.name,
        "mse": totals["mse"],
        "psnr": totals["psnr"],
        "active_units": int(active.compute()),
        "active_threshold": active_threshold,
        "latent_dim": module.latent_dim,
    }
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
    rows += latent_likelihood_rows(m)  # the prior and the fitted samplers (vae_lit.samplers)
    for row in rows:
        table.add_row(*row)
    return table


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
    return f"{device.type} ({torch.get_num_threads()} threads)"


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
    max_decodes: int = 512,
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


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Evaluate `cfg.ckpt` as the config says: print the table, write the JSON, return metrics."""
    if OmegaConf.is_missing(cfg, "ckpt"):
        raise UserError("ckpt is not set; pass ckpt=<run dir>/checkpoints/last.ckpt")
    if cfg.split not in SPLITS:
        raise UserError(f"split={cfg.split!r} is unknown; use one of: {', '.join(SPLITS)}")
    device = resolve_device(str(cfg.device))
    ckpt = Path(cfg.ckpt)
    beside = ckpt if ckpt.is_dir() else ckpt.parent  # a model folder keeps its eval.json inside
    json_path = Path(cfg.eval.json) if cfg.eval.get("json") else beside / "eval.json"
    check_output_file(json_path, "eval.json")  # before the evaluation, not after it
    module, run_cfg = load_checkpoint(ckpt, map_location=str(device))
    if cfg.eval.log_to_run:  # a stranger's logger config is refused before the work, not after
        check_targets(run_cfg.get("logger") or {}, f"checkpoint {ckpt}", "logger", "logger")
    module.to(device)
    data_cfg = cfg.get("data") or run_cfg.get("data")
    if data_cfg is None:
        raise UserError(f"{ckpt} records no data; pass data=<name> (e.g. data=sprites)")
    if cfg.eval.get("batch_size"):
        data_cfg = data_cfg.copy()
        with open_dict(data_cfg):
            data_cfg.batch_size = cfg.eval.batch_size
    log.info(f"Instantiating datamodule <{data_cfg._target_}>")
    datamodule: LightningDataModule = instantiate(data_cfg)
    net = getattr(module, "vqvae", module).net  # a VQ-VAE prior's checkpoint: its VQ-VAE's
    if (datamodule.image_size, datamodule.channels) != (net.image_size, net.channels):
        raise UserError(
            f"data.image_size={datamodule.image_size} and data.channels={datamodule.channels} "
            f"do not match the model ({net.image_size} px, {net.channels} channels); leave data "
            "unset to use the checkpoint's data"
        )
    datamodule.setup("test")

    fid = None
    if cfg.eval.fid:
        from vae_lit.metrics.fid import FIDUnavailable, fid_metric

        try:
            fid = fid_metric(cfg.eval.get("fid_weights")).to(device)
        except FIDUnavailable as exc:
            log.warning(f"FID skipped: {exc}")

    what = bound_name(module, int(cfg.eval.k))
    log.info(f"Evaluating {ckpt} on the {cfg.split} split ({what}, {device})")
    table = metrics_table
    if is_vq_model(module):  # a VQ-VAE, or a prior over its codes (vae_lit.train_prior)
        metrics = evaluate_vq_model(
            module, datamodule, cfg.split, int(cfg.eval.get("prior_samples", 64)), int(cfg.seed)
        )
        table = vq_metrics_table
    else:
        metrics = evaluate_model(
            module,
            datamodule,
            split=cfg.split,
            k=int(cfg.eval.k),
            max_decodes=int(cfg.eval.max_decodes),
            active_threshold=float(cfg.eval.active_threshold),
            mig_bins=int(cfg.eval.mig_bins),
            fid=fid,
            seed=int(cfg.seed),
        )
        # how well each fitted sampler (and the prior) covers the split's posterior means
        samplers, fit = cfg.get("samplers"), list(cfg.eval.get("samplers") or [])
        metrics.update(latent_log_likelihoods(module, datamodule, samplers, ckpt, cfg.split, fit))
    step = checkpoint_step(ckpt)
    metrics = {"checkpoint": str(ckpt), "global_step": step, **metrics}

    Console().print(table(metrics, title=f"vae-lit eval: {ckpt}"))
    write_text_atomic(json_path, json.dumps(metrics, indent=2) + "\n")
    log.info(f"Wrote {json_path}")
    if cfg.eval.log_to_run and in_its_run_dir(ckpt, run_cfg):
        log_to_run_loggers(run_cfg, metrics, step, source=f"checkpoint {ckpt}")
    return metrics


@hydra.main(version_base="1.3", config_path="../../configs", config_name="eval.yaml")
def main(cfg: DictConfig) -> None:
    exit_on_user_error(lambda: evaluate(cfg))


if __name__ == "__main__":
    run_cli(main)  # a typo in a key or a config name is one line too
