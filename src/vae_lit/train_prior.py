"""Train a PixelCNN prior over a VQ-VAE's codes: `python -m vae_lit.train_prior ckpt=<vqvae ckpt>`.

The VQ-VAE's codes of its own data are extracted once (cached beside its checkpoint); the prior
trains on them in its own run dir (`logs/train_prior/runs/<time>/`). Its checkpoint records the
VQ-VAE's path and SHA-256 and the VQ-VAE's data config, so `vae_lit.sample` and `vae_lit.eval`
take the prior's checkpoint alone.
"""

import logging
import os
from pathlib import Path

import hydra
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from vae_lit.callbacks.run_config import RunConfigInCheckpoint
from vae_lit.data.datamodule import recorded_data
from vae_lit.errors import UserError, exit_on_user_error
from vae_lit.loggers.wandb_run import finish_wandb
from vae_lit.model.code_prior import cached_codes, code_loader, load_vqvae
from vae_lit.persistence.atomic_write import use_atomic_checkpoints
from vae_lit.persistence.checkpoint import VQVAE_FROM_CHECKPOINT
from vae_lit.persistence.fingerprint import fingerprint
from vae_lit.runs.config_checks import not_given, run_cli
from vae_lit.runs.resume import resume_path
from vae_lit.runs.run_dir import RunStarted, claim, is_main_process, refuse_overwrite, release
from vae_lit.runs.trainer import build_trainer, instantiate_group

log = logging.getLogger(__name__)


def this_process_gpu() -> torch.device:
    """The GPU this process will train on: under DDP each rank its own (LOCAL_RANK, which
    Lightning's launcher and torchrun set; SLURM_LOCALID under srun), not all of them on GPU 0."""
    local_rank = os.environ.get("LOCAL_RANK", os.environ.get("SLURM_LOCALID", "0"))
    return torch.device("cuda", int(local_rank) % max(torch.cuda.device_count(), 1))


def train_prior(cfg: DictConfig) -> dict[str, float]:
    """Fit (and test) the prior the config describes; return the final metrics as floats. Its
    run dir is guarded as `train`'s: one run at a time (a lock), no silent overwrite of an
    earlier run, `resume=auto` continues one."""
    if not is_main_process():  # DDP ranks 1..N work in rank 0's dir, under its lock
        return fit_prior(cfg)
    claim(cfg.paths.output_dir)  # a second run into this dir stops here, with one line
    failed = True
    try:
        metrics = fit_prior(cfg)
        failed = False
    finally:
        release(cfg.paths.output_dir, failed=failed)  # a failed start leaves the dir as it was
    return metrics


def fit_prior(cfg: DictConfig) -> dict[str, float]:
    if not_given(cfg, "ckpt"):
        raise UserError(
            "ckpt is not set; pass the VQ-VAE's checkpoint: ckpt=<run dir>/checkpoints/last.ckpt"
        )
    if int(cfg.batch_size) <= 0:
        raise UserError(f"batch_size={cfg.batch_size} must be a positive integer")
    if cfg.get("seed") is not None:
        pl.seed_everything(cfg.seed, workers=True)
    ckpt = Path(cfg.ckpt).resolve()
    vqvae, vq_cfg = load_vqvae(ckpt)
    vq_cfg.data = recorded_data(cfg.get("data"), vq_cfg.get("data"), str(ckpt))  # data.root=
    if torch.cuda.is_available():  # extracting the codes is one encoder pass: on a GPU if any
        vqvae.to(this_process_gpu())

    def datamodule():
        log.info(f"Instantiating the VQ-VAE's datamodule <{vq_cfg.data._target_}>")
        data = instantiate(vq_cfg.data)
        data.setup("fit")
        return data

    codes = cached_codes(vqvae, ckpt, vq_cfg.data, datamodule)
    if len(codes["train"]) == 0 or len(codes["val"]) == 0:
        raise UserError(
            f"the VQ-VAE's data has {len(codes['train'])} training and {len(codes['val'])} "
            "validation images; the prior needs both (data.val_fraction > 0)"
        )
    with open_dict(cfg):  # the prior's checkpoint: the VQ-VAE's reference and data
        cfg.model.vqvae_ckpt = str(ckpt)
        cfg.model.vqvae_sha256 = fingerprint(ckpt)
        cfg.model.net.num_codes = vqvae.num_codes
        cfg.data = vq_cfg.data
        # found again after logs/ moved: relative to this run's checkpoints/
        checkpoints = Path(cfg.paths.output_dir).resolve() / "checkpoints"
        cfg[VQVAE_FROM_CHECKPOINT] = os.path.relpath(ckpt, checkpoints)
    log.info(f"Instantiating model <{cfg.model._target_}>")
    model = instantiate(cfg.model)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    callbacks = instantiate_group(cfg.get("callbacks"))
    callbacks.append(RunConfigInCheckpoint(resolved))
    # the config to the loggers once training starts: a start that fails changes nothing on disk
    callbacks.append(RunStarted(cfg.paths.output_dir, resolved))
    loggers = instantiate_group(cfg.get("logger"))
    trainer = build_trainer(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    use_atomic_checkpoints(trainer)  # a full disk or a kill never leaves half a checkpoint
    ckpt_path = resume_path(cfg, trainer)  # resume=auto: this run dir's last checkpoint, if any
    refuse_overwrite(cfg.paths.output_dir, resuming=ckpt_path is not None)
    batch_size = int(cfg.batch_size)
    try:
        trainer.fit(
            model,
            train_dataloaders=code_loader(codes["train"], batch_size, shuffle=True),
            val_dataloaders=code_loader(codes["val"], batch_size, shuffle=False),
            ckpt_path=ckpt_path,
            weights_only=True,
        )
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
        if cfg.get("test") and len(codes["test"]):
            best = (
                trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
            )
            trainer.test(
                model,
                dataloaders=code_loader(codes["test"], batch_size, shuffle=False),
                ckpt_path=best or None,
                weights_only=True,
            )
            metrics.update({k: float(v) for k, v in trainer.callback_metrics.items()})
    finally:
        finish_wandb(loggers)
    callback = trainer.checkpoint_callback
    if trainer.is_global_zero and callback and callback.best_model_path:
        log.info(
            f"Best checkpoint: {callback.best_model_path}; sample with: python -m vae_lit.sample "
            f"ckpt={callback.best_model_path}"
        )
    return metrics


@hydra.main(version_base="1.3", config_path="../../configs", config_name="train_prior.yaml")
def main(cfg: DictConfig) -> None:
    exit_on_user_error(lambda: train_prior(cfg))


if __name__ == "__main__":
    run_cli(main, model_data=True)  # a typo is one line; data.root=/new works
