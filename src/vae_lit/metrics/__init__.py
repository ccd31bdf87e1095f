"""Evaluation metrics for a trained VAE, one concept per module."""

from vae_lit.metrics.active_units import ActiveUnits, count_active_units
from vae_lit.metrics.foreground_iou import foreground_iou_per_image
from vae_lit.metrics.image_quality import mse_per_image, psnr_per_image
from vae_lit.metrics.mig import mutual_information_gap

__all__ = [
    "ActiveUnits",
    "count_active_units",
    "foreground_iou_per_image",
    "mse_per_image",
    "mutual_information_gap",
    "psnr_per_image",
]
