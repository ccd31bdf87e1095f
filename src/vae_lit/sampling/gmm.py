"""`gmm`: a Gaussian mixture fitted by EM on a trained VAE's codes (Ghosh et al. 2020, "From
Variational to Deterministic Autoencoders", section 4 "ex-post density estimation")."""

import math
from typing import Any

import torch

from vae_lit.errors import UserError
from vae_lit.sampling.latent_sampler import LatentSampler

LOG_2PI = math.log(2 * math.pi)
COVARIANCES = ("full", "diag")


def gaussian_log_probs(
    x: torch.Tensor, means: torch.Tensor, scale: torch.Tensor, covariance: str
) -> torch.Tensor:
    """log N(x_n; mean_k, Sigma_k) for every point and component: (N, D) -> (N, K).

    `scale` is the lower Cholesky factor of each Sigma_k (K, D, D) for `full`, the standard
    deviations (K, D) for `diag`.
    """
    diff = x.unsqueeze(1) - means.unsqueeze(0)  # (N, K, D)
    if covariance == "full":
        # L y = diff per component: Mahalanobis distance |y|^2; log det Sigma = 2 sum log diag L
        y = torch.linalg.solve_triangular(scale, diff.permute(1, 2, 0), upper=False)  # (K, D, N)
        mahalanobis = y.pow(2).sum(1).t()
        log_det = 2 * torch.log(torch.diagonal(scale, dim1=-2, dim2=-1)).sum(-1)
    else:
        mahalanobis = (diff / scale.unsqueeze(0)).pow(2).sum(-1)
        log_det = 2 * torch.log(scale).sum(-1)
    return -0.5 * (x.shape[1] * LOG_2PI + log_det.unsqueeze(0) + mahalanobis)


