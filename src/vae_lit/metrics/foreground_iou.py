"""Whether a reconstruction has the right shape: intersection over union of foreground masks.

MSE and PSNR barely move when a triangle comes back as a blob of the right colour and size, since
most pixels are background either way. On images of objects on a dark background (the sprites),
the IoU of "which pixels are object" in an image and in its reconstruction says it directly: the
soft blobs of right colour, size and place that the seed's `make train` model drew score 0.73.
"""

import torch

FOREGROUND_THRESHOLD = 0.3  # a pixel is foreground when its brightest channel exceeds this


def foreground_mask(images: torch.Tensor, threshold: float = FOREGROUND_THRESHOLD) -> torch.Tensor:
    """(N, C, H, W) images in [0, 1] -> (N, H, W) bool: the max over channels above `threshold`."""
    return images.amax(dim=1) > threshold


def foreground_iou_per_image(
    images: torch.Tensor, reconstructions: torch.Tensor, threshold: float = FOREGROUND_THRESHOLD
) -> torch.Tensor:
    """IoU of the foreground masks of each image and its reconstruction, shape (batch,).

    Two empty masks agree perfectly: their IoU is 1.
    """
    real = foreground_mask(images.float(), threshold).flatten(1)
    fake = foreground_mask(reconstructions.float(), threshold).flatten(1)
    intersection = (real & fake).sum(1)
    union = (real | fake).sum(1)
    return torch.where(
        union > 0, intersection / union.clamp(min=1), torch.ones_like(union.float())
    )
