"""Training objectives against hand computations and the identities their papers state."""

import math

import pytest
import torch

from vae_lit.errors import UserError
from vae_lit.model.kl_schedule import KLSchedule
from vae_lit.model.likelihoods import Bernoulli
from vae_lit.model.objectives import (
    DIPVAE,
    ELBO,
    IWAE,
    BetaTCVAE,
    InfoVAE,
    mmd,
    negative_elbo,
)
from vae_lit.model.priors import MixtureOfGaussians, StandardNormal, gaussian_kl_per_dim
from vae_lit.networks import ConvVAE


@pytest.fixture
def pieces():
    torch.manual_seed(0)
    net = ConvVAE(16, 3, latent_dim=6, hidden_channels=(8, 16))
    x = torch.randint(0, 256, (8, 3, 16, 16)) / 255
    return x, net, Bernoulli(3), StandardNormal(6)


def test_elbo_terms_and_bits_per_dim(pieces):
    x, net, likelihood, prior = pieces
    torch.manual_seed(1)
    terms = ELBO(KLSchedule(beta=0.5))(x, net, likelihood, prior, step=0)
    torch.manual_seed(1)  # the same z, by hand
    mu, logvar = net.encode(x)
    z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
    recon = -likelihood.log_prob(net.decode(z), x).mean()
    kl = gaussian_kl_per_dim(mu, logvar).sum(1).mean()
    torch.testing.assert_close(terms.recon, recon)
    torch.testing.assert_close(terms.kl, kl)
    torch.testing.assert_close(terms.loss, recon + 0.5 * kl)
    torch.testing.assert_close(terms.neg_elbo, recon + kl)
    torch.testing.assert_close(terms.bits_per_dim, terms.neg_elbo / (3 * 16 * 16 * math.log(2)))
    assert terms.kl_per_dim.shape == (6,)


def test_free_bits_floor_each_dimension(pieces):
    x, net, likelihood, prior = pieces
    torch.manual_seed(1)
    terms = ELBO(free_bits=5.0)(x, net, likelihood, prior, step=0)
    torch.testing.assert_close(terms.loss, terms.recon + terms.kl_per_dim.clamp(min=5.0).sum())
    with pytest.raises(UserError, match="free_bits=5.0 needs a per-dimension KL"):
        ELBO(free_bits=5.0).check(MixtureOfGaussians(6, 3))


def test_capacity_form_follows_c_of_t(pieces):
    """Burgess et al. 2018: recon + gamma * |KL - C(t)|, C linear from 0 to C_max."""
    x, net, likelihood, prior = pieces
    objective = ELBO(capacity_gamma=100.0, capacity_max_nats=20.0, capacity_steps=100)
    assert [objective.capacity(s) for s in (0, 50, 100, 1000)] == [0.0, 10.0, 20.0, 20.0]
    torch.manual_seed(1)
    terms = objective(x, net, likelihood, prior, step=50)
    torch.testing.assert_close(terms.loss, terms.recon + 100.0 * (terms.kl - 10.0).abs())


def test_iwae_with_one_sample_is_the_elbo_in_expectation(pieces):
    """Burda et al. 2016: k = 1 is the one-sample ELBO. With the same seed both draw the same z,
    so the reconstruction terms agree exactly; the IWAE's KL is the Monte Carlo estimate of the
    ELBO's analytic one, so the losses agree on average."""
    x, net, likelihood, prior = pieces
    with torch.no_grad():
        torch.manual_seed(3)
        elbo = ELBO()(x, net, likelihood, prior, step=0)
        torch.manual_seed(3)
        iwae = IWAE(k=1)(x, net, likelihood, prior, step=0)
        torch.testing.assert_close(iwae.recon, elbo.recon)
        elbo_losses, iwae_losses = [], []
        for seed in range(300):
            torch.manual_seed(seed)
            elbo_losses.append(ELBO()(x, net, likelihood, prior, step=0).loss)
            torch.manual_seed(seed)
            iwae_losses.append(IWAE(k=1)(x, net, likelihood, prior, step=0).loss)
    difference = torch.stack(iwae_losses) - torch.stack(elbo_losses)  # MC KL - analytic KL
    assert abs(difference.mean().item()) < 3 * difference.std().item() / math.sqrt(300)
    assert difference.std() > 0  # they are not the same numbers, only the same in expectation


def test_iwae_tightens_with_k(pieces):
    x, net, likelihood, prior = pieces
    with torch.no_grad():
        torch.manual_seed(0)
        loss_1 = torch.stack([IWAE(1)(x, net, likelihood, prior, 0).loss for _ in range(20)])
        loss_20 = torch.stack([IWAE(20)(x, net, likelihood, prior, 0).loss for _ in range(20)])
    assert loss_20.mean() < loss_1.mean()


