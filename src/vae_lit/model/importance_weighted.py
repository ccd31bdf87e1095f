"""The importance-weighted bound (Burda et al. 2016): a log-likelihood estimate tighter than ELBO.

log p(x) >= E[log (1/k) sum_i p(x, z_i) / q(z_i | x)], z_i ~ q(z | x). With k = 1 it is the ELBO
(one sample); it tightens monotonically in k, so at k = 100 it is a fair stand-in for the model's
true likelihood, the number to compare models by. A loose ELBO makes a model look worse than it is.
"""

import math

import torch
from torch import nn

from vae_lit.model.likelihoods import Likelihood
from vae_lit.model.priors import Prior

LOG_2PI = math.log(2 * math.pi)


@torch.no_grad()
def importance_weighted_log_likelihood(
    net: nn.Module,
    likelihood: Likelihood,
    prior: Prior,
    images: torch.Tensor,
    k: int = 100,
    max_decodes: int = 512,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The IWAE bound on log p(x) for each image (nats), shape (batch,).

    `images` are floats in [0, 1]. The k samples are decoded at most `max_decodes` images per pass,
    so memory does not grow with k: the default peaks near 4 GB on 150x150 images (7 MB each,
    measured on CPU). `generator` (on the images' device) makes the estimate repeatable.
    """
    if k < 1:
        raise ValueError(f"k={k} must be at least 1")
    mu, logvar = (t.float() for t in net.encode(images))
    std = torch.exp(0.5 * logvar)
    batch = images.shape[0]
    per_pass = max(1, max_decodes // batch)
    log_weights = []
    for start in range(0, k, per_pass):
        n = min(per_pass, k - start)
        eps = torch.randn(
            (n, *mu.shape), device=mu.device, dtype=mu.dtype, generator=generator
        )  # (n, batch, latent_dim)
        z = mu + std * eps
        params = net.decode(z.flatten(0, 1))
        targets = images.unsqueeze(0).expand(n, *images.shape).flatten(0, 1)
        log_px_z = likelihood.log_prob(params, targets).view(n, batch)
        # log q(z|x) of z = mu + std * eps, written in eps so it costs nothing extra
        log_qz_x = -0.5 * (eps.pow(2) + LOG_2PI).sum(-1) - 0.5 * logvar.sum(-1)
        log_weights.append(log_px_z + prior.log_prob(z) - log_qz_x)
    return torch.logsumexp(torch.cat(log_weights), dim=0) - math.log(k)
