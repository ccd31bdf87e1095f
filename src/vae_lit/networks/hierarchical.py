"""A top-down hierarchical VAE: latent layers at every resolution, inferred top-down.

The family of the ladder VAE (Sønderby et al. 2016), IAF's bidirectional inference (Kingma et al.
2016), NVAE (Vahdat & Kautz 2020) and VDVAE (Child 2021, openai/vdvae), whose shapes this follows:
- a bottom-up encoder of residual blocks keeps its activation at each resolution;
- a top-down decoder starts from a learned tensor at the coarsest resolution; at each latent layer
  a prior p(z_i | z_<i) is read from the decoder state, a posterior q(z_i | x, z_<i) from the state
  and the encoder's activation at that resolution, both diagonal Gaussians, so the KL is analytic;
  z_i is projected back into the state, and a residual block follows;
- resolutions halve as the conv net's do (150 -> 75 -> 38 -> 19 -> 10), average pooling down,
  nearest upsampling to the exact recorded sizes up, so any image size works.

The layout is three lists, one entry per resolution from the image size down: `encoder_blocks`,
`latent_layers` and `decoder_blocks` (residual blocks without a latent, after the latent layers).

Stability at init, as VDVAE found it must: the prior's last layer starts at zero (p = N(0, I), and
the prior adds nothing to the state), and the last layer of every residual branch of the decoder,
z's projection included, is scaled by sqrt(1 / number of decoder blocks).

Flat coordinates: `encode`/`decode` speak the whitened noise eps of all layers, concatenated
(z_i = mu_p,i + sigma_p,i * eps_i, a bijection given z_<i). Under the prior eps ~ N(0, I), so a
grid, a GIF, an interpolation or a temperature works as for a one-vector VAE;
`decode(encode(x)[0])` is the path of posterior means, the deterministic reconstruction.
"""

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from vae_lit.errors import UserError
from vae_lit.networks.conv_vae import downsampled_sizes
from vae_lit.networks.output_conv import OutputConv2d

LOG_2PI = math.log(2 * math.pi)


def gaussian_kl(
    mu_q: torch.Tensor, logstd_q: torch.Tensor, mu_p: torch.Tensor, logstd_p: torch.Tensor
) -> torch.Tensor:
    """KL(N(mu_q, std_q^2) || N(mu_p, std_p^2)) per element, in nats."""
    return (
        logstd_p
        - logstd_q
        + 0.5 * (torch.exp(2 * logstd_q) + (mu_q - mu_p).pow(2)) * torch.exp(-2 * logstd_p)
        - 0.5
    )


def gaussian_log_density(z: torch.Tensor, mu: torch.Tensor, logstd: torch.Tensor) -> torch.Tensor:
    """log N(z; mu, std^2) per element."""
    return -0.5 * (((z - mu) * torch.exp(-logstd)).pow(2) + LOG_2PI) - logstd


