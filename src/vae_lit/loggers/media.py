"""Pictures sent to every attached logger that shows them (W&B, TensorBoard)."""

from pathlib import Path

import numpy as np
from pytorch_lightning import Trainer
from pytorch_lightning.loggers import TensorBoardLogger, WandbLogger


def log_image(trainer: Trainer, key: str, image: np.ndarray, caption: str) -> None:
    """Send one (H, W, 3) uint8 picture to every attached logger that shows images."""
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            logger.log_image(key=key, images=[image], step=trainer.global_step, caption=[caption])
        elif isinstance(logger, TensorBoardLogger):
            logger.experiment.add_image(key, image, trainer.global_step, dataformats="HWC")


def log_gif(trainer: Trainer, key: str, path: Path, caption: str) -> None:
    """Send a GIF file to W&B as a video (TensorBoard shows the same frames as its image steps)."""
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            logger.log_video(
                key=key,
                videos=[str(path)],
                step=trainer.global_step,
                caption=[caption],
                format=["gif"],
            )