def kmeans_plus_plus(x: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """k starting centres, each drawn with probability proportional to its squared distance from
    the centres so far (Arthur & Vassilvitskii 2007)."""
    first = torch.randint(len(x), (1,), generator=generator)
    centres = [x[first[0]]]
    closest = (x - centres[0]).pow(2).sum(1)
    for _ in range(1, k):
        weights = closest / closest.sum() if closest.sum() > 0 else torch.ones_like(closest)
        pick = torch.multinomial(weights.float(), 1, generator=generator)[0]
        centres.append(x[pick])
        closest = torch.minimum(closest, (x - x[pick]).pow(2).sum(1))
    return torch.stack(centres)


class GaussianMixture(LatentSampler):
    """A mixture of `num_components` Gaussians with `full` or `diag` covariances, fitted by EM
    (Dempster et al. 1977; Bishop 2006, section 9.2.2) in float64.

    EM starts from k-means++ centres and a few Lloyd iterations; `reg_covar` is added to each
    covariance's diagonal so a component on a few points stays invertible. It stops when the mean
    log-likelihood per point improves by less than `tol`, or after `max_iter` iterations.
    """

    name = "gmm"

    def __init__(
        self,
        num_components: int = 10,
        covariance: str = "full",
        max_iter: int = 300,
        tol: float = 1e-5,
        reg_covar: float = 1e-6,
        seed: int = 0,
    ):
        super().__init__(seed)
        if int(num_components) < 1:
            raise UserError(
                f"samplers.gmm.num_components={num_components} must be a positive integer"
            )
        if covariance not in COVARIANCES:
            raise UserError(
                f"samplers.gmm.covariance={covariance!r} is unknown; use one of: "
                f"{', '.join(COVARIANCES)}"
            )
        finite = all(isinstance(v, int | float) and math.isfinite(v) for v in (reg_covar, tol))
        if not finite or reg_covar <= 0 or tol < 0 or int(max_iter) < 1:
            raise UserError(
                f"samplers.gmm: reg_covar={reg_covar} must be > 0 (it keeps every covariance "
                f"invertible), tol={tol} a number >= 0 and "
                f"max_iter={max_iter} >= 1"
            )
        self.num_components, self.covariance = int(num_components), covariance
        self.max_iter, self.tol, self.reg_covar = int(max_iter), float(tol), float(reg_covar)

    def settings(self) -> dict[str, Any]:
        return {
            "num_components": self.num_components,
            "covariance": self.covariance,
            "max_iter": self.max_iter,
            "tol": self.tol,
            "reg_covar": self.reg_covar,
            "seed": self.seed,
        }

    def build(self, dim: int) -> None:
        self.dim, k = int(dim), self.num_components
        scale_shape = (k, self.dim, self.dim) if self.covariance == "full" else (k, self.dim)
        self.register_buffer("log_weights", torch.zeros(k, dtype=torch.float64))
        self.register_buffer("means", torch.zeros(k, self.dim, dtype=torch.float64))
        self.register_buffer("scale", torch.zeros(scale_shape, dtype=torch.float64))

    def m_step(self, x: torch.Tensor, resp: torch.Tensor) -> None:
        """Weights, means and covariances from the responsibilities (N, K)."""
        counts = resp.sum(0) + 10 * torch.finfo(resp.dtype).eps
        means = resp.t() @ x / counts.unsqueeze(1)
        diff = x.unsqueeze(1) - means.unsqueeze(0)  # (N, K, D)
        if self.covariance == "full":
            weighted = diff * resp.unsqueeze(2)
            cov = torch.einsum("nkd,nke->kde", weighted, diff) / counts.view(-1, 1, 1)
            cov = cov + self.reg_covar * torch.eye(self.dim, dtype=x.dtype)
            scale = torch.linalg.cholesky(cov)
        else:
            var = (resp.unsqueeze(2) * diff.pow(2)).sum(0) / counts.unsqueeze(1)
            scale = (var + self.reg_covar).sqrt()
        self.log_weights.copy_(torch.log(counts / counts.sum()))
        self.means.copy_(means)
        self.scale.copy_(scale)

    def joint_log_probs(self, x: torch.Tensor) -> torch.Tensor:
        """log w_k + log N(x_n; mean_k, Sigma_k): (N, K)."""
        return self.log_weights + gaussian_log_probs(x, self.means, self.scale, self.covariance)

    @torch.no_grad()
    def fit(self, codes: torch.Tensor) -> dict[str, float]:
        x = codes.detach().to("cpu", torch.float64)
        n, dim = x.shape
        if n < self.num_components:
            raise UserError(
                f"samplers.gmm.num_components={self.num_components} is more than the {n} "
                "training codes; lower it"
            )
        self.build(dim)
        generator = torch.Generator().manual_seed(self.seed)
        centres = kmeans_plus_plus(x, self.num_components, generator)
        for _ in range(10):  # Lloyd iterations: hard assignments to start EM from
            assign = torch.cdist(x, centres).argmin(1)
            for k in range(self.num_components):
                if (assign == k).any():
                    centres[k] = x[assign == k].mean(0)
        resp = torch.nn.functional.one_hot(assign, self.num_components).to(x.dtype)
        self.m_step(x, resp)
        previous, converged, iterations = -math.inf, False, 0
        for iterations in range(1, self.max_iter + 1):  # noqa: B007 (reported after the loop)
            joint = self.joint_log_probs(x)
            log_norm = torch.logsumexp(joint, dim=1, keepdim=True)
            mean_ll = float(log_norm.mean())
            if mean_ll - previous < self.tol:
                converged = True
                break
            previous = mean_ll
            self.m_step(x, torch.exp(joint - log_norm))
        final = float(self.log_prob(x).mean())
        return {"iterations": iterations, "converged": converged, "train_log_likelihood": final}

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        x = z.detach().to(self.means.device, torch.float64)
        return torch.logsumexp(self.joint_log_probs(x), dim=1).to(z.device, torch.float32)

    def sample(self, n: int, generator: torch.Generator | None = None, device=None):
        weights = torch.exp(self.log_weights).cpu()
        component = torch.multinomial(weights, n, replacement=True, generator=generator)
        noise = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        means, scale = self.means.cpu()[component], self.scale.cpu()[component]
        if self.covariance == "full":
            points = means + (scale @ noise.unsqueeze(2)).squeeze(2)
        else:
            points = means + scale * noise
        return points.float().to(device or "cpu")
