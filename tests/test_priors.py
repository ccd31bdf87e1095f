"""Priors against hand computations: KL, mixture densities, the VampPrior's definition."""

import math

import pytest
import torch

from vae_lit.errors import UserError
from vae_lit.model.priors import (
    MixtureOfGaussians,
    StandardNormal,
    VampPrior,
    diagonal_gaussian_log_prob,
    gaussian_kl_per_dim,
)
from vae_lit.networks import ConvVAE


def test_kl_is_zero_when_the_posterior_is_the_prior():
    assert torch.all(gaussian_kl_per_dim(torch.zeros(4, 7), torch.zeros(4, 7)) == 0)


def test_kl_matches_torch_distributions():
    torch.manual_seed(0)
    mu, logvar = torch.randn(5, 3), torch.randn(5, 3)
    q = torch.distributions.Normal(mu, (0.5 * logvar).exp())
    p = torch.distributions.Normal(torch.zeros(3), torch.ones(3))
    expected = torch.distributions.kl_divergence(q, p)
    torch.testing.assert_close(gaussian_kl_per_dim(mu, logvar), expected)
    terms = StandardNormal(3).kl(mu, logvar, z=mu)
    torch.testing.assert_close(terms.per_dim, expected.mean(0))
    torch.testing.assert_close(terms.kl, expected.sum(1).mean())


def test_mog_with_one_component_at_the_origin_is_the_standard_normal():
    """One fixed component N(0, I): log p(z) is the standard normal's exactly, and the Monte Carlo
    KL it uses averages to the analytic KL."""
    prior = MixtureOfGaussians(4, num_components=1, learnable=False)
    assert prior.means.abs().sum() == 0 and not list(prior.parameters())
    generator = torch.Generator().manual_seed(0)
    z = torch.randn(10, 4, generator=generator)
    torch.testing.assert_close(prior.log_prob(z), StandardNormal(4).log_prob(z))
    mu = torch.randn(1, 4, generator=generator).expand(200_000, 4)
    logvar = torch.randn(1, 4, generator=generator).expand(200_000, 4) * 0.5
    z = mu + torch.randn(mu.shape, generator=generator) * (0.5 * logvar).exp()
    analytic = gaussian_kl_per_dim(mu[:1], logvar[:1]).sum()
    assert prior.kl(mu, logvar, z).kl.item() == pytest.approx(analytic.item(), abs=0.02)


def test_mog_log_prob_is_the_mixture_density():
    prior = MixtureOfGaussians(2, num_components=3)
    with torch.no_grad():
        prior.logits.copy_(torch.tensor([0.0, 1.0, -1.0]))
        prior.logvars.copy_(torch.randn(3, 2, generator=torch.Generator().manual_seed(1)))
    z = torch.randn(5, 2)
    weights = torch.softmax(prior.logits, 0)
    density = sum(
        weights[k] * diagonal_gaussian_log_prob(z, prior.means[k], prior.logvars[k]).exp()
        for k in range(3)
    )
    torch.testing.assert_close(prior.log_prob(z), density.log())


def test_vamp_log_prob_is_the_mean_of_the_pseudo_input_posteriors():
    """Tomczak & Welling 2018: p(z) = (1/K) sum_k q(z | u_k), computed here one u_k at a time."""
    torch.manual_seed(0)
    net = ConvVAE(16, 3, latent_dim=5, hidden_channels=(8, 16))
    prior = VampPrior(5, image_size=16, channels=3, num_pseudo_inputs=7)
    prior.attach(net)
    z = torch.randn(9, 5)
    per_input = []
    for u in prior.pseudo_inputs():
        mu, logvar = net.encode(u.unsqueeze(0))
        per_input.append(diagonal_gaussian_log_prob(z, mu[0], logvar[0]))
    direct = torch.logsumexp(torch.stack(per_input), 0) - math.log(7)
    torch.testing.assert_close(prior.log_prob(z), direct, rtol=1e-5, atol=1e-5)
    # its gradient reaches the pseudo-inputs and the encoder
    prior.log_prob(z).sum().backward()
    assert prior.pseudo_logits.grad.abs().sum() > 0
    assert net.encoder.to_moments.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("name", ["normal", "mog", "vamp"])
def test_samples_repeat_for_a_seed(name):
    net = ConvVAE(16, 1, latent_dim=3, hidden_channels=(8,))
    prior = {
        "normal": StandardNormal(3),
        "mog": MixtureOfGaussians(3, 4),
        "vamp": VampPrior(3, 16, 1, 4),
    }[name]
    prior.attach(net)
    with torch.no_grad():
        a = prior.sample(6, torch.Generator().manual_seed(5))
        b = prior.sample(6, torch.Generator().manual_seed(5))
    assert a.shape == (6, 3) and torch.equal(a, b)


def test_the_normal_prior_draws_what_the_seed_model_drew():
    """The sample grid's latents stay those of earlier runs: z = randn(n, d) from the seed."""
    expected = torch.randn(8, 4, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(
        StandardNormal(4).sample(8, torch.Generator().manual_seed(0)), expected
    )


class MadeOnTheHost(torch.utils._python_dispatch.TorchDispatchMode):
    """Every op that makes a tensor on the CPU: a draw there must then be copied to the device."""

    def __init__(self):
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if torch.is_tensor(out) and out.device.type == "cpu":
            self.ops.append(func.__name__)
        return out


def test_a_draw_without_a_generator_is_made_on_the_device():
    """InfoVAE draws from N(0, I) every training step: drawn on the host, each draw would be a
    blocking host-to-device copy. (The meta device stands in for a GPU.)"""
    with MadeOnTheHost() as host:
        z = StandardNormal(4).sample(8, device="meta")
    assert z.device.type == "meta" and z.shape == (8, 4)
    assert host.ops == []


def test_bad_prior_options_are_one_line():
    with pytest.raises(UserError, match="model.prior.num_components=0"):
        MixtureOfGaussians(3, 0)
    with pytest.raises(UserError, match="model.net.latent_dim=1.5 must be a positive integer"):
        StandardNormal(1.5)
