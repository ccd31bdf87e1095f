"""Training entry point: `python -m vae_lit.train [overrides]`.

Composes the Hydra config, builds datamodule, model, callbacks, loggers and trainer in that order, fits,
tests, and returns the metric a sweeper optimises (`optimized_metric`).
"""

import logging
import sys
from typing import Any

import hydra
import pytorch_lightning as pl
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning import Callback
from pytorch_lightning.loggers import Logger

from vae_lit.callbacks.run_config import RunConfigInCheckpoint
from vae_lit.errors import find_user_error
from vae_lit.trainer import map_gpus

log = logging.getLogger(__name__)


def instantiate_group(group: DictConfig | None) -> list[Any]:
    """Build every entry of a config group that holds several objects (callbacks, loggers)."""
    if not group:
        return []
    return [instantiate(entry) for entry in group.values() if entry and "_target_" in entry]


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit (and test) a model as the config says; return the final metrics as floats."""
    if cfg.get("seed") is not None:
        pl.seed_everything(cfg.seed, workers=True)
    trainer_cfg = map_gpus(cfg.trainer)  # fails fast on a missing GPU, before any data is touched

    log.info(f"Instantiating datamodule <{cfg.data._target_}>")
    datamodule: pl.LightningDataModule = instantiate(cfg.data)
    log.info(f"Instantiating model <{cfg.model._target_}>")
    model: pl.LightningModule = instantiate(cfg.model)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    callbacks: list[Callback] = instantiate_group(cfg.get("callbacks"))
    callbacks.append(RunConfigInCheckpoint(resolved))
    loggers: list[Logger] = instantiate_group(cfg.get("logger"))
    log.info(f"Instantiating trainer <{trainer_cfg._target_}>")
    trainer: pl.Trainer = instantiate(trainer_cfg, callbacks=callbacks, logger=loggers or False)
    for logger in loggers:
        logger.log_hyperparams(resolved)

    if cfg.get("train"):
        trainer.fit(model=model, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    if cfg.get("test"):
        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        trainer.test(model=model, datamodule=datamodule, ckpt_path=best or None)
        metrics.update({k: float(v) for k, v in trainer.callback_metrics.items()})
    if trainer.checkpoint_callback and trainer.checkpoint_callback.best_model_path:
        log.info(f"Best checkpoint: {trainer.checkpoint_callback.best_model_path}")
    return metrics


@hydra.main(version_base="1.3", config_path="../../configs", config_name="train.yaml")
def main(cfg: DictConfig) -> float | None:
    try:
        metrics = train(cfg)
    except Exception as exc:  # a user's mistake is one line; a bug keeps its traceback
        error = find_user_error(exc)
        if error is None:
            raise
        print(f"vae-lit: error: {error}", file=sys.stderr)
        sys.exit(2)
    return metrics.get(cfg.get("optimized_metric"))


if __name__ == "__main__":
    main()
