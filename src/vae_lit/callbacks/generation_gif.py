"""The generation GIF: one frame per epoch, the sample grid of a fixed latent batch with the epoch
number drawn on it, so the GIF plays the model learning from its first epoch to its last.

The GIF is rewritten after every epoch (to a temporary file, then renamed), so a run stopped at any
moment leaves a valid GIF. A checkpoint keeps the GIF's path and epochs, not its frames: resuming
reads the earlier frames back from that file and goes on from there.
"""

from pathlib import Path
from typing import Any

import imageio.v3 as iio
import numpy as np
from PIL import Image
from pytorch_lightning import LightningModule, Trainer
from pytorch_lightning.utilities import rank_zero_warn

from vae_lit.callbacks.image_grids import (
    EpochPictures,
    check_temperature,
    draw_label,
    image_grid,
    tempered_latents,
)
from vae_lit.loggers.media import log_gif
from vae_lit.persistence.atomic_write import write_bytes_atomic


def write_gif(frames: list[np.ndarray], path: Path, frame_ms: int) -> None:
    """All frames to `path` at once; the old file stays intact until the new one is complete."""
    data = iio.imwrite("<bytes>", np.stack(frames), extension=".gif", duration=frame_ms, loop=0)
    write_bytes_atomic(path, data)


def gif_colors(picture: np.ndarray) -> np.ndarray:
    """The picture reduced to the 256 colours a GIF frame holds. Done once per frame: rewriting a
    GIF of frames that already fit costs no new quantization, and changes no earlier frame."""
    return np.asarray(Image.fromarray(picture).quantize(256).convert("RGB"))


def read_gif(path: Path) -> list[np.ndarray]:
    """The frames of a GIF as (H, W, 3) uint8 arrays."""
    return list(iio.imread(path, index=None, extension=".gif", mode="RGB"))


class GenerationGIF(EpochPictures):
    """Appends this epoch's labelled sample grid to `output_dir/filename`."""

    def __init__(
        self,
        output_dir: str,
        filename: str = "generation.gif",
        num_samples: int = 64,
        nrow: int = 8,
        seed: int = 0,
        frame_ms: int = 500,
        temperature: float = 1.0,
    ):
        super().__init__(output_dir)
        self.temperature = check_temperature(temperature, "generation_gif")
        self.path = self.output_dir / filename
        self.num_samples, self.nrow, self.seed, self.frame_ms = num_samples, nrow, seed, frame_ms
        self.latents = None
        self.frames: list[np.ndarray] = []
        self.epochs: list[int] = []

    def draw(self, trainer: Trainer, pl_module: LightningModule, epoch: int) -> None:
        # drawn anew each time from the same seed: the same points under N(0, I), and the points
        # of the current prior when it is learned
        self.latents = tempered_latents(pl_module, self.num_samples, self.seed, self.temperature)
        grid = image_grid(pl_module.decode(self.latents.to(pl_module.device)), self.nrow)
        if self.frames and self.frames[0].shape != grid.shape:
            rank_zero_warn(
                f"the resumed GIF's frames are {self.frames[0].shape[:2]} pixels but this run's "
                f"are {grid.shape[:2]}; {self.path} starts again at epoch {epoch}"
            )
            self.frames, self.epochs = [], []
        label = getattr(pl_module, "sample_label", None)  # a VQ-VAE: random codes, not samples
        text = f"epoch {epoch}: {label}" if label else f"epoch {epoch}"
        self.frames.append(gif_colors(draw_label(grid, text)))
        self.epochs.append(epoch)
        write_gif(self.frames, self.path, self.frame_ms)

    # W&B gets the GIF once, when training stops, rather than a growing copy every epoch.
    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._log(trainer)

    def on_exception(
        self, trainer: Trainer, pl_module: LightningModule, exception: BaseException
    ) -> None:
        self._log(trainer)

    def _log(self, trainer: Trainer) -> None:
        if trainer.is_global_zero and self.epochs and self.path.is_file():
            caption = f"epochs {self.epochs[0]} to {self.epochs[-1]}"
            log_gif(trainer, "generation", self.path, caption)

    def state_dict(self) -> dict[str, Any]:
        return {"path": str(self.path.resolve()), "epochs": list(self.epochs)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Take over the frames of the checkpoint's run, up to the epoch the checkpoint holds."""
        epochs, path = list(state_dict.get("epochs", [])), Path(state_dict.get("path", ""))
        if not epochs:
            return
        if not path.is_file():
            rank_zero_warn(
                f"the GIF of the resumed run, {path}, is gone; "
                f"{self.path} starts at the first epoch trained now"
            )
            return
        frames = read_gif(path)[: len(epochs)]
        self.frames, self.epochs = frames, epochs[: len(frames)]
