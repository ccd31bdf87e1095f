"""Networks: plain `nn.Module`s with no training logic."""

from vae_lit.models.conv_vae import ConvDecoder, ConvEncoder, ConvVAE, VAEOutput

__all__ = ["ConvDecoder", "ConvEncoder", "ConvVAE", "VAEOutput"]
