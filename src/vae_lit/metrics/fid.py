"""Fréchet Inception Distance between test images and samples, through torchmetrics.

FID needs torch-fidelity and its Inception weights. vae-lit never downloads them: when they are not
on disk, evaluation says so in one line and goes on without FID.
"""

import importlib.util
from pathlib import Path

import torch
from torchmetrics.image.fid import FrechetInceptionDistance

WEIGHTS_NAME = "pt_inception-2015-12-05-6726825d.pth"  # torch-fidelity's FID Inception (TF port)


class FIDUnavailable(Exception):
    """FID cannot run here; the message says what is missing and how to provide it."""


def default_weights_path() -> Path:
    """Where torch-fidelity caches the weights: the torch hub checkpoint directory."""
    return Path(torch.hub.get_dir()) / "checkpoints" / WEIGHTS_NAME


def fid_metric(weights_path: str | Path | None = None) -> FrechetInceptionDistance:
    """A 2048-feature FID metric on local weights; raises FIDUnavailable instead of downloading."""
    if importlib.util.find_spec("torch_fidelity") is None:
        raise FIDUnavailable(
            "FID needs torch-fidelity, which is not installed (pip install torch-fidelity)"
        )
    path = Path(weights_path) if weights_path else default_weights_path()
    if not path.is_file():
        raise FIDUnavailable(
            f"FID needs the Inception weights {path}, which are not there; vae-lit does not "
            "download them: copy the file there or pass eval.fid_weights=<file>"
        )
    return FrechetInceptionDistance(
        feature=2048, normalize=True, feature_extractor_weights_path=str(path)
    )


def as_rgb(images: torch.Tensor) -> torch.Tensor:
    """Inception reads three channels: grayscale images are repeated."""
    return images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images
