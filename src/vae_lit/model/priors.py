"""Priors p(z) over the latent space: log-density, samples and the KL term of the ELBO.

The KL(q(z|x) || p(z)) of a diagonal Gaussian posterior is analytic against N(0, I), per
dimension; against a mixture it has no closed form, so it is the one-sample Monte Carlo estimate
log q(z|x) - log p(z) at the z the decoder saw (unbiased, and what the ELBO needs).
"""

import math
from dataclasses import dataclass

import torch
from torch import nn

from vae_lit.errors import UserError

LOG_2PI = math.log(2 * math.pi)


def gaussian_kl_per_dim(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, 1)) for each latent dimension: shape (batch, latent_dim)."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar)


def diagonal_gaussian_log_prob(
    z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor
) -> torch.Tensor:
    """log N(z; mu, diag(exp(logvar))), summed over the last dimension; shapes broadcast."""
    return -0.5 * ((z - mu).pow(2) * torch.exp(-logvar) + logvar + LOG_2PI).sum(-1)


@dataclass
class KLTerms:
    kl: torch.Tensor  # batch mean, nats per image
    per_dim: torch.Tensor | None  # (latent_dim,) batch means, where the prior factorises


def check_latent_dim(latent_dim: int) -> int:
    if int(latent_dim) != latent_dim or int(latent_dim) <= 0:
        raise UserError(f"model.net.latent_dim={latent_dim} must be a positive integer")
    return int(latent_dim)


class Prior(nn.Module):
    """The interface every prior implements."""

    name: str = ""
    factorised = False  # True: an analytic KL per latent dimension exists (free bits need it)

    def __init__(self, latent_dim: int):
        super().__init__()
        self.latent_dim = check_latent_dim(latent_dim)

    def attach(self, net: nn.Module) -> None:
        """Called once with the network: a prior built from the encoder (VampPrior) keeps it."""

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """log p(z) for z of shape (..., latent_dim): shape (...)."""
        raise NotImplementedError

    def sample(
        self, n: int, generator: torch.Generator | None = None, device=None
    ) -> torch.Tensor:
        """`n` points z ~ p(z). The randomness comes from `generator` on the CPU, so a seed gives
        the same points on every machine; the result is on `device` (default: the prior's)."""
        raise NotImplementedError

    def kl(self, mu: torch.Tensor, logvar: torch.Tensor, z: torch.Tensor) -> KLTerms:
        """KL(q(z|x) || p(z)) for q = N(mu, exp(logvar)) and its sample z: Monte Carlo."""
        log_q = diagonal_gaussian_log_prob(z, mu, logvar)
        return KLTerms(kl=(log_q - self.log_prob(z)).mean(), per_dim=None)

    def parameter_device(self, device=None) -> torch.device:
        if device is not None:
            return torch.device(device)
        return next(self.parameters(), torch.empty(0)).device


class StandardNormal(Prior):
    """N(0, I), the seed's prior; its KL is analytic, per dimension."""

    name = "normal"
    factorised = True

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        return -0.5 * (z.pow(2) + LOG_2PI).sum(-1)

    def sample(self, n: int, generator: torch.Generator | None = None, device=None):
        # without a generator (InfoVAE's draws, every step) on the device: no blocking copy
        return standard_noise(n, self.latent_dim, generator, device or "cpu")

    def kl(self, mu: torch.Tensor, logvar: torch.Tensor, z: torch.Tensor) -> KLTerms:
        per_dim = gaussian_kl_per_dim(mu.float(), logvar.float()).mean(0)
        return KLTerms(kl=per_dim.sum(), per_dim=per_dim)


def pick_components(weights: torch.Tensor, n: int, generator) -> torch.Tensor:
    """`n` component indices. With a (CPU) generator the draw repeats on every machine; without
    one it stays on the weights' device, so a training step (InfoVAE's prior draws) never syncs."""
    weights = weights.detach().float()
    if generator is not None:
        weights = weights.cpu()
    return torch.multinomial(weights, n, replacement=True, generator=generator)


