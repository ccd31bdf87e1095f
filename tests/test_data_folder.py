"""`data=folder` on generated folders: formats, bad files, resize modes, errors, training."""

import logging
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from PIL import Image

from tests.conftest import ROOT, compose_config, run_module
from vae_lit.data import ImageFolderDataModule
from vae_lit.data.datamodule import resolve_num_workers
from vae_lit.data.device_loader import DeviceBatches
from vae_lit.errors import UserError, find_user_error

SIZE = 16


def write_jpegs(folder: Path, count: int, size=(24, 20), seed: int = 0) -> list[Path]:
    """`count` JPEGs of smooth random colour gradients (width, height = `size`)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        corners = rng.integers(0, 256, (2, 2, 3)).astype(np.uint8)
        image = Image.fromarray(corners).resize(size, Image.Resampling.BILINEAR)
        paths.append(folder / f"img_{i:03d}.jpg")
        image.save(paths[-1], quality=95)
    return paths


def write_png16_rgb(path: Path, pixels: np.ndarray) -> None:
    """A 16-bit-per-channel RGB PNG (Pillow cannot write one), from uint16 (H, W, 3)."""
    height, width, _ = pixels.shape
    raw = b"".join(b"\0" + pixels[y].astype(">u2").tobytes() for y in range(height))

    def chunk(tag: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(tag + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


def folder_module(root: Path, cache_dir: Path, **kwargs) -> ImageFolderDataModule:
    options = dict(image_size=SIZE, batch_size=4, val_fraction=0.2, test_fraction=0.2)
    return ImageFolderDataModule(root=str(root), cache_dir=str(cache_dir), **{**options, **kwargs})


def ready(module: ImageFolderDataModule) -> ImageFolderDataModule:
    module.setup("fit")
    return module


def images_by_file(module: ImageFolderDataModule) -> dict[str, np.ndarray]:
    """Every served image, keyed by the file it was decoded from."""
    return {
        name: module.splits[split][i].numpy()
        for split, names in module.files.items()
        for i, name in enumerate(names)
    }


def test_a_nested_folder_serves_uint8_batches_in_a_seeded_split(tmp_path: Path):
    write_jpegs(tmp_path / "data" / "a", 10, seed=1)
    write_jpegs(tmp_path / "data" / "b" / "c", 10, seed=2)
    module = folder_module(tmp_path / "data", tmp_path / "cache")
    module.setup("fit")
    assert {split: len(d) for split, d in module.splits.items()} == {
        "train": 12,
        "val": 4,
        "test": 4,
    }
    batch = next(iter(module.train_dataloader()))
    assert batch.shape == (4, 3, SIZE, SIZE) and batch.dtype == torch.uint8
    again = folder_module(tmp_path / "data", tmp_path / "cache")
    again.setup("fit")
    other_seed = folder_module(tmp_path / "data", tmp_path / "cache", seed=1)
    other_seed.setup("fit")
    assert again.files == module.files
    assert other_seed.files["val"] != module.files["val"]
    assert "b/c/img_003.jpg" in sum(module.files.values(), [])


def test_every_mode_becomes_the_configured_channels(tmp_path: Path):
    root = tmp_path / "formats"
    write_jpegs(root, 4)  # enough images for three splits
    Image.new("L", (20, 30), 100).save(root / "gray.png")
    transparent = Image.new("RGBA", (20, 20), (255, 0, 0, 0))
    transparent.save(root / "rgba.png")
    Image.new("RGB", (20, 20), (255, 0, 0)).convert("P").save(root / "palette.png")
    gray16 = np.full((20, 20), 128 * 257, dtype=np.uint16)
    Image.fromarray(gray16).save(root / "gray16.png")
    assert Image.open(root / "gray16.png").mode == "I;16"
    write_png16_rgb(root / "rgb16.png", np.full((20, 20, 3), [0, 64 * 257, 255 * 257], np.uint16))
    Image.new("RGB", (20, 20), (0, 0, 255)).save(root / "blue.webp", lossless=True)
    Image.new("RGB", (20, 20), (0, 255, 0)).save(root / "green.bmp")

    module = folder_module(root, tmp_path / "cache", val_fraction=0.1, test_fraction=0.1)
    module.setup("fit")
    images = images_by_file(module)
    assert len(images) == 11
    pixel = {name: tuple(int(v) for v in image[:, 8, 8]) for name, image in images.items()}
    assert pixel["gray.png"] == (100, 100, 100)
    assert pixel["rgba.png"] == (255, 255, 255)  # transparent shows as white
    assert pixel["palette.png"] == (255, 0, 0)
    assert pixel["gray16.png"] == (128, 128, 128)  # scaled from 16 bits, not clipped to white
    assert pixel["rgb16.png"] == (0, 64, 255)
    assert pixel["blue.webp"] == (0, 0, 255)
    assert pixel["green.bmp"] == (0, 255, 0)

    gray = folder_module(root, tmp_path / "cache", channels=1)
    gray.setup("fit")
    gray_pixel = {name: image[:, 8, 8].tolist() for name, image in images_by_file(gray).items()}
    assert gray_pixel["palette.png"] == [76] and gray_pixel["gray16.png"] == [128]


def test_bad_files_are_skipped_with_one_warning(tmp_path: Path, caplog):
    root = tmp_path / "messy"
    good = write_jpegs(root, 6)
    rng = np.random.default_rng(0)
    (root / "corrupt.jpg").write_bytes(rng.bytes(800))
    (root / "truncated.jpg").write_bytes(good[0].read_bytes()[:300])
    Image.new("RGB", (20, 20), (255, 255, 255)).save(root / "white.png")
    (root / "truncated.png").write_bytes((root / "white.png").read_bytes()[:60])
    (root / "notes.txt").write_text("not an image")
    (root / "._img_000.jpg").write_bytes(b"macOS metadata")  # hidden: ignored, not skipped
    (root / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")

    with caplog.at_level(logging.INFO, logger="vae_lit"):
        module = folder_module(root, tmp_path / "cache")
        module.setup("fit")
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, warnings
    assert warnings[0].startswith("Skipped 3 of 10 image files")
    for name in ("corrupt.jpg", "truncated.jpg", "truncated.png"):
        assert name in warnings[0]
    images = images_by_file(module)
    assert sorted(images) == sorted([p.name for p in good] + ["white.png"])
    # Nothing blank took a skipped file's place: every served image is a real decode.
    assert all(image.max() > 0 for image in images.values())
    assert (images["white.png"] == 255).all()

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="vae_lit"):  # the cache remembers what it skipped
        folder_module(root, tmp_path / "cache").setup("fit")
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and warnings[0].startswith("Skipped 3 of 10")


def test_center_crop_cuts_the_sides_that_squash_keeps(tmp_path: Path):
    root = tmp_path / "wide"
    write_jpegs(root, 4)
    wide = np.full((20, 40, 3), 255, np.uint8)
    wide[:, :10] = wide[:, 30:] = 0  # black bands outside the centred 20x20 square
    Image.fromarray(wide).save(root / "wide.png")
    squashed = images_by_file(ready(folder_module(root, tmp_path / "c", resize_mode="squash")))
    cropped = images_by_file(ready(folder_module(root, tmp_path / "c", resize_mode="center_crop")))
    assert squashed["wide.png"][:, :, 0].max() < 60  # the bands are still there, squeezed
    assert cropped["wide.png"].min() == 255


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda root: None, "{root} does not exist; expected a folder of images (jpg, jpeg, png"),
        (lambda root: root.mkdir(), "{root} holds no image files; expected a folder of images"),
        (
            lambda root: (root.mkdir(), (root / "readme.md").write_text("hi")),
            "{root} holds no image files; expected a folder of images",
        ),
        (
            lambda root: (
                root.mkdir(),
                (root / "a.png").write_bytes(b"x"),
                (root / "b.jpg").touch(),
            ),
            "{root}: none of its 2 image files decodes (first: a.png: not an image Pillow",
        ),
    ],
    ids=["missing", "empty", "no-image-files", "no-readable-images"],
)
def test_unusable_roots_stop_at_setup_with_one_line(tmp_path: Path, make, message):
    root = tmp_path / "images"
    make(root)
    module = folder_module(root, tmp_path / "cache")
    with pytest.raises(UserError) as error:
        module.setup("fit")
    text = str(error.value)
    assert "\n" not in text
    assert text.startswith("data.root=" + message.format(root=root)), text
    assert "subfolders are searched" in text


def test_bad_options_name_the_key(tmp_path: Path):
    with pytest.raises(
        UserError, match="data.resize_mode=crop must be one of squash, center_crop"
    ):
        folder_module(tmp_path, tmp_path, resize_mode="crop")
    with pytest.raises(UserError, match="data.channels=4 must be 1"):
        folder_module(tmp_path, tmp_path, channels=4)


def test_in_memory_and_on_device_serve_the_same_images(tmp_path: Path):
    write_jpegs(tmp_path / "data", 30)
    loaded = {}
    for name, options in {
        "memmap": {},
        "in_memory": {"in_memory": True},
        "on_device": {"on_device": True},
    }.items():
        module = folder_module(tmp_path / "data", tmp_path / "cache", **options)
        module.setup("fit")
        val = torch.cat(list(module.val_dataloader()))
        train = torch.cat(list(module.train_dataloader()))
        loaded[name] = (val, train)
    assert isinstance(loaded["on_device"][0], torch.Tensor)
    for name in ("in_memory", "on_device"):
        assert torch.equal(loaded[name][0], loaded["memmap"][0])
        # training batches are shuffled differently; the same images arrive, as whole batches of 4
        assert loaded[name][1].shape == loaded["memmap"][1].shape == (16, 3, SIZE, SIZE)


def test_trains_through_train_and_a_second_run_reuses_the_cache(tmp_path: Path, caplog):
    from vae_lit.train import train

    write_jpegs(tmp_path / "faces", 24)
    overrides = [
        "data=folder",
        f"data.root={tmp_path / 'faces'}",
        f"data.cache_dir={tmp_path / 'cache'}",
        "data.image_size=16",
        "data.batch_size=8",
        "model.net.latent_dim=4",
        "model.net.hidden_channels=[8,16]",
        "trainer=cpu",
        "trainer.max_epochs=1",
        "logger=csv",
        "callbacks=none",
        "test=false",
    ]
    with caplog.at_level(logging.INFO, logger="vae_lit"):
        metrics = train(compose_config(tmp_path / "run1", overrides))
    assert np.isfinite(metrics["val/loss"])
    assert any("Building the decoded cache" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="vae_lit"):  # a second run, batches cut on device
        metrics = train(compose_config(tmp_path / "run2", [*overrides, "data.on_device=true"]))
    assert np.isfinite(metrics["val/loss"])
    assert any("Reusing the decoded cache" in r.getMessage() for r in caplog.records)


@pytest.mark.slow
def test_missing_root_from_the_command_line_is_one_line(tmp_path: Path):
    missing = tmp_path / "no_such_folder"
    result = run_module(
        "vae_lit.train",
        "data=folder",
        f"data.root={missing}",
        f"data.cache_dir={tmp_path / 'cache'}",
        "logger=none",
        "callbacks=none",
        "trainer=cpu",
        f"paths.log_dir={tmp_path}",
        cwd=ROOT,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if "error" in line.lower()]
    assert errors == [
        f"vae-lit: error: data.root={missing} does not exist; expected a folder of images "
        "(jpg, jpeg, png, webp, bmp; subfolders are searched)"
    ]


def test_a_folder_without_root_is_one_line(tmp_path: Path):
    cfg = compose_config(tmp_path, ["data=folder"])
    with pytest.raises(Exception) as error:
        instantiate(cfg.data)
    assert str(find_user_error(error.value)) == (
        "data.root is not set; add data.root=<value> to the command"
    )


def test_num_workers_auto_leaves_a_core_for_training():
    cores = len(os.sched_getaffinity(0))
    assert resolve_num_workers("auto") == min(4, cores - 1)
    assert resolve_num_workers(2) == 2
    with pytest.raises(UserError, match="data.num_workers=-1 must be auto or an integer >= 0"):
        resolve_num_workers(-1)


def test_on_device_batches_split_an_epoch_between_ranks_without_overlap():
    images = torch.arange(10, dtype=torch.uint8).view(10, 1, 1, 1).expand(10, 1, 2, 2)
    indices = torch.arange(1, 10)  # nine rows, an odd count: ranks must still get equal batches
    ranks = [
        DeviceBatches(images, indices, 2, shuffle=True, drop_last=True, rank=r, world_size=2)
        for r in (0, 1)
    ]
    seen = [torch.cat([batch[:, 0, 0, 0] for batch in rank]) for rank in ranks]
    assert [len(rank) for rank in ranks] == [2, 2] and [len(s) for s in seen] == [4, 4]
    assert not set(seen[0].tolist()) & set(seen[1].tolist())
    assert 0 not in torch.cat(seen)  # row 0 is not in this split
    next_epoch = torch.cat([batch[:, 0, 0, 0] for batch in ranks[0]])
    assert not torch.equal(next_epoch, seen[0])  # reshuffled every epoch


def test_too_few_images_for_a_split_say_which_and_the_fix(tmp_path: Path):
    write_jpegs(tmp_path / "two", 2)
    module = folder_module(tmp_path / "two", tmp_path / "cache", val_fraction=0.1)
    with pytest.raises(UserError, match="has 2 readable images, too few for a val split; add "):
        module.setup("fit")
    alone = folder_module(tmp_path / "two", tmp_path / "cache", val_fraction=0, test_fraction=0)
    alone.setup("fit")
    assert len(alone.splits["train"]) == 2


@pytest.mark.slow
def test_data_root_points_a_trained_model_at_moved_data_on_every_entry_point(tmp_path: Path):
    """Issue 19.7: `eval ckpt=... data.root=/new` said `data is not a config key`, `+data.root`
    gave a traceback, and `sample sampler=gmm` took no data override at all."""
    from vae_lit.train import train

    write_jpegs(tmp_path / "faces", 24)
    overrides = [
        "data=folder",
        f"data.root={tmp_path / 'faces'}",
        f"data.cache_dir={tmp_path / 'cache'}",
        "data.image_size=16",
        "data.batch_size=8",
        "model.net.latent_dim=4",
        "model.net.hidden_channels=[8,16]",
        "trainer=cpu",
        "trainer.max_epochs=1",
        "logger=csv",
        "test=false",
    ]
    train(compose_config(tmp_path / "run", overrides))
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    (tmp_path / "faces").rename(tmp_path / "moved")
    new_root = f"data.root={tmp_path / 'moved'}"
    evaluated = run_module(
        "vae_lit.eval",
        f"ckpt={ckpt}",
        new_root,
        "eval.k=2",
        f"eval.json={tmp_path / 'eval.json'}",
        f"hydra.run.dir={tmp_path / 'eval'}",
        cwd=ROOT,
    )
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert (tmp_path / "eval.json").is_file()
    drawn = run_module(
        "vae_lit.sample",
        f"ckpt={ckpt}",
        new_root,
        "sampler=gmm",
        "samplers.gmm.num_components=2",
        "n=4",
        f"out={tmp_path / 'gmm.png'}",
        f"hydra.run.dir={tmp_path / 'sample'}",
        cwd=ROOT,
    )
    assert drawn.returncode == 0, drawn.stderr[-3000:]
    assert (tmp_path / "gmm.png").is_file()
    # without the override the moved data is missed, in one line naming the key
    missed = run_module(
        "vae_lit.eval", f"ckpt={ckpt}", f"hydra.run.dir={tmp_path / 'eval2'}", cwd=ROOT
    )
    assert missed.returncode == 2 and "Traceback" not in missed.stderr
    assert "data.root" in missed.stderr
