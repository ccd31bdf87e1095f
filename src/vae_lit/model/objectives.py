"""Training objectives: how the network, the likelihood and the prior become one loss.

Every objective reports the pieces of the plain negative ELBO (reconstruction NLL + KL, beta = 1)
next to what it optimises, so runs with different objectives compare on the same bound; validation
and test use `negative_elbo` alone. Numbers are nats per image, batch means.
"""

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from vae_lit.errors import UserError
from vae_lit.model.kl_schedule import KLSchedule
from vae_lit.model.likelihoods import Likelihood
from vae_lit.model.priors import LOG_2PI, Prior, diagonal_gaussian_log_prob

DIP_TYPES = ("i", "ii")
MMD_KERNELS = ("imq", "rbf")


@dataclass
class ObjectiveTerms:
    loss: torch.Tensor  # what the optimiser minimises
    recon: torch.Tensor  # -log p(x|z), one z ~ q(z|x)
    kl: torch.Tensor  # KL(q(z|x) || p(z)): analytic where the prior allows, else Monte Carlo
    neg_elbo: torch.Tensor  # recon + kl, the bound itself
    bits_per_dim: torch.Tensor  # neg_elbo / (pixels * channels * ln 2)
    kl_per_dim: torch.Tensor | None = None  # (latent_dim,), where the prior factorises
    extras: dict[str, torch.Tensor | float] = field(default_factory=dict)  # logged as train/<key>


@dataclass
class Pass:
    """One encode-sample-decode pass and the ELBO's pieces per image."""

    mu: torch.Tensor
    logvar: torch.Tensor
    z: torch.Tensor
    params: torch.Tensor  # decoder output: the likelihood's parameters
    recon: torch.Tensor  # -log p(x|z) per image, (N,)


def reparameterize(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    return mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)


def forward_pass(x: torch.Tensor, net: nn.Module, likelihood: Likelihood) -> Pass:
    mu, logvar = net.encode(x)
    z = reparameterize(mu, logvar)
    params = net.decode(z)
    mu, logvar = mu.float(), logvar.float()
    return Pass(mu, logvar, z.float(), params, -likelihood.log_prob(params, x))


