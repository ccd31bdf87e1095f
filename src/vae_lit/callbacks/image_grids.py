"""Per-epoch pictures: reconstructions of a fixed validation batch and samples of a fixed latent
batch, saved as `reconstruction_{epoch}.png` / `sample_{epoch}.png` and sent to every logger.

Both batches are drawn once from a seed, so the pictures of two epochs (or two runs) show the same
images and the same latent points, and differ only by what the model learned.
"""

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from pytorch_lightning import Callback, LightningModule, Trainer
from torchvision.utils import make_grid

from vae_lit.errors import UserError
from vae_lit.loggers.media import log_image
from vae_lit.model.vae_module import to_float_images
from vae_lit.persistence.atomic_write import atomic_path

GRID_PADDING = 2  # pixels between images, white


def image_grid(images: torch.Tensor, nrow: int) -> np.ndarray:
    """Images (N, C, H, W) in [0, 1] as one (H, W, 3) uint8 picture, `nrow` images per row."""
    grid = make_grid(
        images.detach().float().clamp(0, 1).cpu(),
        nrow=nrow,
        padding=GRID_PADDING,
        pad_value=1.0,
    )
    return grid.mul(255).round().to(torch.uint8).permute(1, 2, 0).numpy()


def save_png(picture: np.ndarray, path: Path) -> Path:
    """Written whole or not at all (a temporary file renamed into place), in the format the file
    name says."""
    image_format = Image.registered_extensions().get(path.suffix.lower())
    if image_format is None:
        raise ValueError(f"unknown file extension: {path.suffix}")
    with atomic_path(path) as partial:
        Image.fromarray(picture).save(partial, format=image_format)
    return path


def draw_label(picture: np.ndarray, text: str) -> np.ndarray:
    """A copy of `picture` with `text` in white on black in its top-left corner."""
    image = Image.fromarray(picture)
    font = ImageFont.load_default(size=max(10, image.width // 30))
    draw = ImageDraw.Draw(image)
    left, top, right, bottom = draw.textbbox((3, 1), text, font=font)
    draw.rectangle((0, 0, right + 3, bottom + 3), fill=(0, 0, 0))
    draw.text((3, 1), text, fill=(255, 255, 255), font=font)
    return np.asarray(image)


def fixed_images(trainer: Trainer, n: int, seed: int) -> torch.Tensor:
    """`n` images picked by `seed` from the validation split (the training split when there is
    no validation data), as the dataset serves them."""
    dataset = next(d for d in candidate_datasets(trainer) if d is not None and len(d) > 0)
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))
    items = [dataset[int(i)] for i in order[:n]]
    return torch.stack([item[0] if isinstance(item, list | tuple) else item for item in items])


def candidate_datasets(trainer: Trainer) -> Iterator:
    """Validation data first, also in an epoch that skips validation; training data last."""

    def dataset_of(loaders):
        if isinstance(loaders, list | tuple):
            loaders = loaders[0] if loaders else None
        return getattr(loaders, "dataset", None)

    yield dataset_of(trainer.val_dataloaders)
    if trainer.datamodule is not None:
        yield dataset_of(trainer.datamodule.val_dataloader())
    yield dataset_of(trainer.train_dataloader)
    splits = getattr(trainer.datamodule, "splits", {})  # data.on_device serves no `.dataset`
    yield splits.get("val")
    yield splits.get("train")


@contextmanager
def evaluating(module: LightningModule) -> Iterator[None]:
    """Eval mode and no gradients for the duration, then the module's previous mode."""
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        module.train(was_training)


