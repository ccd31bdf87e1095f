"""Data sets as LightningDataModules serving uint8 image batches.

The classes are imported on first use, so the light modules (image decoding, the decoded cache)
load without torch and Lightning: a process that only builds a cache starts in half a second.
"""

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from vae_lit.data.celeba import CelebADataModule
    from vae_lit.data.datamodule import ImageArrayDataset, ImageDataModule
    from vae_lit.data.folder import ImageFolderDataModule
    from vae_lit.data.sprites_datamodule import SpritesDataModule

_HOMES = {
    "CelebADataModule": "vae_lit.data.celeba",
    "ImageArrayDataset": "vae_lit.data.datamodule",
    "ImageDataModule": "vae_lit.data.datamodule",
    "ImageFolderDataModule": "vae_lit.data.folder",
    "SpritesDataModule": "vae_lit.data.sprites_datamodule",
}
__all__ = [
    "CelebADataModule",
    "ImageArrayDataset",
    "ImageDataModule",
    "ImageFolderDataModule",
    "SpritesDataModule",
]


def __getattr__(name: str):
    if name in _HOMES:
        return getattr(importlib.import_module(_HOMES[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
