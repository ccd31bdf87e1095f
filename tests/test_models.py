import pytest
import torch

from vae_lit.errors import UserError
from vae_lit.networks import ConvVAE
from vae_lit.networks.conv_vae import downsampled_sizes


@pytest.mark.parametrize("size", [16, 17, 28, 31, 33, 64, 150])
@pytest.mark.parametrize("channels", [1, 3])
def test_decoder_gives_back_the_input_size(size, channels):
    net = ConvVAE(
        image_size=size, channels=channels, latent_dim=5, hidden_channels=(8, 16, 16, 32)
    )
    x = torch.rand(2, channels, size, size)
    out = net(x)
    assert out.logits.shape == x.shape
    assert out.mu.shape == out.logvar.shape == out.z.shape == (2, 5)
    assert net.decode(torch.randn(3, 5)).shape == (3, channels, size, size)


def test_the_150_pipeline_matches_the_original_setup():
    assert downsampled_sizes(150, 4) == [150, 75, 38, 19, 10]
    net = ConvVAE(image_size=150, channels=3, latent_dim=128)
    feats = net.encoder.features(torch.rand(1, 3, 150, 150))
    assert feats.shape == (1, 256, 10, 10)


@pytest.mark.parametrize("latent_dim", [1, 2, 200])
def test_any_latent_size(latent_dim):
    net = ConvVAE(image_size=32, channels=3, latent_dim=latent_dim)
    assert net(torch.rand(1, 3, 32, 32)).z.shape == (1, latent_dim)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"latent_dim": 0}, "model.net.latent_dim=0"),
        ({"image_size": 8}, "data.image_size=8 is too small"),
        ({"channels": 2}, "data.channels=2"),
        ({"hidden_channels": ()}, "model.net.hidden_channels"),
    ],
)
def test_impossible_shapes_are_refused(kwargs, message):
    with pytest.raises(UserError, match=message):
        ConvVAE(**{"image_size": 32, **kwargs})
