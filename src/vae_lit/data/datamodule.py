"""The DataModule every data set shares: each split is a uint8 array (N, C, H, W) served in batches.

Subclasses only say how to get the arrays (`load_splits`). Keeping images as uint8 until they reach the
device makes loading a memory copy, never a decode.
"""

import numpy as np
import torch
from pytorch_lightning import LightningDataModule
from torch.utils.data import DataLoader, Dataset

from vae_lit.errors import UserError

SPLITS = ("train", "val", "test")


class ImageArrayDataset(Dataset):
    """Rows `indices` of a uint8 image array (in memory or memory-mapped) as uint8 tensors."""

    def __init__(self, images: np.ndarray, indices: np.ndarray | None = None):
        self.images = images
        self.indices = np.arange(len(images)) if indices is None else np.asarray(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.from_numpy(np.array(self.images[self.indices[i]]))

    def __getitems__(self, batch: list[int]) -> torch.Tensor:
        """A whole batch in one fancy-indexing copy instead of one small copy per image."""
        rows = self.indices[np.asarray(batch)]
        order = np.argsort(rows)  # sorted reads are sequential on a memory map
        images = np.empty((len(rows), *self.images.shape[1:]), dtype=np.uint8)
        images[order] = self.images[rows[order]]
        return torch.from_numpy(images)


def stack_batch(batch):
    """Collate for `__getitems__`: the batch already is one tensor."""
    return batch if isinstance(batch, torch.Tensor) else torch.stack(batch)


def split_indices(num_items: int, val_fraction: float, test_fraction: float, seed: int):
    """A seeded random train/val/test partition of range(num_items)."""
    order = np.random.default_rng(seed).permutation(num_items)
    num_val, num_test = round(num_items * val_fraction), round(num_items * test_fraction)
    return {
        "val": np.sort(order[:num_val]),
        "test": np.sort(order[num_val : num_val + num_test]),
        "train": np.sort(order[num_val + num_test :]),
    }


class ImageDataModule(LightningDataModule):
    """Base DataModule: batches of uint8 images from per-split arrays."""

    def __init__(
        self,
        image_size: int,
        channels: int = 3,
        batch_size: int = 64,
        num_workers: int = 0,
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        seed: int = 0,
    ):
        super().__init__()
        if int(batch_size) <= 0:
            raise UserError(f"data.batch_size={batch_size} must be a positive integer")
        if not (
            0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1
        ):
            raise UserError(
                f"data.val_fraction={val_fraction} and data.test_fraction={test_fraction} must be in "
                "[0, 1) and leave some images for training"
            )
        self.image_size, self.channels = int(image_size), int(channels)
        self.batch_size, self.num_workers = int(batch_size), int(num_workers)
        self.val_fraction, self.test_fraction, self.seed = val_fraction, test_fraction, seed
        self.splits: dict[str, ImageArrayDataset] = {}

    def load_splits(self) -> dict[str, ImageArrayDataset]:
        raise NotImplementedError

    def setup(self, stage: str | None = None) -> None:
        if not self.splits:
            self.splits = self.load_splits()

    def dataloader(self, split: str, shuffle: bool = False) -> DataLoader:
        dataset = self.splits[split]
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle,
            drop_last=shuffle and len(dataset) > self.batch_size,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
            collate_fn=stack_batch,
        )

    def train_dataloader(self) -> DataLoader:
        return self.dataloader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self.dataloader("val")

    def test_dataloader(self) -> DataLoader:
        return self.dataloader("test")