class EpochPictures(Callback):
    """Draws once per training epoch, on rank 0, before that epoch's checkpoint is written.

    Validation ends before ModelCheckpoint saves, so drawing there puts the epoch's picture into
    its checkpoint's state; without validation, the training epoch's end is used, where Lightning
    calls checkpoint callbacks last. `fast_dev_run` draws nothing.
    """

    def __init__(self, output_dir: str):
        self.output_dir = Path(output_dir)
        self._drawn_epoch: int | None = None

    def draw(self, trainer: Trainer, pl_module: LightningModule, epoch: int) -> None:
        raise NotImplementedError

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.sanity_checking and trainer.state.fn == "fit":
            self._draw_once(trainer, pl_module)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._draw_once(trainer, pl_module)

    def _draw_once(self, trainer: Trainer, pl_module: LightningModule) -> None:
        epoch = trainer.current_epoch
        if self._drawn_epoch == epoch or trainer.fast_dev_run or not trainer.is_global_zero:
            return
        self._drawn_epoch = epoch
        with evaluating(pl_module):
            self.draw(trainer, pl_module, epoch)


def check_temperature(value: float, name: str) -> float:
    if not (isinstance(value, int | float) and 0 < float(value) < float("inf")):
        raise UserError(f"callbacks.{name}.temperature={value} must be a number > 0, e.g. 0.8")
    return float(value)


def tempered_latents(pl_module: LightningModule, n: int, seed: int, temperature: float):
    """The model's latents of `seed`, at `temperature` when it is not 1."""
    if temperature == 1.0:
        return pl_module.sample_latents(n, seed)
    return pl_module.sample_latents(n, seed, temperature=temperature)


class ReconstructionGrid(EpochPictures):
    """A row of fixed validation images above the row of their reconstructions."""

    def __init__(self, output_dir: str, num_pairs: int = 8, seed: int = 0):
        super().__init__(output_dir)
        self.num_pairs, self.seed = num_pairs, seed
        self.images: torch.Tensor | None = None

    def draw(self, trainer: Trainer, pl_module: LightningModule, epoch: int) -> None:
        if self.images is None:
            self.images = fixed_images(trainer, self.num_pairs, self.seed)
        originals = to_float_images(self.images.to(pl_module.device))
        reconstructions = pl_module.reconstruct(originals)
        picture = image_grid(torch.cat([originals, reconstructions]), nrow=len(originals))
        save_png(picture, self.output_dir / f"reconstruction_{epoch}.png")
        log_image(trainer, "reconstruction", picture, f"epoch {epoch}: originals above")


class SampleGrid(EpochPictures):
    """Decoded images of a fixed batch of latent points z ~ N(0, I), at `temperature` (the prior's
    standard deviations times it: < 1 draws fewer, cleaner images)."""

    name = "sample"  # results/<name>_{epoch}.png, and the loggers' key

    def __init__(
        self,
        output_dir: str,
        num_samples: int = 64,
        nrow: int = 8,
        seed: int = 0,
        temperature: float = 1.0,
    ):
        super().__init__(output_dir)
        self.num_samples, self.nrow, self.seed = num_samples, nrow, seed
        self.temperature = check_temperature(temperature, f"{self.name}_grid")
        self.latents: torch.Tensor | None = None

    def draw(self, trainer: Trainer, pl_module: LightningModule, epoch: int) -> None:
        # drawn anew each time from the same seed: the same points under N(0, I), and the points
        # of the current prior when it is learned
        self.latents = tempered_latents(pl_module, self.num_samples, self.seed, self.temperature)
        samples = pl_module.decode(self.latents.to(pl_module.device))
        picture = image_grid(samples, self.nrow)
        label = getattr(pl_module, "sample_label", None)  # a VQ-VAE: random codes, not samples
        if label:
            picture = draw_label(picture, label)
        save_png(picture, self.output_dir / f"{self.name}_{epoch}.png")
        caption = f"epoch {epoch}" + (f": {label}" if label else "")
        log_image(trainer, self.name, picture, caption)


class PriorSampleGrid(SampleGrid):
    """Every epoch: code grids drawn from a VQ-VAE's prior (the same seed each time, at its
    softmax `temperature`), decoded by the VQ-VAE, as `prior_sample_{epoch}.png`."""

    name = "prior_sample"