class Bottleneck(nn.Module):
    """VDVAE's residual block: GELU before each conv, 1x1 -> 3x3 -> 3x3 -> 1x1 at a reduced width
    (1x1 throughout at 2 px and below, where a 3x3 sees mostly padding)."""

    def __init__(
        self,
        in_channels: int,
        middle: int,
        out_channels: int,
        residual: bool,
        use_3x3: bool = True,
        last_scale: float = 1.0,
        zero_last: bool = False,
    ):
        super().__init__()
        k = 3 if use_3x3 else 1
        self.residual = residual
        self.c1 = nn.Conv2d(in_channels, middle, 1)
        self.c2 = nn.Conv2d(middle, middle, k, padding=k // 2)
        self.c3 = nn.Conv2d(middle, middle, k, padding=k // 2)
        self.c4 = nn.Conv2d(middle, out_channels, 1)
        with torch.no_grad():
            if zero_last:
                self.c4.weight.zero_()
                self.c4.bias.zero_()
            else:
                self.c4.weight.mul_(last_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.c1(F.gelu(x))
        h = self.c2(F.gelu(h))
        h = self.c3(F.gelu(h))
        h = self.c4(F.gelu(h))
        return x + h if self.residual else h


@dataclass
class LayerStats:
    """One latent layer of one top-down pass, each (N, C, H, W): the z used, and both Gaussians."""

    z: torch.Tensor
    mu_q: torch.Tensor | None
    logstd_q: torch.Tensor | None
    mu_p: torch.Tensor
    logstd_p: torch.Tensor

    def kl(self) -> torch.Tensor:
        """The analytic KL(q || p) per element."""
        return gaussian_kl(self.mu_q, self.logstd_q, self.mu_p, self.logstd_p)

    def log_q_minus_log_p(self) -> torch.Tensor:
        """log q(z|x, z_<i) - log p(z|z_<i) of the z drawn, per image: an IWAE weight's part."""
        log_q = gaussian_log_density(self.z, self.mu_q, self.logstd_q)
        log_p = gaussian_log_density(self.z, self.mu_p, self.logstd_p)
        return (log_q - log_p).flatten(1).sum(1)


class LatentLayer(nn.Module):
    """p(z_i | z_<i) and q(z_i | x, z_<i) at one resolution, then z_i into the state."""

    def __init__(self, width: int, middle: int, latent_channels: int, use_3x3: bool, scale: float):
        super().__init__()
        self.latent_channels = latent_channels
        self.posterior = Bottleneck(2 * width, middle, 2 * latent_channels, False, use_3x3)
        self.prior = Bottleneck(
            width, middle, 2 * latent_channels + width, False, use_3x3, 1.0, True
        )
        self.z_projection = nn.Conv2d(latent_channels, width, 1)
        with torch.no_grad():
            self.z_projection.weight.mul_(scale)
        self.block = Bottleneck(width, middle, width, True, use_3x3, scale)

    def forward(
        self,
        state: torch.Tensor,
        activation: torch.Tensor | None,
        eps: torch.Tensor | None,
        temperature: float,
        posterior_mean: bool,
    ) -> tuple[torch.Tensor, LayerStats]:
        """With an encoder `activation`: z from the posterior (its mean when `posterior_mean`),
        else z = mu_p + sigma_p * temperature * eps (eps ~ N(0, I) when None)."""
        c = self.latent_channels
        mu_p, logstd_p, feature = self.prior(state).split([c, c, state.shape[1]], dim=1)
        mu_q = logstd_q = None
        if activation is not None:
            mu_q, logstd_q = self.posterior(torch.cat([state, activation], 1)).chunk(2, dim=1)
            z = mu_q if posterior_mean else mu_q + torch.exp(logstd_q) * torch.randn_like(mu_q)
        else:
            noise = torch.randn_like(mu_p) if eps is None else eps.to(mu_p.dtype)
            z = mu_p + torch.exp(logstd_p) * noise * temperature
        state = self.block(state + feature + self.z_projection(z))
        return state, LayerStats(z, mu_q, logstd_q, mu_p, logstd_p)


class HierarchicalVAE(nn.Module):
    """The network of `model=hvae` (see the module docstring); lists run from the image size
    down."""

    def __init__(
        self,
        image_size: int,
        channels: int,
        out_channels: int,
        width: int = 64,
        bottleneck_ratio: float = 0.25,
        latent_channels: int = 8,
        encoder_blocks: list[int] = (0, 1, 1, 1, 1),
        latent_layers: list[int] = (0, 1, 2, 2, 2),
        decoder_blocks: list[int] = (0, 0, 0, 0, 0),
        checkpoint_blocks: bool = False,
        fp32_output: bool = False,
    ):
        """`fp32_output`: the output layer in fp32 under autocast (networks/output_conv.py)."""
        super().__init__()
        encoder_blocks, latent_layers = list(encoder_blocks), list(latent_layers)
        decoder_blocks = list(decoder_blocks)
        if not len(encoder_blocks) == len(latent_layers) == len(decoder_blocks) >= 1:
            raise UserError(
                f"model.net.encoder_blocks, latent_layers and decoder_blocks have "
                f"{len(encoder_blocks)}, {len(latent_layers)} and {len(decoder_blocks)} entries; "
                "give each one entry per resolution, the image size first"
            )
        counts = [*encoder_blocks, *latent_layers, *decoder_blocks]
        if any(not isinstance(n, int) or n < 0 for n in counts) or sum(latent_layers) < 1:
            raise UserError(
                "model.net.encoder_blocks, latent_layers and decoder_blocks must be whole numbers "
                ">= 0 with at least one latent layer"
            )
        if int(width) < 4 or int(latent_channels) < 1 or not 0 < float(bottleneck_ratio) <= 1:
            raise UserError(
                f"model.net.width={width} must be >= 4, latent_channels={latent_channels} >= 1 "
                f"and bottleneck_ratio={bottleneck_ratio} in (0, 1]"
            )
        self.image_size, self.channels, self.out_channels = image_size, channels, out_channels
        self.latent_channels, self.checkpoint_blocks = (
            int(latent_channels),
            bool(checkpoint_blocks),
        )
        self.sizes = downsampled_sizes(image_size, len(latent_layers) - 1)
        width, middle = int(width), max(1, int(width * float(bottleneck_ratio)))
        depth = sum(latent_layers) + sum(decoder_blocks)
        scale = math.sqrt(1 / max(depth, 1))

        self.stem = nn.Conv2d(channels, width, 3, padding=1)
        self.encoder = nn.ModuleList(
            nn.Sequential(
                *(Bottleneck(width, middle, width, True, size > 2, scale) for _ in range(n))
            )
            for size, n in zip(self.sizes, encoder_blocks, strict=True)
        )
        # the decoder, coarsest resolution first
        self.top = nn.Parameter(torch.zeros(1, width, self.sizes[-1], self.sizes[-1]))
        self.latent_levels = nn.ModuleList()
        self.plain_levels = nn.ModuleList()
        for size, n_latent, n_plain in reversed(
            list(zip(self.sizes, latent_layers, decoder_blocks, strict=True))
        ):
            self.latent_levels.append(
                nn.ModuleList(
                    LatentLayer(width, middle, self.latent_channels, size > 2, scale)
                    for _ in range(n_latent)
                )
            )
            self.plain_levels.append(
                nn.Sequential(
                    *(
                        Bottleneck(width, middle, width, True, size > 2, scale)
                        for _ in range(n_plain)
                    )
                )
            )
        # 3x3: after a nearest upsampling, a 1x1 output would repeat each value over 2x2 pixels
        self.output = OutputConv2d(width, out_channels, fp32_output)
        self.latent_shapes = [
            (self.latent_channels, size, size)
            for size, n in reversed(list(zip(self.sizes, latent_layers, strict=True)))
            for _ in range(n)
        ]
        self.latent_sizes = [math.prod(shape) for shape in self.latent_shapes]
        self.latent_dim = sum(self.latent_sizes)

    @property
    def num_layers(self) -> int:
        return len(self.latent_shapes)

    def run(self, block: nn.Module, *args):
        """Activation checkpointing: recompute a block in the backward pass instead of keeping
        its activations, when asked and when it matters (a training pass)."""
        if self.checkpoint_blocks and self.training and torch.is_grad_enabled():
            return checkpoint(block, *args, use_reentrant=False)
        return block(*args)

    def bottom_up(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The encoder's activation at each resolution, the image size first."""
        h = self.stem(x)
        activations = []
        for i, blocks in enumerate(self.encoder):
            if i > 0:
                h = F.avg_pool2d(h, 2, ceil_mode=True)
            for block in blocks:
                h = self.run(block, h)
            activations.append(h)
        return activations

    def top_down(
        self,
        activations: list[torch.Tensor] | None = None,
        eps: list[torch.Tensor] | None = None,
        keep_layers: int | None = None,
        temperature: float = 1.0,
        posterior_mean: bool = False,
        batch_size: int | None = None,
    ) -> tuple[torch.Tensor, list[LayerStats]]:
        """Decoder output (likelihood parameters) and each latent layer's statistics.

        The first `keep_layers` layers (all when None) take z from the posterior, which needs the
        encoder's `activations`; the others from the prior, with the given `eps` or fresh noise.
        """
        n = batch_size or (activations[0].shape[0] if activations else eps[0].shape[0])
        keep = self.num_layers if keep_layers is None else keep_layers
        if activations is None:
            keep = 0
        state = self.top.expand(n, -1, -1, -1)
        stats: list[LayerStats] = []
        layer = 0
        for level, (latents, plain) in enumerate(
            zip(self.latent_levels, self.plain_levels, strict=True)
        ):
            size = self.sizes[len(self.sizes) - 1 - level]
            if state.shape[-1] != size:
                state = F.interpolate(state, size=(size, size), mode="nearest")
            activation = activations[len(self.sizes) - 1 - level] if activations else None
            for latent in latents:
                use_posterior = layer < keep
                state, layer_stats = self.run(
                    latent,
                    state,
                    activation if use_posterior else None,
                    None if use_posterior or eps is None else eps[layer],
                    temperature,
                    posterior_mean,
                )
                stats.append(layer_stats)
                layer += 1
            for block in plain:
                state = self.run(block, state)
        return self.output(F.gelu(state)), stats

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[LayerStats]]:
        """One training pass: z from the posterior at every layer."""
        return self.top_down(self.bottom_up(x))

    # -- flat whitened coordinates: what grids, GIFs, interpolations and samplers speak ----------
    def split_flat(self, eps: torch.Tensor) -> list[torch.Tensor]:
        parts = eps.split(self.latent_sizes, dim=1)
        return [p.reshape(-1, *shape) for p, shape in zip(parts, self.latent_shapes, strict=True)]

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The posterior-mean path in whitened coordinates: eps_i = (mu_q - mu_p) / sigma_p and
        its log-variance 2 (log sigma_q - log sigma_p), each (N, latent_dim)."""
        _, stats = self.top_down(self.bottom_up(x), posterior_mean=True)
        mu = torch.cat([((s.mu_q - s.mu_p) * torch.exp(-s.logstd_p)).flatten(1) for s in stats], 1)
        logvar = torch.cat([(2 * (s.logstd_q - s.logstd_p)).flatten(1) for s in stats], 1)
        return mu, logvar

    def decode(self, eps: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
        """Likelihood parameters of the images whose whitened latents are `eps` (N, latent_dim)."""
        params, _ = self.top_down(eps=self.split_flat(eps), temperature=temperature)
        return params
