import math

import pytest
import torch
import torch.nn.functional as F

from vae_lit.errors import UserError
from vae_lit.kl_schedule import KLSchedule
from vae_lit.losses import NegativeELBO, gaussian_kl_per_dim


def test_kl_is_zero_when_the_posterior_is_the_prior():
    mu, logvar = torch.zeros(4, 7), torch.zeros(4, 7)
    assert torch.all(gaussian_kl_per_dim(mu, logvar) == 0)


def test_kl_matches_torch_distributions():
    torch.manual_seed(0)
    mu, logvar = torch.randn(5, 3), torch.randn(5, 3)
    q = torch.distributions.Normal(mu, (0.5 * logvar).exp())
    p = torch.distributions.Normal(torch.zeros(3), torch.ones(3))
    expected = torch.distributions.kl_divergence(q, p)
    torch.testing.assert_close(gaussian_kl_per_dim(mu, logvar), expected)


def test_bernoulli_nll_is_binary_cross_entropy_summed_per_image():
    torch.manual_seed(0)
    x, logits = torch.rand(3, 1, 4, 4), torch.randn(3, 1, 4, 4)
    p = torch.sigmoid(logits)
    by_hand = -(x * p.log() + (1 - x) * (1 - p).log()).flatten(1).sum(1)
    nll = NegativeELBO("bernoulli").reconstruction_nll(logits, x)
    torch.testing.assert_close(nll, by_hand, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(nll.mean(), F.binary_cross_entropy(p, x, reduction="sum") / 3)


def test_bernoulli_nll_is_stable_for_extreme_logits():
    x = torch.tensor([[0.0, 1.0]]).view(1, 1, 1, 2)
    logits = torch.tensor([[200.0, -200.0]]).view(1, 1, 1, 2)
    nll = NegativeELBO("bernoulli").reconstruction_nll(logits, x)
    assert torch.isfinite(nll).all() and nll.item() == pytest.approx(400.0)


def test_gaussian_nll_matches_normal_log_prob():
    torch.manual_seed(0)
    x, logits = torch.rand(2, 3, 5, 5), torch.randn(2, 3, 5, 5)
    loss = NegativeELBO("gaussian", gaussian_scale=0.2)
    expected = (
        -torch.distributions.Normal(torch.sigmoid(logits), 0.2).log_prob(x).flatten(1).sum(1)
    )
    torch.testing.assert_close(loss.reconstruction_nll(logits, x), expected)


def test_learned_gaussian_scale_is_a_parameter():
    loss = NegativeELBO("gaussian", gaussian_scale=0.3, learn_scale=True)
    assert [name for name, _ in loss.named_parameters()] == ["log_scale"]
    assert loss.log_scale.exp().item() == pytest.approx(0.3)


def test_elbo_terms_and_bits_per_dim():
    torch.manual_seed(0)
    x, logits = torch.rand(4, 3, 8, 8), torch.randn(4, 3, 8, 8)
    mu, logvar = torch.randn(4, 6), torch.randn(4, 6)
    terms = NegativeELBO()(x, logits, mu, logvar, beta=0.5)
    kl = gaussian_kl_per_dim(mu, logvar).sum(1).mean()
    torch.testing.assert_close(terms.kl, kl)
    torch.testing.assert_close(terms.loss, terms.recon + 0.5 * kl)
    torch.testing.assert_close(terms.neg_elbo, terms.recon + kl)
    torch.testing.assert_close(terms.bits_per_dim, terms.neg_elbo / (3 * 8 * 8 * math.log(2)))
    assert terms.kl_per_dim.shape == (6,)


def test_free_bits_floor_each_dimension():
    x, logits = torch.rand(2, 1, 4, 4), torch.zeros(2, 1, 4, 4)
    mu, logvar = torch.zeros(2, 3), torch.zeros(2, 3)  # KL = 0 in every dimension
    terms = NegativeELBO(free_bits=0.25)(x, logits, mu, logvar)
    torch.testing.assert_close(terms.loss, terms.recon + 3 * 0.25)
    assert terms.kl.item() == 0.0  # the reported KL is the true one


def test_unknown_likelihood_is_refused():
    with pytest.raises(UserError, match=r"model.loss.likelihood='poisson' is unknown"):
        NegativeELBO("poisson")


def test_kl_schedules():
    assert KLSchedule("constant", beta=2.0)(1000) == 2.0
    linear = KLSchedule("linear", beta=1.0, warmup_steps=100)
    assert [linear(s) for s in (0, 50, 100, 500)] == [0.0, 0.5, 1.0, 1.0]
    cyc = KLSchedule("cyclical", beta=1.0, cycle_steps=100, ramp_fraction=0.5)
    assert [cyc(s) for s in (0, 25, 50, 99, 100, 125)] == [0.0, 0.5, 1.0, 1.0, 0.0, 0.5]
    with pytest.raises(UserError, match="warmup_steps"):
        KLSchedule("linear")
