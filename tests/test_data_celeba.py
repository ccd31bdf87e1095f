"""`data=celeba`: both layouts, the official split, errors that say where the files go."""

from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import CELEBA_SAMPLE
from tests.test_data_folder import write_jpegs
from vae_lit.data import CelebADataModule
from vae_lit.errors import UserError

PARTITION = {"train": 7, "val": 3, "test": 2}


def make_celeba(base: Path, partition: bool = True, unlisted: int = 0) -> None:
    """A tiny CelebA: 12 JPEGs named like the real ones (178x218 shrunk) and its partition."""
    images = base / "img_align_celeba"
    paths = write_jpegs(images, 12 + unlisted, size=(18, 22))
    names = [f"{i + 1:06d}.jpg" for i in range(len(paths))]
    for path, name in zip(paths, names, strict=True):
        path.rename(images / name)
    if partition:
        codes = [0] * PARTITION["train"] + [1] * PARTITION["val"] + [2] * PARTITION["test"]
        lines = [f"{name} {code}" for name, code in zip(names, codes, strict=False)]
        (base / "list_eval_partition.txt").write_text("\n".join(lines) + "\n")


def celeba(root: Path, tmp_path: Path, **kwargs) -> CelebADataModule:
    module = CelebADataModule(
        root=str(root), image_size=16, batch_size=4, cache_dir=str(tmp_path / "cache"), **kwargs
    )
    module.setup("fit")
    return module


def sizes(module: CelebADataModule) -> dict[str, int]:
    return {split: len(dataset) for split, dataset in module.splits.items()}


def test_official_layout_uses_the_partition_file(tmp_path: Path):
    make_celeba(tmp_path / "celeba", unlisted=2)  # two images the partition does not list
    module = celeba(tmp_path / "celeba", tmp_path)
    assert sizes(module) == PARTITION
    assert module.files["val"] == ["000008.jpg", "000009.jpg", "000010.jpg"]
    batch = next(iter(module.train_dataloader()))
    assert batch.shape == (4, 3, 16, 16) and batch.dtype == torch.uint8


def test_torchvision_layout_is_found(tmp_path: Path):
    make_celeba(tmp_path / "data" / "celeba")  # what torchvision.datasets.CelebA downloads
    assert sizes(celeba(tmp_path / "data", tmp_path)) == PARTITION


def test_without_a_partition_file_the_split_is_seeded_by_fractions(tmp_path: Path):
    make_celeba(tmp_path / "celeba", partition=False)
    module = celeba(tmp_path / "celeba", tmp_path, val_fraction=0.25, test_fraction=0.25)
    assert sizes(module) == {"train": 6, "val": 3, "test": 3}
    again = celeba(tmp_path / "celeba", tmp_path, val_fraction=0.25, test_fraction=0.25)
    assert again.files == module.files


@pytest.mark.parametrize(
    ("exists", "what"), [(False, "does not exist"), (True, "holds no CelebA images")]
)
def test_missing_celeba_says_where_to_put_which_files(tmp_path: Path, exists: bool, what: str):
    root = tmp_path / "celeba"
    if exists:
        write_jpegs(root, 3)  # images, but not in img_align_celeba/
    with pytest.raises(UserError) as error:
        celeba(root, tmp_path)
    text = str(error.value)
    assert "\n" not in text
    assert text.startswith(
        f"data.root={root} {what}; expected {root}/img_align_celeba/*.jpg beside "
        f"{root}/list_eval_partition.txt (official split), or torchvision's "
        f"{root}/celeba/img_align_celeba/; get img_align_celeba.zip and list_eval_partition.txt "
        "from https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html or set data.download=true"
    ), text


def test_a_partition_without_val_images_is_an_error(tmp_path: Path):
    make_celeba(tmp_path / "celeba")
    partition = tmp_path / "celeba" / "list_eval_partition.txt"
    partition.write_text(partition.read_text().replace(" 1\n", " 0\n"))
    with pytest.raises(UserError, match="puts none of the 12 readable images in the val split"):
        celeba(tmp_path / "celeba", tmp_path)


@pytest.mark.skipif(not CELEBA_SAMPLE.is_dir(), reason=f"no CelebA sample at {CELEBA_SAMPLE}")
def test_the_shared_celeba_sample_gives_the_official_split(tmp_path: Path):
    module = celeba(CELEBA_SAMPLE, tmp_path)
    assert sizes(module) == {"train": 1530, "val": 270, "test": 210}
    faces = np.asarray(module.splits["val"].images)
    assert faces.shape == (2010, 3, 16, 16)
    assert 40 < faces.mean() < 200 and faces.std() > 20  # real photographs, not blank rows
