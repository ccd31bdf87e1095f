"""`data=folder`: any folder of images, searched recursively, decoded once into the cache.

An entry that cannot be read (a dangling symlink, a symlink loop, a file that does not decode) is
skipped and counted in one warning, never the end of the run. A file name that is not valid UTF-8
is read like any other.
"""

import logging
from pathlib import Path

import numpy as np

from vae_lit.data.cache import DecodedImages, load_or_build
from vae_lit.data.datamodule import ImageArrayDataset, ImageDataModule, split_indices
from vae_lit.data.image_files import IMAGE_EXTENSIONS, RESIZE_MODES, find_images, printable
from vae_lit.errors import UserError

log = logging.getLogger(__name__)

EXTENSIONS = ", ".join(ext.lstrip(".") for ext in IMAGE_EXTENSIONS)
SKIPPED_NAMED = 5  # how many skipped files the warning names


class ImageFolderDataModule(ImageDataModule):
    """Images under `root` (jpg, jpeg, png, webp, bmp, in any subfolder), resized to a square.

    Splits are a seeded random partition by `val_fraction` / `test_fraction`. Subclasses for named
    data sets say where their images are (`locate`) and how they split (`assign_splits`).
    """

    def __init__(
        self,
        root: str,
        image_size: int = 150,
        channels: int = 3,
        resize_mode: str = "squash",
        cache_dir: str | None = None,
        in_memory: bool = False,
        **kwargs,
    ):
        super().__init__(image_size=image_size, channels=channels, **kwargs)
        if self.image_size <= 0:
            raise UserError(f"data.image_size={image_size} must be a positive integer")
        if self.channels not in (1, 3):
            raise UserError(f"data.channels={channels} must be 1 (grayscale) or 3 (RGB)")
        if resize_mode not in RESIZE_MODES:
            raise UserError(
                f"data.resize_mode={resize_mode} must be one of {', '.join(RESIZE_MODES)}"
            )
        self.root = Path(str(root)).expanduser()
        self.resize_mode = resize_mode
        self.cache_dir = cache_dir
        self.in_memory = bool(in_memory)
        self.files: dict[str, list[str]] = {}  # per split, the file behind each image

    def layout(self) -> str:
        """The expected layout, for error messages."""
        return f"a folder of images ({EXTENSIONS}; subfolders are searched)"

    def locate(self) -> Path:
        """The folder the images are in; raises UserError naming the expected layout."""
        if not self.root.is_dir():
            what = "is not a folder" if self.root.exists() else "does not exist"
            raise UserError(f"data.root={self.root} {what}; expected {self.layout()}")
        return self.root

    def list_files(self, image_dir: Path) -> list[str]:
        files = find_images(image_dir)
        if not files:
            raise UserError(
                f"data.root={self.root} holds no image files; expected {self.layout()}"
            )
        return files

    def assign_splits(self, files: list[str]) -> dict[str, np.ndarray]:
        """Row indices of each split: a seeded random partition of the decoded images."""
        return split_indices(len(files), self.val_fraction, self.test_fraction, self.seed)

    def decode(self, image_dir: Path, files: list[str]) -> DecodedImages:
        decoded = load_or_build(
            image_dir,
            files,
            self.image_size,
            self.channels,
            self.resize_mode,
            cache_dir=self.cache_dir,
        )
        if decoded.skipped:
            shown = decoded.skipped[:SKIPPED_NAMED]
            named = ", ".join(f"{printable(name)} ({printable(reason)})" for name, reason in shown)
            more = len(decoded.skipped) - len(shown)
            named += f" and {more} more" if more else ""
            log.warning(
                f"Skipped {len(decoded.skipped)} of {len(files)} image files under {image_dir} "
                f"that do not decode or cannot be opened: {named}"
            )
        if not decoded.files:
            first, reason = decoded.skipped[0]
            raise UserError(
                f"data.root={self.root}: none of its {len(files)} image files decodes "
                f"(first: {printable(first)}: {printable(reason)}); expected {self.layout()}"
            )
        return decoded

    def load_splits(self) -> dict[str, ImageArrayDataset]:
        image_dir = self.locate()
        decoded = self.decode(image_dir, self.list_files(image_dir))
        parts = self.assign_splits(decoded.files)
        for split, fraction in (
            ("train", 1.0),
            ("val", self.val_fraction),
            ("test", self.test_fraction),
        ):
            if fraction > 0 and len(parts[split]) == 0:
                fix = (
                    "lower data.val_fraction/data.test_fraction"
                    if split == "train"
                    else f"set data.{split}_fraction=0"
                )
                raise UserError(
                    f"data.root={self.root} has {len(decoded.files)} readable images, too few for "
                    f"a {split} split; add images or {fix}"
                )
        images = decoded.images
        if self.in_memory:
            images = np.array(images)  # one read of the file; no page faults during training
        log.info(
            f"Data from {image_dir}: "
            + ", ".join(f"{split} {len(idx)}" for split, idx in parts.items())
            + f" images at {self.image_size}x{self.image_size}, {self.channels} channels"
        )
        self.files = {split: [decoded.files[i] for i in idx] for split, idx in parts.items()}
        return {split: ImageArrayDataset(images, idx) for split, idx in parts.items()}
