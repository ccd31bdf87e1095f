"""Data sets as LightningDataModules serving uint8 image batches."""

from vae_lit.data.datamodule import ImageArrayDataset, ImageDataModule
from vae_lit.data.sprites_datamodule import SpritesDataModule

__all__ = ["ImageArrayDataset", "ImageDataModule", "SpritesDataModule"]