def bits_per_dim(neg_elbo: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return neg_elbo / (x[0].numel() * math.log(2))


def elbo_terms(x: torch.Tensor, step: Pass, prior: Prior) -> ObjectiveTerms:
    """The plain bound (beta = 1) of one pass; `loss` is the negative ELBO."""
    recon = step.recon.mean()
    kl = prior.kl(step.mu, step.logvar, step.z)
    neg_elbo = recon + kl.kl
    return ObjectiveTerms(
        loss=neg_elbo,
        recon=recon,
        kl=kl.kl,
        neg_elbo=neg_elbo,
        bits_per_dim=bits_per_dim(neg_elbo, x),
        kl_per_dim=kl.per_dim,
    )


def negative_elbo(
    x: torch.Tensor, net: nn.Module, likelihood: Likelihood, prior: Prior
) -> ObjectiveTerms:
    """The plain negative ELBO: what validation and test report, whatever the objective."""
    return elbo_terms(x, forward_pass(x, net, likelihood), prior)


class Objective(nn.Module):
    """The interface every objective implements."""

    name: str = ""

    def check(self, prior: Prior) -> None:
        """Refuse, in one line, a prior this objective cannot work with."""

    def prepare(self, num_train_images: int) -> None:
        """Told the training set's size before fitting (beta-TC-VAE's estimator needs it)."""

    def forward(
        self, x: torch.Tensor, net: nn.Module, likelihood: Likelihood, prior: Prior, step: int
    ) -> ObjectiveTerms:
        raise NotImplementedError


class ELBO(Objective):
    """recon + beta(t) * KL, the (beta-)VAE objective (Kingma & Welling 2014; Higgins et al.
    2017), with a KL schedule, free bits (Kingma et al. 2016: a floor on each dimension's
    batch-mean KL, so no dimension is pushed to collapse), or the capacity form of Burgess et al.
    2018: recon + gamma * |KL - C(t)|, C growing linearly from 0 to `capacity_max_nats` over
    `capacity_steps`."""

    name = "elbo"

    def __init__(
        self,
        kl_schedule: KLSchedule | None = None,
        free_bits: float = 0.0,
        capacity_gamma: float | None = None,
        capacity_max_nats: float = 25.0,
        capacity_steps: int = 10000,
    ):
        super().__init__()
        if not float(free_bits) >= 0:
            raise UserError(
                f"model.objective.free_bits={free_bits} must be >= 0 (nats per dimension)"
            )
        if capacity_gamma is not None:
            if not float(capacity_gamma) > 0:
                raise UserError(f"model.objective.capacity_gamma={capacity_gamma} must be > 0")
            if not float(capacity_max_nats) >= 0 or int(capacity_steps) <= 0:
                raise UserError(
                    "model.objective.capacity_max_nats must be >= 0 and capacity_steps > 0"
                )
        self.kl_schedule = kl_schedule or KLSchedule()
        self.free_bits = float(free_bits)
        self.capacity_gamma = None if capacity_gamma is None else float(capacity_gamma)
        self.capacity_max_nats, self.capacity_steps = float(capacity_max_nats), int(capacity_steps)

    def check(self, prior: Prior) -> None:
        if self.free_bits > 0 and not prior.factorised:
            raise UserError(
                f"model.objective.free_bits={self.free_bits} needs a per-dimension KL, which "
                f"model/prior={prior.name} has not; use model/prior=normal or free_bits=0"
            )

    def capacity(self, step: int) -> float:
        return self.capacity_max_nats * min(1.0, step / self.capacity_steps)

    def forward(self, x, net, likelihood, prior, step) -> ObjectiveTerms:
        return self.weigh(elbo_terms(x, forward_pass(x, net, likelihood), prior), step)

    def weigh(self, terms: ObjectiveTerms, step: int) -> ObjectiveTerms:
        """The training loss of a bound's terms at `step`: its KL weighted by the schedule, with
        free bits or the capacity form. A hierarchical VAE, which computes its own terms, trains
        on this too."""
        if self.capacity_gamma is not None:
            capacity = self.capacity(step)
            terms.loss = terms.recon + self.capacity_gamma * (terms.kl - capacity).abs()
            terms.extras["capacity"] = capacity
            return terms
        beta = self.kl_schedule(step)
        kl = terms.kl
        if self.free_bits > 0:
            kl = terms.kl_per_dim.clamp(min=self.free_bits).sum()
        terms.loss = terms.recon + beta * kl
        terms.extras["beta"] = beta
        return terms


class BetaTCVAE(Objective):
    """recon + alpha * index-code MI + beta * total correlation + gamma * dimension-wise KL
    (Chen et al. 2018, "Isolating Sources of Disentanglement in VAEs"), with their minibatch-
    weighted sampling estimate of log q(z) and log prod_j q(z_j), which needs the training set
    size N: log q(z_i) ~ logsumexp_j log q(z_i | x_j) - log(N * M) for a batch of M."""

    name = "beta_tcvae"

    def __init__(self, alpha: float = 1.0, beta: float = 6.0, gamma: float = 1.0):
        super().__init__()
        for key, value in (("alpha", alpha), ("beta", beta), ("gamma", gamma)):
            if not float(value) >= 0:
                raise UserError(f"model.objective.{key}={value} must be >= 0")
        self.alpha, self.beta, self.gamma = float(alpha), float(beta), float(gamma)
        self.dataset_size = 0

    def prepare(self, num_train_images: int) -> None:
        self.dataset_size = int(num_train_images)

    def decomposition(
        self, mu: torch.Tensor, logvar: torch.Tensor, z: torch.Tensor, prior: Prior
    ) -> dict[str, torch.Tensor]:
        """Batch means of the three KL terms; they sum to mean(log q(z|x) - log p(z))."""
        batch = z.shape[0]
        size = max(self.dataset_size, batch)  # unprepared (a bare forward): the batch is the data
        # log q(z_i,d | x_j) for every pair (i, j) and dimension d: (M, M, D)
        pairwise = -0.5 * (
            (z.unsqueeze(1) - mu.unsqueeze(0)).pow(2) * torch.exp(-logvar.unsqueeze(0))
            + logvar.unsqueeze(0)
            + LOG_2PI
        )
        log_norm = math.log(batch * size)
        log_qz = torch.logsumexp(pairwise.sum(2), dim=1) - log_norm
        log_prod_qzj = (torch.logsumexp(pairwise, dim=1) - log_norm).sum(1)
        log_qz_x = diagonal_gaussian_log_prob(z, mu, logvar)
        log_pz = prior.log_prob(z)
        return {
            "mutual_info": (log_qz_x - log_qz).mean(),
            "total_correlation": (log_qz - log_prod_qzj).mean(),
            "dimension_kl": (log_prod_qzj - log_pz).mean(),
        }

    def forward(self, x, net, likelihood, prior, step) -> ObjectiveTerms:
        one = forward_pass(x, net, likelihood)
        terms = elbo_terms(x, one, prior)
        parts = self.decomposition(one.mu, one.logvar, one.z, prior)
        terms.loss = (
            terms.recon
            + self.alpha * parts["mutual_info"]
            + self.beta * parts["total_correlation"]
            + self.gamma * parts["dimension_kl"]
        )
        terms.extras.update(parts)
        return terms


class DIPVAE(Objective):
    """ELBO + lambda_od * sum_{i != j} Cov_ij^2 + lambda_d * sum_i (Cov_ii - 1)^2, pushing the
    aggregate posterior's covariance to the identity (Kumar et al. 2018, "Variational Inference of
    Disentangled Latent Concepts"): type `i` uses the covariance of the posterior means, type `ii`
    adds the mean posterior variance (the covariance of q(z) itself)."""

    name = "dip_vae"

    def __init__(self, dip_type: str = "i", lambda_od: float = 10.0, lambda_d: float = 100.0):
        super().__init__()
        if dip_type not in DIP_TYPES:
            raise UserError(f"model.objective.dip_type={dip_type!r} is unknown; use one of: i, ii")
        for key, value in (("lambda_od", lambda_od), ("lambda_d", lambda_d)):
            if not float(value) >= 0:
                raise UserError(f"model.objective.{key}={value} must be >= 0")
        self.dip_type, self.lambda_od, self.lambda_d = dip_type, float(lambda_od), float(lambda_d)

    def covariance(self, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        centred = mu - mu.mean(0, keepdim=True)
        cov = centred.T @ centred / mu.shape[0]
        if self.dip_type == "ii":
            cov = cov + torch.diag(logvar.exp().mean(0))
        return cov

    def forward(self, x, net, likelihood, prior, step) -> ObjectiveTerms:
        one = forward_pass(x, net, likelihood)
        terms = elbo_terms(x, one, prior)
        cov = self.covariance(one.mu, one.logvar)
        diagonal = torch.diagonal(cov)
        off_diagonal = (cov - torch.diag(diagonal)).pow(2).sum()
        penalty = self.lambda_od * off_diagonal + self.lambda_d * (diagonal - 1).pow(2).sum()
        terms.loss = terms.neg_elbo + penalty
        terms.extras["dip_penalty"] = penalty
        return terms


def kernel_matrix(a: torch.Tensor, b: torch.Tensor, kernel: str, scale: float) -> torch.Tensor:
    distances = torch.cdist(a, b).pow(2)
    if kernel == "imq":
        return scale / (scale + distances)
    return torch.exp(-distances / scale)


def mmd(a: torch.Tensor, b: torch.Tensor, kernel: str = "imq", scale: float = 1.0):
    """Unbiased squared maximum mean discrepancy between two samples (Gretton et al. 2012)."""
    n, m = a.shape[0], b.shape[0]
    k_aa = kernel_matrix(a, a, kernel, scale)
    k_bb = kernel_matrix(b, b, kernel, scale)
    k_ab = kernel_matrix(a, b, kernel, scale)
    same_a = (k_aa.sum() - k_aa.diagonal().sum()) / (n * (n - 1))
    same_b = (k_bb.sum() - k_bb.diagonal().sum()) / (m * (m - 1))
    return same_a + same_b - 2 * k_ab.mean()


class InfoVAE(Objective):
    """recon + (1 - alpha) * KL + (alpha + lambda - 1) * MMD(q(z), p(z)) (Zhao et al. 2019,
    "InfoVAE"), the MMD between the batch's codes and as many prior samples under an inverse
    multiquadric or RBF kernel of scale 2 * latent_dim (Tolstikhin et al. 2018, WAE)."""

    name = "info_vae"

    def __init__(self, alpha: float = 0.0, lambda_: float = 1000.0, kernel: str = "imq"):
        super().__init__()
        if kernel not in MMD_KERNELS:
            raise UserError(f"model.objective.kernel={kernel!r} is unknown; use one of: imq, rbf")
        if not float(alpha + lambda_ - 1) >= 0 or not float(alpha) <= 1:
            raise UserError(
                f"model.objective.alpha={alpha} and lambda_={lambda_} need alpha <= 1 and "
                "alpha + lambda_ >= 1 (both weights non-negative)"
            )
        self.alpha, self.lambda_, self.kernel = float(alpha), float(lambda_), kernel

    def forward(self, x, net, likelihood, prior, step) -> ObjectiveTerms:
        one = forward_pass(x, net, likelihood)
        terms = elbo_terms(x, one, prior)
        with torch.no_grad():
            prior_z = prior.sample(one.z.shape[0], device=one.z.device).float()
        discrepancy = mmd(one.z, prior_z, self.kernel, 2.0 * one.z.shape[1])
        terms.loss = (
            terms.recon
            + (1 - self.alpha) * terms.kl
            + (self.alpha + self.lambda_ - 1) * discrepancy
        )
        terms.extras["mmd"] = discrepancy
        return terms


class IWAE(Objective):
    """The k-sample importance-weighted bound as the training objective (Burda et al. 2016):
    -log (1/k) sum_i p(x, z_i) / q(z_i|x). k = 1 is the ELBO with a Monte Carlo KL; larger k is
    a tighter bound. The logged recon/KL are those of the first sample."""

    name = "iwae"

    def __init__(self, k: int = 5):
        super().__init__()
        if int(k) != k or int(k) < 1:
            raise UserError(f"model.objective.k={k} must be a positive integer")
        self.k = int(k)

    def forward(self, x, net, likelihood, prior, step) -> ObjectiveTerms:
        mu, logvar = net.encode(x)
        mu, logvar = mu.float(), logvar.float()
        eps = torch.randn((self.k, *mu.shape), device=mu.device, dtype=mu.dtype)
        z = mu + eps * torch.exp(0.5 * logvar)  # (k, N, D)
        params = net.decode(z.flatten(0, 1))
        targets = x.unsqueeze(0).expand(self.k, *x.shape).flatten(0, 1)
        log_px_z = likelihood.log_prob(params, targets).view(self.k, -1)
        log_pz = prior.log_prob(z)
        log_qz_x = -0.5 * (eps.pow(2) + LOG_2PI).sum(-1) - 0.5 * logvar.sum(-1)
        log_weights = log_px_z + log_pz - log_qz_x
        bound = torch.logsumexp(log_weights, dim=0) - math.log(self.k)
        first = Pass(mu, logvar, z[0], params[: x.shape[0]], -log_px_z[0])
        terms = elbo_terms(x, first, prior)
        terms.loss = -bound.mean()
        terms.extras["iwae_bound"] = bound.mean()
        return terms