def test_mmd_is_zero_for_one_distribution_and_positive_for_a_shifted_one():
    """Gretton et al. 2012: the unbiased MMD^2 estimate averages 0 for equal distributions."""
    generator = torch.Generator().manual_seed(0)
    a, b = (torch.randn(400, 4, generator=generator) for _ in range(2))
    shifted = torch.randn(400, 4, generator=generator) + 1.0
    for kernel in ("imq", "rbf"):
        same, different = mmd(a, b, kernel, 8.0), mmd(a, shifted, kernel, 8.0)
        assert abs(same.item()) < 0.01
        assert different.item() > 0.05 and different > 10 * abs(same)


def test_info_vae_weights_kl_and_mmd(pieces):
    x, net, likelihood, prior = pieces
    torch.manual_seed(2)
    terms = InfoVAE(alpha=0.5, lambda_=10.0)(x, net, likelihood, prior, step=0)
    expected = terms.recon + 0.5 * terms.kl + 9.5 * terms.extras["mmd"]
    torch.testing.assert_close(terms.loss, expected)


def test_beta_tcvae_terms_sum_to_the_minibatch_kl(pieces):
    """Chen et al. 2018: index-code MI + total correlation + dimension-wise KL = E[log q(z|x) -
    log p(z)], whichever estimate of log q(z) the middle terms share."""
    x, net, likelihood, prior = pieces
    objective = BetaTCVAE(alpha=1.0, beta=6.0, gamma=1.0)
    objective.prepare(1000)
    generator = torch.Generator().manual_seed(0)
    mu, logvar = torch.randn(32, 6, generator=generator), torch.randn(32, 6, generator=generator)
    z = mu + torch.randn(32, 6, generator=generator) * (0.5 * logvar).exp()
    for p in (prior, MixtureOfGaussians(6, 4)):
        parts = objective.decomposition(mu, logvar, z, p)
        log_q = -0.5 * (((z - mu) ** 2) / logvar.exp() + logvar + math.log(2 * math.pi)).sum(1)
        minibatch_kl = (log_q - p.log_prob(z)).mean()
        torch.testing.assert_close(sum(parts.values()), minibatch_kl, rtol=1e-5, atol=1e-4)
    # a batch of one image per code: its own posterior dominates, so the MI estimate is
    # log q(z|x) - log q(z) ~ log(N * M) - log(1): positive
    assert parts["mutual_info"] > 0
    torch.manual_seed(1)
    terms = objective(x, net, likelihood, prior, step=0)
    e = terms.extras
    weighted = e["mutual_info"] + 6.0 * e["total_correlation"] + e["dimension_kl"]
    torch.testing.assert_close(terms.loss, terms.recon + weighted)


def test_dip_vae_penalises_the_covariance_of_the_codes():
    """Kumar et al. 2018: zero penalty exactly when Cov[mu] (type i) is the identity."""
    objective = DIPVAE("i", lambda_od=10.0, lambda_d=100.0)
    mu = torch.randn(1000, 3)
    mu = (mu - mu.mean(0)) @ torch.linalg.inv(
        torch.linalg.cholesky(torch.cov(mu.T, correction=0))
    ).T
    torch.testing.assert_close(objective.covariance(mu, torch.zeros(1000, 3)), torch.eye(3))
    type_ii = DIPVAE("ii").covariance(mu, torch.full((1000, 3), math.log(0.5)))
    torch.testing.assert_close(type_ii, torch.eye(3) * 1.5)


def test_validation_reports_the_plain_bound_whatever_the_objective(pieces):
    x, net, likelihood, prior = pieces
    torch.manual_seed(4)
    plain = negative_elbo(x, net, likelihood, prior)
    torch.manual_seed(4)
    tc = BetaTCVAE()(x, net, likelihood, prior, step=0)
    torch.testing.assert_close(tc.neg_elbo, plain.neg_elbo)
    assert not torch.allclose(tc.loss, plain.loss)


def test_bad_objective_options_are_one_line():
    with pytest.raises(UserError, match="model.objective.k=0 must be a positive integer"):
        IWAE(0)
    with pytest.raises(UserError, match="model.objective.dip_type='iii' is unknown"):
        DIPVAE("iii")
    with pytest.raises(UserError, match="model.objective.kernel='cosine' is unknown"):
        InfoVAE(kernel="cosine")
    with pytest.raises(UserError, match="model.objective.free_bits=nan must be >= 0"):
        ELBO(free_bits=float("nan"))


def test_kl_schedules():
    assert KLSchedule("constant", beta=2.0)(1000) == 2.0
    linear = KLSchedule("linear", beta=1.0, warmup_steps=100)
    assert [linear(s) for s in (0, 50, 100, 500)] == [0.0, 0.5, 1.0, 1.0]
    cyc = KLSchedule("cyclical", beta=1.0, cycle_steps=100, ramp_fraction=0.5)
    assert [cyc(s) for s in (0, 25, 50, 99, 100, 125)] == [0.0, 0.5, 1.0, 1.0, 0.0, 0.5]
    with pytest.raises(UserError, match="warmup_steps"):
        KLSchedule("linear")
