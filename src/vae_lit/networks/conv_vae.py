"""Convolutional VAE: stride-2 conv encoder, bilinear-upsample + conv decoder.

A stride-2 conv (kernel 3, padding 1) maps a side n to ceil(n / 2): 150 -> 75 -> 38 -> 19 -> 10.
The decoder upsamples to exactly the encoder's recorded sizes in reverse, so any square input size
comes back unchanged, odd sizes included.
"""

from dataclasses import dataclass

import torch
from torch import nn

from vae_lit.errors import UserError
from vae_lit.networks.output_conv import OutputConv2d
from vae_lit.networks.upsample_conv import fuses, upsample_conv

MIN_IMAGE_SIZE = 16


def check_net_shape(net: str, image_size: int, channels: int, hidden_channels) -> list[int]:
    """The image and width arguments every network takes, checked with the config key to fix;
    the widths as ints."""
    if int(image_size) < MIN_IMAGE_SIZE:
        raise UserError(
            f"data.image_size={image_size} is too small: the {net} needs at least "
            f"{MIN_IMAGE_SIZE} pixels a side"
        )
    if channels not in (1, 3):
        raise UserError(f"data.channels={channels} must be 1 (grayscale) or 3 (RGB)")
    if not hidden_channels or any(int(c) <= 0 for c in hidden_channels):
        raise UserError(
            f"model.net.hidden_channels={list(hidden_channels)} must be a non-empty list of "
            "positive widths"
        )
    return [int(c) for c in hidden_channels]


def downsampled_sizes(image_size: int, num_blocks: int) -> list[int]:
    """Spatial side after each stride-2 block, input first: [150, 75, 38, 19, 10]."""
    sizes = [image_size]
    for _ in range(num_blocks):
        sizes.append((sizes[-1] + 1) // 2)
    return sizes


@dataclass
class VAEOutput:
    """What one forward pass gives the loss: decoder logits and the posterior's parameters."""

    logits: torch.Tensor
    mu: torch.Tensor
    logvar: torch.Tensor
    z: torch.Tensor


class ConvEncoder(nn.Module):
    """Image -> (mu, logvar) of a diagonal Gaussian posterior q(z|x)."""

    def __init__(self, channels: int, hidden_channels: list[int], side: int, latent_dim: int):
        super().__init__()
        blocks, in_ch = [], channels
        for out_ch in hidden_channels:
            blocks += [nn.Conv2d(in_ch, out_ch, 3, stride=2, padding=1), nn.ReLU(inplace=True)]
            in_ch = out_ch
        self.features = nn.Sequential(*blocks)
        self.to_moments = nn.Linear(in_ch * side * side, 2 * latent_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.to_moments(self.features(x).flatten(1)).chunk(2, dim=1)
        return mu, logvar


class ConvDecoder(nn.Module):
    """z -> per-pixel logits, mirroring the encoder with bilinear upsampling + conv blocks."""

    def __init__(
        self,
        out_channels: int,
        hidden_channels: list[int],
        sizes: list[int],
        latent_dim: int,
        fp32_output: bool = False,
    ):
        super().__init__()
        widths = list(reversed(hidden_channels))  # [256, 128, 64, 32]
        self.start_shape = (widths[0], sizes[-1], sizes[-1])
        self.from_latent = nn.Linear(latent_dim, widths[0] * sizes[-1] * sizes[-1])
        blocks = []
        targets = list(reversed(sizes[:-1]))  # [19, 38, 75, 150]
        outs = widths[1:] + [out_channels]
        for i, (size, in_ch, out_ch) in enumerate(zip(targets, widths, outs, strict=True)):
            blocks.append(nn.Upsample(size=(size, size), mode="bilinear", align_corners=False))
            if i < len(targets) - 1:
                blocks += [nn.Conv2d(in_ch, out_ch, 3, padding=1), nn.ReLU(inplace=True)]
            else:  # the last conv gives the likelihood's parameters, no activation
                blocks.append(OutputConv2d(in_ch, out_ch, fp32_output))
        self.blocks = nn.Sequential(*blocks)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.from_latent(z)).view(z.shape[0], *self.start_shape)
        if self.blocks[1].weight.is_contiguous(memory_format=torch.channels_last):
            # a channels_last network: convert this small map once, not every upsampled one
            h = h.contiguous(memory_format=torch.channels_last)
        *body, upsample, conv = self.blocks
        for block in body:
            h = block(h)
        fused = fuses(h, upsample.size, conv.weight)  # the same layer, faster (upsample_conv)
        with conv.precision(h) as h:  # in fp32 with `fp32_output`, fused or not
            return upsample_conv(h, conv.weight, conv.bias) if fused else conv(upsample(h))


class ConvVAE(nn.Module):
    """The default network: any square `image_size` >= 16, 1 or 3 channels, any latent size."""

    def __init__(
        self,
        image_size: int = 150,
        channels: int = 3,
        latent_dim: int = 64,
        hidden_channels: tuple[int, ...] = (32, 64, 128, 256),
        out_channels: int | None = None,
        fp32_output: bool = False,
    ):
        """`out_channels`: the decoder's output maps, as many as the likelihood has parameters
        (None: one per image channel, what Bernoulli and Gaussian likelihoods take);
        `fp32_output`: the output layer in fp32 under autocast (networks/output_conv.py)."""
        super().__init__()
        if int(latent_dim) <= 0:
            raise UserError(f"model.net.latent_dim={latent_dim} must be a positive integer")
        hidden_channels = check_net_shape("conv VAE", image_size, channels, hidden_channels)
        self.image_size, self.channels, self.latent_dim = (
            int(image_size),
            channels,
            int(latent_dim),
        )
        sizes = downsampled_sizes(self.image_size, len(hidden_channels))
        self.encoder = ConvEncoder(channels, hidden_channels, sizes[-1], self.latent_dim)
        self.out_channels = int(out_channels or channels)
        self.decoder = ConvDecoder(
            self.out_channels, hidden_channels, sizes, self.latent_dim, fp32_output
        )

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encoder(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latent codes -> likelihood parameters (N, out_channels, H, W); Bernoulli: logits."""
        return self.decoder(z)

    @staticmethod
    def reparameterize(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        return mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)

    def forward(self, x: torch.Tensor) -> VAEOutput:
        mu, logvar = self.encode(x)
        z = self.reparameterize(mu, logvar)
        return VAEOutput(logits=self.decode(z), mu=mu, logvar=logvar, z=z)
