"""Lightning callbacks: what a run leaves behind besides its weights."""

from vae_lit.callbacks.run_config import RunConfigInCheckpoint

__all__ = ["RunConfigInCheckpoint"]
