"""What every post-hoc sampler is: a density over a trained VAE's latent codes, fitted after
training on the posterior means of the training split and drawn from instead of the prior.

The aggregate posterior of a trained VAE does not fill N(0, I): prior samples land in holes the
decoder never saw, which is why they look blurrier than reconstructions. A density fitted on the
codes the decoder was trained on covers them better, at no training cost (`gmm`, `two_stage`).
"""

from typing import Any

import torch
from torch import nn


class LatentSampler(nn.Module):
    """A density over latent codes, fitted on (N, D) points: `log_prob`, `sample`, `fit`.

    Tensors are created by `build(dim)`, so a saved sampler loads into a fresh one of the same
    settings; `settings()` is what must match for a saved fit to be reused.
    """

    name = ""

    def __init__(self, seed: int = 0):
        super().__init__()
        self.seed = int(seed)
        self.dim = 0

    def settings(self) -> dict[str, Any]:
        raise NotImplementedError

    def build(self, dim: int) -> None:
        raise NotImplementedError

    def fit(self, codes: torch.Tensor) -> dict[str, float]:
        """Fit on (N, D) points; return statistics of the fit for the json."""
        raise NotImplementedError

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """log density of (N, D) points in nats: shape (N,)."""
        raise NotImplementedError

    def sample(
        self, n: int, generator: torch.Generator | None = None, device=None
    ) -> torch.Tensor:
        """`n` points drawn with a CPU `generator` (the same on every machine), on `device`."""
        raise NotImplementedError
