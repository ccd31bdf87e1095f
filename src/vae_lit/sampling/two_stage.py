"""`two_stage`: a second, small VAE on a trained VAE's codes (Dai & Wipf 2019, "Diagnosing and
Enhancing VAE Models"), sampled by decoding u ~ N(0, I)."""

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from vae_lit.errors import UserError
from vae_lit.sampling.latent_sampler import LatentSampler

LOG_2PI = math.log(2 * math.pi)


@contextmanager
def one_thread() -> Iterator[None]:
    """Matrices this small gain nothing from a second thread and lose a lot when the cores are
    busy: a step of the default two-stage VAE took 3.8 ms on one thread and 60 ms on two, on a
    2-core machine shared with other work."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def mlp(sizes: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.SiLU())
    return nn.Sequential(*layers)


class TwoStageVAE(LatentSampler):
    """A second VAE on the (standardised) codes, u in R^D -> z in R^D, with a Gaussian decoder of
    one learned variance gamma (Dai & Wipf 2019, section 4: the second stage's latent space as
    large as its data, so it can match the aggregate posterior and gamma need not go to 0).

    `log_prob` is the importance-weighted bound with `importance_samples` samples (Burda et al.
    2016), a lower bound on log p(z); the standardisation's Jacobian is included.
    """

    name = "two_stage"

    def __init__(
        self,
        hidden_dim: int = 256,
        num_layers: int = 2,
        steps: int = 3000,
        batch_size: int = 256,
        lr: float = 1e-3,
        importance_samples: int = 100,
        seed: int = 0,
    ):
        super().__init__(seed)
        sizes = (hidden_dim, num_layers, steps, batch_size)
        bad_lr = not (isinstance(lr, int | float) and math.isfinite(lr) and lr > 0)
        if not all(isinstance(v, int) and v >= 1 for v in sizes) or bad_lr:
            raise UserError(
                f"samplers.two_stage: hidden_dim={hidden_dim}, num_layers={num_layers}, "
                f"steps={steps} and batch_size={batch_size} must be positive integers and "
                f"lr={lr} > 0"
            )
        if int(importance_samples) < 1:
            raise UserError(
                f"samplers.two_stage.importance_samples={importance_samples} must be >= 1"
            )
        self.hidden_dim, self.num_layers = int(hidden_dim), int(num_layers)
        self.steps, self.batch_size, self.lr = int(steps), int(batch_size), float(lr)
        self.importance_samples = int(importance_samples)

    def settings(self) -> dict[str, Any]:
        return {
            "hidden_dim": self.hidden_dim,
            "num_layers": self.num_layers,
            "steps": self.steps,
            "batch_size": self.batch_size,
            "lr": self.lr,
            "importance_samples": self.importance_samples,
            "seed": self.seed,
        }

    def build(self, dim: int) -> None:
        self.dim = int(dim)
        hidden = [self.hidden_dim] * self.num_layers
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            self.encoder = mlp([self.dim, *hidden, 2 * self.dim])
            self.decoder = mlp([self.dim, *hidden, self.dim])
        self.log_gamma = nn.Parameter(torch.zeros(()))
        self.register_buffer("shift", torch.zeros(self.dim))
        self.register_buffer("scale", torch.ones(self.dim))

    def terms(self, x: torch.Tensor, k: int = 1):
        """log p(x|u), log p(u), log q(u|x) for `k` draws u ~ q(u|x): each (k, N)."""
        mu, logvar = self.encoder(x).chunk(2, dim=1)
        u = mu + torch.randn(k, *mu.shape, device=x.device) * torch.exp(0.5 * logvar)
        mean = self.decoder(u)
        log_px = -0.5 * (
            (x - mean).pow(2).sum(-1) * torch.exp(-self.log_gamma)
            + self.dim * (self.log_gamma + LOG_2PI)
        )
        log_pu = -0.5 * (u.pow(2) + LOG_2PI).sum(-1)
        log_qu = -0.5 * (((u - mu) ** 2) * torch.exp(-logvar) + logvar + LOG_2PI).sum(-1)
        return log_px, log_pu, log_qu

    def fit(self, codes: torch.Tensor) -> dict[str, float]:
        x = codes.detach().to("cpu", torch.float32)
        self.build(x.shape[1])
        with torch.no_grad():
            self.shift.copy_(x.mean(0))
            self.scale.copy_(x.std(0).clamp(min=1e-6) if len(x) > 1 else torch.ones(self.dim))
        data = (x - self.shift) / self.scale
        parameters = [*self.encoder.parameters(), *self.decoder.parameters(), self.log_gamma]
        optimizer = torch.optim.Adam(parameters, lr=self.lr)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, self.steps)
        generator = torch.Generator().manual_seed(self.seed)
        with torch.random.fork_rng(devices=[]), one_thread():
            torch.manual_seed(self.seed)
            for _ in range(self.steps):
                batch = data[torch.randint(len(data), (self.batch_size,), generator=generator)]
                log_px, log_pu, log_qu = self.terms(batch)
                loss = -(log_px + log_pu - log_qu).mean()
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
        return {
            "final_neg_elbo": float(loss.detach()),
            "gamma": float(torch.exp(self.log_gamma.detach())),
            "train_log_likelihood": float(self.log_prob(x).mean()),
        }

    @torch.no_grad()
    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        x = (z.detach().float().to(self.shift.device) - self.shift) / self.scale
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            values = []
            for batch in x.split(max(1, 65536 // self.importance_samples)):
                log_px, log_pu, log_qu = self.terms(batch, self.importance_samples)
                weights = log_px + log_pu - log_qu
                values.append(torch.logsumexp(weights, 0) - math.log(self.importance_samples))
        log_jacobian = torch.log(self.scale).sum()
        return (torch.cat(values) - log_jacobian).to(z.device)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None, device=None):
        u = torch.randn(n, self.dim, generator=generator).to(self.shift.device)
        noise = torch.randn(n, self.dim, generator=generator).to(self.shift.device)
        # z ~ p(z|u), the density log_prob scores: Dai & Wipf decode the mean alone, the same
        # once gamma is small, but a second stage that explains the codes by its noise would
        # then draw every sample at one point
        points = self.decoder(u) + noise * torch.exp(0.5 * self.log_gamma)
        return (points * self.scale + self.shift).to(device or "cpu")
