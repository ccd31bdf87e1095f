"""Pixel likelihoods against hand computations and the properties a distribution must have."""

import pytest
import torch
import torch.nn.functional as F

from vae_lit.errors import UserError
from vae_lit.model.likelihoods import (
    Bernoulli,
    DiscretizedLogistic,
    DiscretizedLogisticMixture,
    Gaussian,
    discretized_logistic_log_prob,
)

VALUES = torch.arange(256) / 255  # every 8-bit value of a subpixel, in [0, 1]


def test_bernoulli_is_binary_cross_entropy_summed_per_image():
    torch.manual_seed(0)
    x, logits = torch.rand(3, 1, 4, 4), torch.randn(3, 1, 4, 4)
    p = torch.sigmoid(logits)
    by_hand = (x * p.log() + (1 - x) * (1 - p).log()).flatten(1).sum(1)
    log_prob = Bernoulli(1).log_prob(logits, x)
    torch.testing.assert_close(log_prob, by_hand, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(-log_prob.mean(), F.binary_cross_entropy(p, x, reduction="sum") / 3)


def test_bernoulli_is_stable_for_extreme_logits():
    x = torch.tensor([0.0, 1.0]).view(1, 1, 1, 2)
    logits = torch.tensor([200.0, -200.0]).view(1, 1, 1, 2)
    assert Bernoulli(1).log_prob(logits, x).item() == pytest.approx(-400.0)


def test_gaussian_matches_normal_log_prob():
    torch.manual_seed(0)
    x, out = torch.rand(2, 3, 5, 5), torch.randn(2, 3, 5, 5)
    expected = torch.distributions.Normal(torch.sigmoid(out), 0.2).log_prob(x).flatten(1).sum(1)
    torch.testing.assert_close(Gaussian(3, scale=0.2).log_prob(out, x), expected)


def test_learned_gaussian_scale_converges_to_the_residual_std():
    """sigma-VAE (Rybkin et al. 2021): maximising the likelihood over the scale sets it to the
    residual standard deviation, here made 0.05 in red, 0.1 in green, 0.2 in blue."""
    generator = torch.Generator().manual_seed(0)
    out = torch.randn(64, 3, 8, 8, generator=generator)
    stds = torch.tensor([0.05, 0.1, 0.2]).view(1, 3, 1, 1)
    noise = torch.randn(out.shape, generator=generator)
    noise = noise / noise.std(dim=(0, 2, 3), keepdim=True)  # exactly unit std per channel
    x = torch.sigmoid(out) + noise * stds  # x outside [0, 1] is fine for the density
    likelihood = Gaussian(3, scale=0.5, learn_scale=True)
    assert [name for name, _ in likelihood.named_parameters()] == ["log_scale"]
    optimizer = torch.optim.Adam(likelihood.parameters(), lr=0.05)
    for _ in range(400):
        optimizer.zero_grad()
        (-likelihood.log_prob(out, x).mean()).backward()
        optimizer.step()
    residual_rms = (x - torch.sigmoid(out)).pow(2).mean(dim=(0, 2, 3)).sqrt()
    torch.testing.assert_close(
        likelihood.log_scale.exp().detach(), residual_rms, rtol=1e-3, atol=0
    )


@pytest.mark.parametrize("seed", range(5))
def test_discretized_logistic_sums_to_one_over_the_256_values(seed):
    """PixelCNN++ (Salimans et al. 2017): 256 bins, edge bins open, so the masses sum to 1."""
    generator = torch.Generator().manual_seed(seed)
    mean = torch.randn(8, generator=generator) * 1.5  # some beyond the image range
    log_scale = torch.randn(8, generator=generator) * 2 - 2  # narrow to wide
    log_p = discretized_logistic_log_prob((VALUES * 2 - 1).view(256, 1), mean, log_scale)
    torch.testing.assert_close(log_p.exp().sum(0), torch.ones(8), atol=1e-4, rtol=0)


def test_discretized_logistic_per_image_is_the_product_over_subpixels():
    generator = torch.Generator().manual_seed(1)
    likelihood = DiscretizedLogistic(3)
    params = torch.randn(2, 6, 4, 4, generator=generator)
    x = torch.randint(0, 256, (2, 3, 4, 4), generator=generator) / 255
    mean, log_scale = params.split(3, dim=1)
    per_subpixel = discretized_logistic_log_prob(x * 2 - 1, mean, log_scale)
    torch.testing.assert_close(likelihood.log_prob(params, x), per_subpixel.flatten(1).sum(1))
    # the edge bins by hand: P(0) = sigmoid((-1 + 1/255 - m) / s), P(255) = 1 - sigmoid(...)
    m, s = torch.tensor(0.3), torch.tensor(0.2)
    low = discretized_logistic_log_prob(torch.tensor(-1.0), m, s.log()).exp()
    high = discretized_logistic_log_prob(torch.tensor(1.0), m, s.log()).exp()
    torch.testing.assert_close(low, torch.sigmoid((-1 + 1 / 255 - m) / s))
    torch.testing.assert_close(high, 1 - torch.sigmoid((1 - 1 / 255 - m) / s))


def test_mixture_sums_to_one_over_one_channel():
    likelihood = DiscretizedLogisticMixture(1, num_components=4)
    params = torch.randn(
        1, likelihood.out_channels, 1, 1, generator=torch.Generator().manual_seed(2)
    )
    log_p = likelihood.log_prob(params.expand(256, -1, -1, -1), VALUES.view(256, 1, 1, 1))
    assert log_p.exp().sum().item() == pytest.approx(1.0, abs=1e-4)


def test_coupled_mixture_sums_to_one_over_every_rgb_value():
    """With channel coupling the joint over all 256^3 colours of a pixel must still sum to 1."""
    likelihood = DiscretizedLogisticMixture(3, num_components=3)
    assert likelihood.out_channels == 3 * 10
    params = torch.randn(1, 30, 1, 1, generator=torch.Generator().manual_seed(3))
    green, blue = torch.meshgrid(VALUES, VALUES, indexing="ij")
    total = torch.zeros((), dtype=torch.float64)
    for red in VALUES:
        x = torch.stack([torch.full_like(green, red), green, blue]).flatten(1).T
        log_p = likelihood.log_prob(params.expand(len(x), -1, -1, -1), x.view(-1, 3, 1, 1))
        total += log_p.double().exp().sum()
    assert total.item() == pytest.approx(1.0, abs=1e-4)


def test_coupling_makes_green_follow_red():
    """One component, green's coefficient on red large: a red value moves green's distribution."""
    likelihood = DiscretizedLogisticMixture(3, num_components=1)
    params = torch.zeros(1, 10, 1, 1)
    params[0, 4:7] = -3.0  # narrow logistics
    params[0, 7] = 5.0  # tanh(5) ~ 1: green's mean = its own + red's value
    dark, bright = torch.tensor([0.0, 0.0, 0.5]), torch.tensor([1.0, 1.0, 0.5])
    grey_green = torch.tensor([0.0, 0.5, 0.5])
    lp = lambda x: likelihood.log_prob(params, x.view(1, 3, 1, 1)).item()  # noqa: E731
    assert lp(dark) > lp(grey_green) and lp(bright) > lp(grey_green)


@pytest.mark.parametrize(
    "likelihood",
    [Bernoulli(3), Gaussian(3), DiscretizedLogistic(3), DiscretizedLogisticMixture(3, 5)],
    ids=lambda lik: lik.name,
)
def test_mean_and_sample_are_images(likelihood):
    generator = torch.Generator().manual_seed(0)
    params = torch.randn(2, likelihood.out_channels, 6, 6, generator=generator) * 3
    for image in (likelihood.mean(params), likelihood.sample(params, generator)):
        assert image.shape == (2, 3, 6, 6)
        assert image.min() >= 0 and image.max() <= 1
    # decoder outputs far past the edges: a weighted sum of clipped means once rounded to -6e-8
    saturated = torch.randn(64, likelihood.out_channels, 16, 16, generator=generator) * 30
    image = likelihood.mean(saturated)
    assert image.min() >= 0 and image.max() <= 1
    if likelihood.kind == "discrete":  # draws are 8-bit values
        drawn = likelihood.sample(params, generator) * 255
        torch.testing.assert_close(drawn, drawn.round(), atol=1e-4, rtol=0)


def test_bad_options_are_refused_in_one_line():
    with pytest.raises(UserError, match="model.likelihood.scale=0 must be > 0"):
        Gaussian(3, scale=0)
    with pytest.raises(UserError, match="num_components=0"):
        DiscretizedLogisticMixture(3, num_components=0)
    with pytest.raises(UserError, match="data.channels=2"):
        Bernoulli(2)
