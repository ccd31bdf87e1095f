"""Lightning callbacks: what a run leaves behind besides its weights."""

from vae_lit.callbacks.generation_gif import GenerationGIF
from vae_lit.callbacks.image_grids import ReconstructionGrid, SampleGrid
from vae_lit.callbacks.latent_views import LatentInterpolation, LatentTraversal
from vae_lit.callbacks.run_config import RunConfigInCheckpoint

__all__ = [
    "GenerationGIF",
    "LatentInterpolation",
    "LatentTraversal",
    "ReconstructionGrid",
    "RunConfigInCheckpoint",
    "SampleGrid",
]
