"""`data=sprites`: the embedded default data set, rendered at start-up from a seed."""

import numpy as np

from vae_lit.data.datamodule import ImageArrayDataset, ImageDataModule, split_indices
from vae_lit.data.sprites import render_sprites, sample_factors
from vae_lit.errors import UserError


class SpritesDataModule(ImageDataModule):
    """Coloured shapes with ground-truth factors (`self.factors[split]`, one row per image)."""

    def __init__(self, num_images: int = 10000, image_size: int = 32, channels: int = 3, **kwargs):
        super().__init__(image_size=image_size, channels=channels, **kwargs)
        if int(num_images) < 3:
            raise UserError(
                f"data.num_images={num_images} must be at least 3 (train, val and test)"
            )
        self.num_images = int(num_images)
        self.factors: dict[str, np.ndarray] = {}

    def load_splits(self) -> dict[str, ImageArrayDataset]:
        factors = sample_factors(self.num_images, self.seed)
        images = render_sprites(factors, self.image_size, self.channels)
        parts = split_indices(self.num_images, self.val_fraction, self.test_fraction, self.seed)
        self.factors = {split: factors[idx] for split, idx in parts.items()}
        return {split: ImageArrayDataset(images, idx) for split, idx in parts.items()}
