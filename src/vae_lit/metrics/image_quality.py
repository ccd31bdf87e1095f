"""Reconstruction quality in pixel space: mean squared error and PSNR, for images in [0, 1].

The ELBO mixes reconstruction and KL in nats; these say plainly how close a reconstruction is.
"""

import torch


def mse_per_image(images: torch.Tensor, reconstructions: torch.Tensor) -> torch.Tensor:
    """Mean squared error over each image's pixels and channels: shape (batch,)."""
    return (images.float() - reconstructions.float()).pow(2).flatten(1).mean(1)


def psnr_per_image(
    images: torch.Tensor, reconstructions: torch.Tensor, data_range: float = 1.0
) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB per image: 10 log10(range^2 / MSE), shape (batch,).

    A perfect reconstruction would be infinite; the MSE is floored at 1e-10 (100 dB) so a mean over
    images stays finite.
    """
    mse = mse_per_image(images, reconstructions).clamp(min=1e-10)
    return 10 * torch.log10(data_range**2 / mse)
