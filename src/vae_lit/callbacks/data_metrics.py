"""The metrics that only some data sets can give, logged beside the model's own:

- `val/foreground_iou` and `test/foreground_iou` on sprites: whether the reconstructions have the
  right shapes (the validation curve shows when the shapes are learned);
- `test/mig` (and `test/mig/<factor>`) where the data has ground-truth factors: disentanglement.

Both score the posterior-mean code of each image, as `vae_lit.eval` does.
"""

import numpy as np
import torch
from pytorch_lightning import Callback, LightningModule, Trainer

from vae_lit.data.sprites import FACTOR_NAMES
from vae_lit.data.sprites_datamodule import SpritesDataModule
from vae_lit.metrics.foreground_iou import foreground_iou_per_image
from vae_lit.metrics.mig import NUM_BINS, factor_gaps
from vae_lit.model.vae_module import to_float_images


class DataMetrics(Callback):
    """Foreground IoU on sprites (validation and test) and MIG on data with factors (test).

    MIG needs every test code in data order, so it is computed in single-process runs only.
    """

    def __init__(self, mig_bins: int = NUM_BINS):
        self.mig_bins = mig_bins
        self.codes: list[torch.Tensor] = []

    def on_validation_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs,
        batch: torch.Tensor,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if not trainer.sanity_checking and isinstance(trainer.datamodule, SpritesDataModule):
            images = to_float_images(batch)
            self.log_foreground_iou(pl_module, "val", images, pl_module.encode(images)[0])

    def on_test_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.codes = []

    def on_test_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs,
        batch: torch.Tensor,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        images = to_float_images(batch)
        mu, _ = pl_module.encode(images)
        if self.test_factors(trainer) is not None:
            self.codes.append(mu.float().cpu())
        if isinstance(trainer.datamodule, SpritesDataModule):
            self.log_foreground_iou(pl_module, "test", images, mu)

    @staticmethod
    def log_foreground_iou(
        pl_module: LightningModule, stage: str, images: torch.Tensor, mu: torch.Tensor
    ) -> None:
        iou = foreground_iou_per_image(images, pl_module.decode(mu))
        pl_module.log(
            f"{stage}/foreground_iou",
            iou.mean(),
            on_epoch=True,
            batch_size=images.shape[0],
            sync_dist=True,
        )

    def on_test_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        factors = self.test_factors(trainer)
        if factors is None or not self.codes:
            return
        codes, self.codes = torch.cat(self.codes).numpy(), []
        if len(codes) != len(factors):  # limit_test_batches: the codes no longer match
            return
        gaps = factor_gaps(codes, factors, self.mig_bins)
        if np.isnan(gaps).all():
            return
        pl_module.log("test/mig", float(np.nanmean(gaps)))
        names = self.factor_names(trainer, len(gaps))
        pl_module.log_dict(
            {
                f"test/mig/{name}": float(gap)
                for name, gap in zip(names, gaps, strict=True)
                if not np.isnan(gap)
            }
        )

    @staticmethod
    def test_factors(trainer: Trainer) -> np.ndarray | None:
        if trainer.world_size > 1:
            return None
        factors = getattr(trainer.datamodule, "factors", None) or {}
        return factors.get("test")

    @staticmethod
    def factor_names(trainer: Trainer, count: int) -> list[str]:
        if isinstance(trainer.datamodule, SpritesDataModule):
            return list(FACTOR_NAMES)
        return [f"factor_{i}" for i in range(count)]
