"""The evaluation metrics on models and codes whose right answer is known by construction."""

import numpy as np
import pytest
import torch
from torch import nn

from vae_lit.data.sprites import render_sprites, sample_factors
from vae_lit.metrics import (
    ActiveUnits,
    count_active_units,
    mse_per_image,
    mutual_information_gap,
    psnr_per_image,
)
from vae_lit.metrics.fid import FIDUnavailable, fid_metric
from vae_lit.model.importance_weighted import importance_weighted_log_likelihood
from vae_lit.model.likelihoods import Bernoulli
from vae_lit.model.objectives import negative_elbo
from vae_lit.model.priors import StandardNormal
from vae_lit.networks import ConvVAE


@pytest.fixture(scope="module")
def sprites() -> torch.Tensor:
    """64 grayscale 16x16 sprites as floats in [0, 1]."""
    return torch.from_numpy(render_sprites(sample_factors(64, seed=1), 16, channels=1)) / 255


@pytest.fixture(scope="module")
def trained_vae(sprites) -> tuple[ConvVAE, tuple[Bernoulli, StandardNormal]]:
    """A tiny VAE fitted for a few dozen steps: its posterior is far from exact, so the IWAE bound
    has room to tighten."""
    torch.manual_seed(0)
    net = ConvVAE(16, 1, latent_dim=4, hidden_channels=(8, 16))
    loss = Bernoulli(1), StandardNormal(4)  # the likelihood and prior the bounds need
    optimizer = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _ in range(40):
        optimizer.zero_grad()
        negative_elbo(sprites, net, *loss).loss.backward()
        optimizer.step()
    return net.eval(), loss


def mean_elbo(net, loss, images, repeats: int = 8) -> float:
    """The ELBO per image the training loss reports (one z per image, analytic KL), averaged."""
    torch.manual_seed(0)
    with torch.no_grad():
        values = []
        for _ in range(repeats):
            values.append(-negative_elbo(images, net, *loss).neg_elbo.item())
    return float(np.mean(values))


def mean_iwae(net, loss, images, k: int, repeats: int = 1) -> float:
    generator = torch.Generator().manual_seed(0)
    values = [
        importance_weighted_log_likelihood(net, *loss, images, k, 256, generator).mean().item()
        for _ in range(repeats)
    ]
    return float(np.mean(values))


def test_iwae_with_one_sample_is_the_elbo(trained_vae, sprites):
    net, loss = trained_vae
    elbo = mean_elbo(net, loss, sprites)
    iwae_1 = mean_iwae(net, loss, sprites, k=1, repeats=8)
    iwae_10 = mean_iwae(net, loss, sprites, k=10)
    # within sampling noise of each other, and well inside the gap that k=10 opens
    assert abs(iwae_1 - elbo) < 1.0, (iwae_1, elbo)
    assert iwae_10 - elbo > 2.0, (iwae_10, elbo)


def test_iwae_bound_is_above_the_elbo_and_tightens_with_k(trained_vae, sprites):
    net, loss = trained_vae
    elbo = mean_elbo(net, loss, sprites)
    bounds = [mean_iwae(net, loss, sprites, k) for k in (1, 10, 100)]
    assert bounds[0] < bounds[1] < bounds[2], bounds
    assert bounds[2] > elbo, (bounds, elbo)
    # k=100 in passes of 256 decodes (4 samples of 64 images at a time) covers every sample once
    per_image = importance_weighted_log_likelihood(net, *loss, sprites, 100, max_decodes=256)
    assert per_image.shape == (64,) and torch.isfinite(per_image).all()


def test_no_active_units_when_the_encoder_ignores_its_input(sprites):
    net = ConvVAE(16, 1, latent_dim=6, hidden_channels=(8, 16))
    with torch.no_grad():
        net.encoder.to_moments.weight.zero_()  # the posterior is its bias, whatever the image
        net.encoder.to_moments.bias.normal_()
        mu, _ = net.encode(sprites)
    assert count_active_units(mu) == 0


def test_every_unit_active_when_each_dimension_reads_its_own_part_of_the_image(sprites):
    # Each latent mean is the brightness of one quadrant (scaled like a standardised feature): four
    # informative dimensions that vary independently with where the sprite sits.
    encoder = nn.Sequential(nn.AvgPool2d(8), nn.Flatten(), nn.Linear(4, 4))
    with torch.no_grad():
        encoder[2].weight.copy_(10 * torch.eye(4))
        encoder[2].bias.zero_()
        mu = encoder(sprites)
    assert count_active_units(mu) == mu.shape[1] == 4


def test_active_units_counts_variance_above_the_threshold_streamed_over_batches():
    torch.manual_seed(0)
    mu = torch.randn(4000, 3) * torch.tensor([0.05, 0.5, 3.0]) + 7.0  # variances .0025, .25, 9
    metric = ActiveUnits(latent_dim=3)
    for chunk in mu.split(333):
        metric.update(chunk)
    assert int(metric.compute()) == 2
    np.testing.assert_allclose(metric.variances().numpy(), [0.0025, 0.25, 9.0], rtol=0.1)


def test_mig_is_higher_for_a_disentangled_code_than_for_a_rotated_one():
    factors = sample_factors(2000, seed=0)  # shape, colour, scale, rotation, x, y of real sprites
    rng = np.random.default_rng(0)
    disentangled = factors / factors.max(0) + 0.01 * rng.standard_normal(factors.shape)
    rotation, _ = np.linalg.qr(rng.standard_normal((6, 6)))
    rotated = disentangled @ rotation  # the same information, mixed across every dimension
    unrelated = rng.standard_normal(factors.shape)
    mig = mutual_information_gap(disentangled, factors)
    assert mig > 0.8
    assert mutual_information_gap(rotated, factors) < mig - 0.5
    assert mutual_information_gap(unrelated, factors) < 0.05


def test_mse_and_psnr_of_a_known_error():
    images = torch.rand(5, 3, 8, 8) * 0.8
    shifted = images + 0.1  # MSE 0.01 exactly, so PSNR 20 dB
    torch.testing.assert_close(mse_per_image(images, shifted), torch.full((5,), 0.01))
    torch.testing.assert_close(psnr_per_image(images, shifted), torch.full((5,), 20.0))
    assert torch.isfinite(psnr_per_image(images, images)).all()


def test_fid_without_local_weights_says_what_is_missing_and_downloads_nothing(tmp_path):
    with pytest.raises(FIDUnavailable, match="torch-fidelity|Inception weights"):
        fid_metric(tmp_path / "missing.pth")
    assert list(tmp_path.iterdir()) == []
