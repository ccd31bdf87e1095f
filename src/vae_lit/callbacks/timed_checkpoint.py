"""A checkpoint every few minutes of training, none overwritten: the points of a learning curve
(docs/make_learning_curve.sh), or snapshots of a long run. Lightning's own
`ModelCheckpoint(train_time_interval=...)` never fires for a module that optimizes manually (the
hierarchical VAE) in Lightning 2.6, so this one does the timing itself, alike for every model."""

import time
from pathlib import Path

from pytorch_lightning import Callback, LightningModule, Trainer

from vae_lit.errors import UserError


class TimedCheckpoint(Callback):
    """After the first training batch that ends `minutes` after the last save (or the start):
    `<dirpath>/step_<global step>.ckpt`, written like every checkpoint (temp name, then rename)."""

    def __init__(self, dirpath: str, minutes: float):
        if not minutes > 0:
            raise UserError(
                f"callbacks.timed_checkpoint.minutes={minutes} must be a positive number of "
                "minutes between two checkpoints"
            )
        self.dirpath = Path(dirpath)
        self.seconds = 60 * minutes
        self.last_save = None

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.last_save = time.monotonic()

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args) -> None:
        now = time.monotonic()
        # rank 0's clock decides for every rank: saving is collective under DDP
        due = trainer.strategy.broadcast(now - self.last_save >= self.seconds)
        if not due:
            return
        self.last_save = now
        trainer.save_checkpoint(self.dirpath / f"step_{trainer.global_step:06d}.ckpt")