def standard_noise(n: int, latent_dim: int, generator, device) -> torch.Tensor:
    """N(0, I) noise: from the CPU generator when given (repeatable), else on `device`."""
    if generator is not None:
        return torch.randn(n, latent_dim, generator=generator).to(device)
    return torch.randn(n, latent_dim, device=device)


class MixtureOfGaussians(Prior):
    """A learned mixture of `num_components` diagonal Gaussians: the prior can follow the
    aggregate posterior's clusters instead of pulling every code to one blob (Dilokthanakul et
    al. 2016; the "MoG prior" of Tomczak & Welling 2018). `learnable=false` keeps it fixed."""

    name = "mog"

    def __init__(self, latent_dim: int, num_components: int = 10, learnable: bool = True):
        super().__init__(latent_dim)
        if int(num_components) < 1:
            raise UserError(
                f"model.prior.num_components={num_components} must be a positive integer"
            )
        k = int(num_components)
        # spread the means so the components start apart; one component starts at N(0, I)
        means = torch.randn(k, self.latent_dim, generator=torch.Generator().manual_seed(0))
        means[0] = 0
        tensors = {
            "means": means,
            "logvars": torch.zeros(k, self.latent_dim),
            "logits": torch.zeros(k),
        }
        for key, value in tensors.items():
            if learnable:
                setattr(self, key, nn.Parameter(value))
            else:
                self.register_buffer(key, value)

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        per_component = diagonal_gaussian_log_prob(
            z.unsqueeze(-2), self.means, self.logvars
        )  # (..., K)
        return torch.logsumexp(per_component + torch.log_softmax(self.logits, -1), dim=-1)

    def sample(self, n: int, generator: torch.Generator | None = None, device=None):
        device = self.parameter_device(device)
        index = pick_components(torch.softmax(self.logits, -1), n, generator).to(device)
        noise = standard_noise(n, self.latent_dim, generator, device)
        return self.means[index] + noise * torch.exp(0.5 * self.logvars[index])


class VampPrior(Prior):
    """p(z) = (1/K) sum_k q(z | u_k): the encoder's posteriors at K learned pseudo-inputs u_k
    (Tomczak & Welling 2018, "VAE with a VampPrior"). The pseudo-inputs are images in [0, 1]
    (sigmoid of a free parameter); the prior moves with the encoder."""

    name = "vamp"

    def __init__(
        self, latent_dim: int, image_size: int, channels: int, num_pseudo_inputs: int = 32
    ):
        super().__init__(latent_dim)
        if int(num_pseudo_inputs) < 1:
            raise UserError(
                f"model.prior.num_pseudo_inputs={num_pseudo_inputs} must be a positive integer"
            )
        shape = (int(num_pseudo_inputs), int(channels), int(image_size), int(image_size))
        # near-grey images with a little noise, so the K posteriors start apart
        init = 0.1 * torch.randn(shape, generator=torch.Generator().manual_seed(0))
        self.pseudo_logits = nn.Parameter(init)
        self._net: list[nn.Module] = []  # a list: the network is the module's, not ours

    def attach(self, net: nn.Module) -> None:
        self._net = [net]

    def pseudo_inputs(self) -> torch.Tensor:
        return torch.sigmoid(self.pseudo_logits)

    def components(self) -> tuple[torch.Tensor, torch.Tensor]:
        if not self._net:
            raise RuntimeError("VampPrior needs the encoder: call attach(net) first")
        mu, logvar = self._net[0].encode(self.pseudo_inputs())
        return mu.float(), logvar.float()

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        mu, logvar = self.components()  # (K, D)
        per_component = diagonal_gaussian_log_prob(z.unsqueeze(-2), mu, logvar)
        return torch.logsumexp(per_component, dim=-1) - math.log(mu.shape[0])

    def sample(self, n: int, generator: torch.Generator | None = None, device=None):
        device = self.parameter_device(device)
        mu, logvar = self.components()
        weights = torch.ones(mu.shape[0], device=mu.device)
        index = pick_components(weights, n, generator).to(mu.device)
        noise = standard_noise(n, self.latent_dim, generator, mu.device)
        return (mu[index] + noise * torch.exp(0.5 * logvar[index])).to(device)
