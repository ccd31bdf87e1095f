"""The DataModule every data set shares: each split is a uint8 array (N, C, H, W), in batches.

Subclasses only say how to get the arrays (`load_splits`). Keeping images as uint8 until they reach
the device makes loading a memory copy, never a decode.
"""

import logging
from typing import Any

import numpy as np
import torch
from omegaconf import OmegaConf
from pytorch_lightning import LightningDataModule
from torch.utils.data import DataLoader, Dataset

from vae_lit.data.cache import usable_cores
from vae_lit.data.device_loader import DeviceBatches
from vae_lit.errors import UserError

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


def recorded_data(given: Any, recorded: Any, source: str) -> Any:
    """The data config an entry point that reads a trained model's data uses: the model's own
    (`recorded`), with the command line's `data.root=/new` and the like on top; `data=<name>`
    (a config with its own `_target_`) replaces it."""
    if given is None:
        return recorded
    if "_target_" in given:
        return given
    if recorded is None:
        raise UserError(
            f"{source} records no data to change; pass data=<name> (e.g. data=sprites)"
        )
    return OmegaConf.merge(recorded, given)


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


def resolve_num_workers(num_workers: int | str) -> int:
    """`auto`: one worker per core beyond the one the training loop runs on, at most 4."""
    if num_workers == "auto":
        return min(4, usable_cores() - 1)
    if not str(num_workers).isdigit():
        raise UserError(f"data.num_workers={num_workers} must be auto or an integer >= 0")
    return int(num_workers)


CHUNK_BYTES = 256 * 2**20


def check_fits(nbytes: int, device: torch.device) -> None:
    """Refuse, in one line, a data set that would leave too little of the GPU for training."""
    if device.type != "cuda":
        return
    free, _ = torch.cuda.mem_get_info(device)
    if nbytes > 0.8 * free:  # the model, activations and optimizer need the rest
        raise UserError(
            f"data.on_device=true needs {nbytes / 2**30:.1f} GiB on {device} but only "
            f"{free / 2**30:.1f} GiB are free; set data.on_device=false (workers feed the GPU)"
        )


def choose_on_device(setting: bool | str, device: torch.device, nbytes: int) -> bool:
    """`data.on_device`: true, false, or auto: on a CUDA GPU, the data set on the device when it
    takes at most half of its free memory (batches then cost no host copy and no worker), else
    not; on a CPU never (the arrays already are where the model is)."""
    if isinstance(setting, bool):
        return setting
    if str(setting).lower() in ("true", "false"):
        return str(setting).lower() == "true"
    if setting != "auto":
        raise UserError(f"data.on_device={setting} must be auto, true or false")
    if device.type != "cuda":
        return False
    free, _ = torch.cuda.mem_get_info(device)
    return nbytes <= 0.5 * free


def copy_in_chunks(images: np.ndarray, device: torch.device) -> torch.Tensor:
    """A uint8 array (a memory map of the cache, say) on `device`, copied a chunk at a time into
    one preallocated tensor: the host never holds a second whole copy (13.7 GB for CelebA at
    150 px, in every DDP rank)."""
    out = torch.empty(images.shape, dtype=torch.uint8, device=device)
    rows = max(1, CHUNK_BYTES // max(1, images[0].nbytes if len(images) else 1))
    for start in range(0, len(images), rows):
        chunk = np.ascontiguousarray(images[start : start + rows])
        out[start : start + len(chunk)].copy_(torch.from_numpy(chunk))
    return out


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
        num_workers: int | str = 0,
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        seed: int = 0,
        on_device: bool | str = "auto",
    ):
        super().__init__()
        if int(batch_size) <= 0:
            raise UserError(f"data.batch_size={batch_size} must be a positive integer")
        if not (
            0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1
        ):
            raise UserError(
                f"data.val_fraction={val_fraction} and data.test_fraction={test_fraction} must be "
                "in [0, 1) and leave some images for training"
            )
        self.image_size, self.channels = int(image_size), int(channels)
        self.batch_size, self.num_workers = int(batch_size), resolve_num_workers(num_workers)
        self.val_fraction, self.test_fraction, self.seed = val_fraction, test_fraction, seed
        choose_on_device(on_device, torch.device("cpu"), 0)  # a bad value fails here, at once
        self.on_device: bool | str = on_device  # auto is decided in setup, on the trainer's device
        self.splits: dict[str, ImageArrayDataset] = {}
        self.device_images: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def load_splits(self) -> dict[str, ImageArrayDataset]:
        raise NotImplementedError

    @property
    def device(self) -> torch.device:
        """Where the model trains: the trainer's device, or the CPU outside a trainer."""
        trainer = getattr(self, "trainer", None)
        return trainer.strategy.root_device if trainer is not None else torch.device("cpu")

    def setup(self, stage: str | None = None) -> None:
        if not self.splits:
            self.splits = self.load_splits()
        if not isinstance(self.on_device, bool):
            self.on_device = self.decide_on_device(self.on_device)
        if self.on_device and not self.device_images:
            self.device_images = self.move_to_device(self.device)

    def decide_on_device(self, setting: str) -> bool:
        """`data.on_device=auto` on this run's device, the same answer in every DDP rank (a rank
        with less free memory says no for all); on a GPU without it, workers feed the batches."""
        arrays = {id(d.images): d.images for d in self.splits.values()}
        nbytes = sum(a.nbytes for a in arrays.values())
        decision = choose_on_device(setting, self.device, nbytes)
        trainer = getattr(self, "trainer", None)
        if trainer is not None and trainer.world_size > 1:
            decision = trainer.strategy.reduce_boolean_decision(decision, all=True)
        if self.device.type == "cuda":
            if not decision and self.num_workers == 0:
                self.num_workers = resolve_num_workers("auto")
            where = "on the GPU" if decision else f"in host memory, {self.num_workers} workers"
            log.info(f"data.on_device=auto: the {nbytes / 2**30:.2f} GiB of images {where}")
        return decision

    def move_to_device(self, device: torch.device) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Each split as (images, row indices) on `device`; splits of one array share one copy."""
        copies: dict[int, torch.Tensor] = {}
        moved = {}
        arrays = {id(d.images): d.images for d in self.splits.values()}
        check_fits(sum(a.nbytes for a in arrays.values()), device)
        for split, dataset in self.splits.items():
            key = id(dataset.images)
            if key not in copies:
                copies[key] = copy_in_chunks(dataset.images, device)
            moved[split] = (copies[key], torch.as_tensor(dataset.indices, device=device))
        return moved

    def dataloader(self, split: str, shuffle: bool = False) -> DataLoader | DeviceBatches:
        dataset = self.splits[split]
        drop_last = shuffle and len(dataset) > self.batch_size
        if self.on_device:
            trainer = getattr(self, "trainer", None)
            images, indices = self.device_images[split]
            return DeviceBatches(
                images,
                indices,
                self.batch_size,
                shuffle=shuffle,
                drop_last=drop_last,
                seed=self.seed,
                rank=trainer.global_rank if trainer is not None else 0,
                world_size=trainer.world_size if trainer is not None else 1,
            )
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle,
            drop_last=drop_last,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=self.device.type == "cuda",
            collate_fn=stack_batch,
        )

    def train_dataloader(self) -> DataLoader:
        return self.dataloader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self.dataloader("val")

    def test_dataloader(self) -> DataLoader:
        return self.dataloader("test")
