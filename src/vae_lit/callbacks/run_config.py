"""Store the run's resolved Hydra config in every checkpoint, so a checkpoint alone rebuilds its
model and data (see `vae_lit.persistence.checkpoint`)."""

from typing import Any

from pytorch_lightning import Callback, LightningModule, Trainer

from vae_lit.persistence.file_layout import CONFIG_KEY


class RunConfigInCheckpoint(Callback):
    def __init__(self, config: dict[str, Any]):
        self.config = config

    def on_save_checkpoint(
        self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        checkpoint[CONFIG_KEY] = self.config
