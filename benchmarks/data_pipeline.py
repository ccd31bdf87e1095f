"""Images per second: decoding JPEGs every epoch (the naive path) vs vae-lit's decoded cache.

    .venv/bin/python benchmarks/data_pipeline.py [--data DIR] [--image-size 150] [--batch-size 64]

On a folder of 178x218 JPEGs (the shared CelebA sample when present, else generated ones):
(a) torchvision ImageFolder + PIL + Resize((150, 150)), decoded every epoch, same workers as ours;
(b) our cached path, cold (first run: decode once into the cache, then one epoch) and warm (an
epoch read from the cache by a later run); and the default model's training rate at that size,
through a Lightning Trainer with the default configs, for comparison. Prints one JSON line.
"""

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from PIL import Image
from pytorch_lightning import Callback
from torch.utils.data import DataLoader
from torchvision import datasets, transforms

from vae_lit.data import ImageFolderDataModule
from vae_lit.data.datamodule import resolve_num_workers
from vae_lit.runs.trainer import map_gpus

ROOT = Path(__file__).resolve().parents[1]
CELEBA_SAMPLE = ROOT.parent / "shared" / "data" / "celeba_sample" / "img_align_celeba"


def generate_jpegs(folder: Path, count: int = 1000, seed: int = 0) -> Path:
    """178x218 JPEGs with CelebA's size and texture (smooth colour fields plus grain)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    for i in range(count):
        field = Image.fromarray(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)).resize(
            (178, 218), Image.Resampling.BICUBIC
        )
        grain = rng.normal(0, 12, (218, 178, 3))
        pixels = np.clip(np.asarray(field, dtype=np.float32) + grain, 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"{i:06d}.jpg", quality=90)
    return folder


def epoch_rate(loader, max_batches: int | None = None) -> tuple[float, int]:
    """Images per second over one pass of `loader` (or its first batches), and the image count."""
    start, count = time.perf_counter(), 0
    for i, batch in enumerate(loader):
        count += len(batch[0] if isinstance(batch, list | tuple) else batch)
        if max_batches and i + 1 == max_batches:
            break
    return count / (time.perf_counter() - start), count


def naive_rate(
    image_dir: Path, image_size: int, batch_size: int, workers: int, batches: int, tmp: Path
) -> float:
    """torchvision ImageFolder + PIL decode + Resize: every epoch costs the same decode work, so
    its first batches measure the rate."""
    transform = transforms.Compose(
        [transforms.Resize((image_size, image_size)), transforms.PILToTensor()]
    )
    classes = tmp / f"naive-{workers}"
    classes.mkdir()
    (classes / "images").symlink_to(image_dir.resolve())  # ImageFolder wants one folder per class
    dataset = datasets.ImageFolder(str(classes), transform=transform)
    loader = DataLoader(
        dataset, batch_size=batch_size, shuffle=True, num_workers=workers, drop_last=True
    )
    return epoch_rate(loader, batches)[0]


def folder_module(
    image_dir: Path, cache_dir: Path, image_size: int, batch_size: int, workers: int
):
    """Every image in the train split, so an epoch covers the same files as the naive path."""
    return ImageFolderDataModule(
        root=str(image_dir),
        image_size=image_size,
        batch_size=batch_size,
        num_workers=workers,
        cache_dir=str(cache_dir),
        val_fraction=0.0,
        test_fraction=0.0,
    )


class StepTimer(Callback):
    """Wall time of the training steps after the first few (which warm up allocators)."""

    def __init__(self, skip: int):
        self.skip, self.start, self.images, self.seconds = skip, None, 0, 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx == self.skip:
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if batch_idx >= self.skip:
            self.images += len(batch)
            self.seconds = time.perf_counter() - self.start


def train_rate(datamodule, steps: int, workdir: Path) -> float:
    """The default model and trainer configs (data=celeba) training on the cached images."""
    overrides = [
        "data=celeba",
        f"data.root={datamodule.root}",
        f"data.image_size={datamodule.image_size}",
        f"paths.output_dir={workdir}",
    ]
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    timer = StepTimer(skip=1)
    trainer = instantiate(
        map_gpus(cfg.trainer),
        max_steps=steps + 1,
        max_epochs=-1,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        logger=False,
        callbacks=[timer],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(instantiate(cfg.model), datamodule=datamodule)
    return timer.images / timer.seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, help="folder of JPEGs (default: the CelebA sample)")
    parser.add_argument("--image-size", type=int, default=150)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", default="0", help="DataLoader workers for both paths")
    parser.add_argument(
        "--naive-batches", type=int, default=10, help="batches timed per naive run"
    )
    parser.add_argument("--warm-epochs", type=int, default=3)
    parser.add_argument("--train-steps", type=int, default=4)
    args = parser.parse_args()
    workers = resolve_num_workers(args.workers)

    with tempfile.TemporaryDirectory(prefix="vae-lit-bench-") as tmp:
        tmp = Path(tmp)
        if args.data:
            image_dir, source = args.data, str(args.data)
        elif CELEBA_SAMPLE.is_dir():
            image_dir, source = CELEBA_SAMPLE, "celeba_sample"
        else:
            image_dir, source = generate_jpegs(tmp / "generated" / "images"), "generated"
        files = sorted(image_dir.glob("*.jpg"))
        for path in files:  # both paths start with the JPEGs in the page cache
            path.read_bytes()
        size, batch = args.image_size, args.batch_size

        cores = os.cpu_count() or 1
        naive = naive_rate(image_dir, size, batch, workers, args.naive_batches, tmp)
        naive_all_cores = naive_rate(image_dir, size, batch, cores, args.naive_batches, tmp)

        start = time.perf_counter()
        cold = folder_module(image_dir, tmp / "cache", size, batch, workers)
        cold.setup("fit")
        cold_setup = time.perf_counter() - start
        _, served = epoch_rate(cold.train_dataloader())
        cached_cold = served / (time.perf_counter() - start)

        start = time.perf_counter()
        warm = folder_module(image_dir, tmp / "cache", size, batch, workers)  # a later run
        warm.setup("fit")
        warm_setup = time.perf_counter() - start
        loader = warm.train_dataloader()
        cached = float(np.median([epoch_rate(loader)[0] for _ in range(args.warm_epochs)]))

        train = train_rate(warm, args.train_steps, tmp / "run")

    result = {
        "naive_img_s": round(naive, 1),
        "cached_cold_img_s": round(cached_cold, 1),
        "cached_img_s": round(cached, 1),
        "ratio": round(cached / naive, 1),
        "train_img_s": round(train, 1),
        "cached_vs_train": round(cached / train, 1),
        "naive_all_cores_img_s": round(naive_all_cores, 1),
        "ratio_vs_naive_all_cores": round(cached / naive_all_cores, 1),
        "cold_setup_s": round(cold_setup, 2),
        "warm_setup_s": round(warm_setup, 3),
        "images": len(files),
        "source": source,
        "image_size": size,
        "batch_size": batch,
        "workers": workers,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
    }
    print(json.dumps(result), file=sys.stdout, flush=True)


if __name__ == "__main__":
    main()
