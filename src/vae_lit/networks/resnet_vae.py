"""Residual VAE network: GroupNorm + SiLU residual blocks at every level, stride-2 convs down,
bilinear upsampling + conv up (as in the conv network, so any square size comes back exactly).

Deeper than the seed's network at the same widths: the residual paths keep gradients healthy,
and GroupNorm does not depend on the batch size, so small and DDP-split batches train alike.
"""

import math

import torch
from torch import nn

from vae_lit.errors import UserError
from vae_lit.networks.conv_vae import check_net_shape, downsampled_sizes
from vae_lit.networks.output_conv import OutputConv2d


def group_norm(channels: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(groups, channels), channels)


class ResidualBlock(nn.Module):
    """x + conv(act(norm(conv(act(norm(x)))))): the pre-activation block of He et al. 2016."""

    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.body = nn.Sequential(
            group_norm(channels, groups),
            nn.SiLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
            group_norm(channels, groups),
            nn.SiLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class ResNetEncoder(nn.Module):
    """Image -> (mu, logvar): a stem conv, then per level residual blocks and a stride-2 conv."""

    def __init__(
        self, channels: int, widths: list[int], blocks: int, side: int, latent_dim: int, groups
    ):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(channels, widths[0], 3, padding=1)]
        in_ch = widths[0]
        for width in widths:
            layers += [ResidualBlock(in_ch, groups) for _ in range(blocks)]
            layers.append(nn.Conv2d(in_ch, width, 3, stride=2, padding=1))
            in_ch = width
        layers += [group_norm(in_ch, groups), nn.SiLU()]
        self.features = nn.Sequential(*layers)
        self.to_moments = nn.Linear(in_ch * side * side, 2 * latent_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.to_moments(self.features(x).flatten(1)).chunk(2, dim=1)
        return mu, logvar


class ResNetDecoder(nn.Module):
    """z -> likelihood parameters: per level bilinear upsampling, a conv, residual blocks."""

    def __init__(
        self,
        out_channels: int,
        widths: list[int],
        blocks: int,
        sizes: list[int],
        latent_dim: int,
        groups: int,
        fp32_output: bool = False,
    ):
        super().__init__()
        widths = list(reversed(widths))
        self.start_shape = (widths[0], sizes[-1], sizes[-1])
        self.from_latent = nn.Linear(latent_dim, widths[0] * sizes[-1] * sizes[-1])
        layers: list[nn.Module] = []
        targets = list(reversed(sizes[:-1]))
        outs = widths[1:] + [widths[-1]]
        for size, in_ch, out_ch in zip(targets, widths, outs, strict=True):
            layers += [ResidualBlock(in_ch, groups) for _ in range(blocks)]
            layers.append(nn.Upsample(size=(size, size), mode="bilinear", align_corners=False))
            layers.append(nn.Conv2d(in_ch, out_ch, 3, padding=1))
        layers += [
            group_norm(outs[-1], groups),
            nn.SiLU(),
            OutputConv2d(outs[-1], out_channels, fp32_output),
        ]
        self.blocks = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.from_latent(z).view(z.shape[0], *self.start_shape)
        if self.blocks[-1].weight.is_contiguous(memory_format=torch.channels_last):
            h = h.contiguous(memory_format=torch.channels_last)
        return self.blocks(h)


class ResNetVAE(nn.Module):
    """Any square `image_size` >= 16, 1 or 3 channels; `hidden_channels`: one width per level
    (each halving the side); `blocks_per_level` residual blocks per level, encoder and decoder."""

    def __init__(
        self,
        image_size: int = 64,
        channels: int = 3,
        latent_dim: int = 64,
        hidden_channels: tuple[int, ...] = (32, 64, 128, 256),
        blocks_per_level: int = 1,
        groups: int = 8,
        out_channels: int | None = None,
        fp32_output: bool = False,
    ):
        """`fp32_output`: the output layer in fp32 under autocast (networks/output_conv.py)."""
        super().__init__()
        if int(latent_dim) != latent_dim or int(latent_dim) <= 0:
            raise UserError(f"model.net.latent_dim={latent_dim} must be a positive integer")
        widths = check_net_shape("resnet VAE", image_size, channels, hidden_channels)
        if int(blocks_per_level) < 0 or int(groups) < 1:
            raise UserError("model.net.blocks_per_level must be >= 0 and model.net.groups >= 1")
        self.image_size, self.channels, self.latent_dim = (
            int(image_size),
            channels,
            int(latent_dim),
        )
        self.out_channels = int(out_channels or channels)
        sizes = downsampled_sizes(self.image_size, len(widths))
        blocks, groups = int(blocks_per_level), int(groups)
        self.encoder = ResNetEncoder(channels, widths, blocks, sizes[-1], self.latent_dim, groups)
        self.decoder = ResNetDecoder(
            self.out_channels, widths, blocks, sizes, self.latent_dim, groups, fp32_output
        )

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encoder(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latent codes -> the likelihood's parameters, (N, out_channels, H, W)."""
        return self.decoder(z)
