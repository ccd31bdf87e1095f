"""A hierarchical VAE's KL per latent layer as a bar chart: a layer whose bar sinks to zero has
collapsed (it carries no information about the image), the failure users of these models watch
for. Drawn every epoch from the validation split, and by `vae_lit.eval` for any split."""

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from pytorch_lightning import Callback, LightningModule, Trainer

from vae_lit.callbacks.image_grids import save_png
from vae_lit.loggers.media import log_image

BAR_HEIGHT, LABEL_WIDTH, CHART_WIDTH, MARGIN = 22, 150, 420, 10


def layer_labels(latent_shapes: list[tuple[int, int, int]]) -> list[str]:
    """'layer 00, 4x4x8' for each latent layer, top (coarsest) first."""
    return [f"layer {i:02d}, {h}x{w}x{c}" for i, (c, h, w) in enumerate(latent_shapes)]


def kl_chart(kl_nats: list[float], labels: list[str], title: str) -> np.ndarray:
    """One horizontal bar per layer, its KL in nats per image written beside it: (H, W, 3)."""
    font = ImageFont.load_default()
    height = 2 * MARGIN + BAR_HEIGHT * (len(kl_nats) + 1)
    width = LABEL_WIDTH + CHART_WIDTH + 90
    picture = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(picture)
    draw.text((MARGIN, MARGIN), title, fill="black", font=font)
    top = max(max(kl_nats, default=0.0), 1e-9)
    for i, (value, label) in enumerate(zip(kl_nats, labels, strict=True)):
        y = MARGIN + BAR_HEIGHT * (i + 1)
        draw.text((MARGIN, y + 5), label, fill="black", font=font)
        length = int(CHART_WIDTH * max(value, 0.0) / top)
        colour = (200, 60, 60) if value < 0.01 else (60, 110, 190)  # collapsed layers in red
        draw.rectangle(
            [LABEL_WIDTH, y + 3, LABEL_WIDTH + max(length, 1), y + BAR_HEIGHT - 3], fill=colour
        )
        draw.text((LABEL_WIDTH + length + 6, y + 5), f"{value:.2f} nats", fill="black", font=font)
    return np.asarray(picture)


class KLPerLayer(Callback):
    """Every epoch: results/kl_per_layer_{epoch}.png from the validation split's KL per layer
    (which the module measures as `kl_per_layer`), also sent to the loggers."""

    def __init__(self, output_dir: str):
        self.output_dir = Path(output_dir)

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        values = getattr(pl_module, "kl_per_layer", None)
        if trainer.sanity_checking or not trainer.is_global_zero or not values:
            return
        epoch = trainer.current_epoch
        labels = layer_labels(pl_module.net.latent_shapes)
        picture = kl_chart(values, labels, f"KL per latent layer, validation, epoch {epoch}")
        save_png(picture, self.output_dir / f"kl_per_layer_{epoch}.png")
        log_image(trainer, "kl_per_layer", picture, f"epoch {epoch}")
