"""Networks: plain `nn.Module`s with no training logic. Each has `encode(x) -> (mu, logvar)` and
`decode(z) -> likelihood parameters`, and the attributes image_size, channels, latent_dim and
out_channels."""

from vae_lit.networks.conv_vae import ConvDecoder, ConvEncoder, ConvVAE, VAEOutput
from vae_lit.networks.resnet_vae import ResNetVAE

__all__ = ["ConvDecoder", "ConvEncoder", "ConvVAE", "ResNetVAE", "VAEOutput"]
