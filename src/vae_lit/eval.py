"""Evaluation entry point: `python -m vae_lit.eval ckpt=<path> [overrides]`.

Scores a checkpoint on the test split with numbers that expose what a loss curve hides: the
importance-weighted likelihood (a loose ELBO undersells a model), reconstruction error, active
units (posterior collapse) and, where the data has ground-truth factors, the mutual information
gap. Prints a table, writes `eval.json` next to the checkpoint, logs `eval/*` to the run's loggers.
"""

import json
import logging
from pathlib import Path
from typing import Any

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig, open_dict
from pytorch_lightning import LightningDataModule
from rich.console import Console

from vae_lit.callbacks.image_grids import save_png
from vae_lit.callbacks.kl_per_layer import kl_chart, layer_labels
from vae_lit.data.datamodule import SPLITS, recorded_data
from vae_lit.errors import UserError, exit_on_user_error
from vae_lit.evaluation.checkpoint_eval import (
    bound_name,
    in_its_run_dir,
    log_to_run_loggers,
    resolve_device,
)
from vae_lit.evaluation.latent_fit import latent_log_likelihoods
from vae_lit.evaluation.vae import evaluate_model, is_hierarchical, metrics_table
from vae_lit.evaluation.vq import evaluate_vq_model, is_vq_model, vq_metrics_table
from vae_lit.persistence.atomic_write import check_output_file, write_text_atomic
from vae_lit.persistence.checkpoint import checkpoint_step, load_checkpoint
from vae_lit.persistence.trusted_config import check_targets
from vae_lit.runs.config_checks import check_eval_options, not_given, run_cli

log = logging.getLogger(__name__)


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Evaluate `cfg.ckpt` as the config says: print the table, write the JSON, return metrics."""
    if not_given(cfg, "ckpt"):
        raise UserError("ckpt is not set; pass ckpt=<run dir>/checkpoints/last.ckpt")
    check_eval_options(cfg)  # every option before the work, not after it
    if cfg.split not in SPLITS:
        raise UserError(f"split={cfg.split!r} is unknown; use one of: {', '.join(SPLITS)}")
    device = resolve_device(str(cfg.device))
    ckpt = Path(cfg.ckpt)
    beside = ckpt if ckpt.is_dir() else ckpt.parent  # a model folder keeps its eval.json inside
    json_path = Path(cfg.eval.json) if cfg.eval.get("json") else beside / "eval.json"
    check_output_file(json_path, "eval.json")  # before the evaluation, not after it
    module, run_cfg = load_checkpoint(ckpt, map_location=str(device), vqvae=cfg.get("vqvae"))
    if cfg.eval.log_to_run:  # a stranger's logger config is refused before the work, not after
        check_targets(run_cfg.get("logger") or {}, f"checkpoint {ckpt}", "logger", "logger")
    module.to(device)
    data_cfg = recorded_data(cfg.get("data"), run_cfg.get("data"), str(ckpt))  # data.root=/new
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
            max_decodes=cfg.eval.max_decodes,
            active_threshold=float(cfg.eval.active_threshold),
            mig_bins=int(cfg.eval.mig_bins),
            fid=fid,
            seed=int(cfg.seed),
        )
        if is_hierarchical(module):  # the samplers fit one latent vector
            log.info("Samplers skipped: a hierarchical VAE has no single latent vector to fit")
        else:  # how well each fitted sampler (and the prior) covers the split's posterior means
            samplers, fit = cfg.get("samplers"), list(cfg.eval.get("samplers") or [])
            metrics.update(
                latent_log_likelihoods(module, datamodule, samplers, ckpt, cfg.split, fit)
            )
    step = checkpoint_step(ckpt)
    metrics = {"checkpoint": str(ckpt), "global_step": step, **metrics}

    Console().print(table(metrics, title=f"vae-lit eval: {ckpt}"))
    write_text_atomic(json_path, json.dumps(metrics, indent=2) + "\n")
    log.info(f"Wrote {json_path}")
    if "kl_per_layer" in metrics:  # a hierarchical VAE: which layers carry information
        labels = layer_labels(module.net.latent_shapes)
        title = f"KL per latent layer, {cfg.split} split, step {step}"
        chart = json_path.with_name(json_path.stem + "_kl_per_layer.png")
        save_png(kl_chart(metrics["kl_per_layer"], labels, title), chart)
        log.info(f"Wrote {chart}")
    if cfg.eval.log_to_run and in_its_run_dir(ckpt, run_cfg):
        log_to_run_loggers(run_cfg, metrics, step, source=f"checkpoint {ckpt}")
    return metrics


@hydra.main(version_base="1.3", config_path="../../configs", config_name="eval.yaml")
def main(cfg: DictConfig) -> None:
    exit_on_user_error(lambda: evaluate(cfg))


if __name__ == "__main__":
    run_cli(main, model_data=True)  # a typo is one line; data.root=/new works
