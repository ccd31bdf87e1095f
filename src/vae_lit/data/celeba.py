"""`data=celeba`: CelebA's aligned faces (178x218 JPEGs), resized to 150x150 by default.

Two layouts are found: the official one, `root/img_align_celeba/` beside
`root/list_eval_partition.txt`, and torchvision's, `root/celeba/img_align_celeba/`. With the
partition file the official train/val/test split is used; without it, a seeded split by fractions.
"""

import logging
from pathlib import Path

import numpy as np

from vae_lit.data.folder import ImageFolderDataModule
from vae_lit.errors import UserError

log = logging.getLogger(__name__)

CELEBA_URL = "https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html"
PARTITION_FILES = ("list_eval_partition.txt", "list_eval_partition.csv")  # official, Kaggle
PARTITION_CODES = {"train": 0, "val": 1, "test": 2}


def read_partition(path: Path) -> dict[str, int]:
    """File name -> 0 (train), 1 (val) or 2 (test), from `000001.jpg 0` lines (or Kaggle's CSV)."""
    split_of = {}
    for line in path.read_text().splitlines():
        fields = line.replace(",", " ").split()
        if len(fields) == 2 and fields[1].isdigit():  # skips a CSV header
            split_of[fields[0]] = int(fields[1])
    return split_of


class CelebADataModule(ImageFolderDataModule):
    """CelebA faces with the official split; `download=True` fetches them with torchvision."""

    def __init__(self, root: str, download: bool = False, image_size: int = 150, **kwargs):
        super().__init__(root=root, image_size=image_size, **kwargs)
        self.download = bool(download)
        self.partition: dict[str, int] | None = None

    def layout(self) -> str:
        root = self.root
        return (
            f"{root}/img_align_celeba/*.jpg beside {root}/list_eval_partition.txt (official "
            f"split), or torchvision's {root}/celeba/img_align_celeba/; get "
            f"img_align_celeba.zip and list_eval_partition.txt from {CELEBA_URL} or set "
            "data.download=true"
        )

    def find_base(self) -> Path | None:
        """The folder holding `img_align_celeba/`: root itself, or torchvision's root/celeba."""
        for base in (self.root, self.root / "celeba"):
            if (base / "img_align_celeba").is_dir():
                return base
        return None

    def prepare_data(self) -> None:
        if not self.download or self.find_base() is not None:
            return
        from torchvision.datasets import CelebA

        log.info(f"Downloading CelebA into {self.root / 'celeba'} (about 1.4 GB)")
        try:
            CelebA(str(self.root), split="all", target_type=[], download=True)
        except Exception as exc:  # Google Drive quotas and HTML pages instead of files are common
            raise UserError(
                f"data.download=true could not fetch CelebA ({type(exc).__name__}: {exc}); "
                f"put the files in place by hand: {self.layout().split('; get')[0]}"
            ) from exc

    def locate(self) -> Path:
        base = self.find_base()
        if base is None:
            what = "holds no CelebA images" if self.root.is_dir() else "does not exist"
            raise UserError(f"data.root={self.root} {what}; expected {self.layout()}")
        partition = next((base / n for n in PARTITION_FILES if (base / n).is_file()), None)
        if partition is not None:
            self.partition = read_partition(partition)
            log.info(f"Official CelebA split from {partition}")
        else:
            log.info(
                f"No list_eval_partition.txt in {base}: seeded split by data.val_fraction="
                f"{self.val_fraction}, data.test_fraction={self.test_fraction}"
            )
        return base / "img_align_celeba"

    def list_files(self, image_dir: Path) -> list[str]:
        files = super().list_files(image_dir)
        if self.partition is None:
            return files
        listed = [f for f in files if Path(f).name in self.partition]
        if len(listed) < len(files):
            log.info(f"{len(files) - len(listed)} images are not in the partition file: left out")
        if not listed:
            raise UserError(
                f"data.root={self.root}: none of the {len(files)} images in {image_dir} is listed "
                "in list_eval_partition.txt; expected CelebA's own file names (000001.jpg ...)"
            )
        return listed

    def assign_splits(self, files: list[str]) -> dict[str, np.ndarray]:
        if self.partition is None:
            return super().assign_splits(files)
        codes = np.array([self.partition[Path(f).name] for f in files])
        parts = {split: np.flatnonzero(codes == code) for split, code in PARTITION_CODES.items()}
        for split, idx in parts.items():
            if len(idx) == 0:
                raise UserError(
                    f"data.root={self.root}: list_eval_partition.txt puts none of the "
                    f"{len(files)} readable images in the {split} split; add {split} images"
                )
        return parts
