"""VQ-VAE (van den Oord et al. 2017, "Neural Discrete Representation Learning"): a conv encoder to
a grid of D-dimensional vectors, each replaced by its nearest codebook entry, and a conv decoder.

The codebook learns by exponential moving averages of the encoder outputs assigned to each code
(the paper's appendix A.1) or by the codebook loss ||sg[z_e] - e||^2. Either way, a code that
stops being chosen is moved onto an encoder output of the current batch (dead-code
re-initialisation, as in Dhariwal et al. 2020, Jukebox), so the whole codebook stays in use.
The losses live outside: the quantizer returns its raw terms, the LightningModule weights them.
"""

import math
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from vae_lit.errors import UserError
from vae_lit.networks.conv_vae import check_net_shape, downsampled_sizes
from vae_lit.networks.output_conv import OutputConv2d

CODEBOOKS = ("ema", "loss")


@dataclass
class QuantizerOutput:
    """`quantized` carries the straight-through gradient; the losses are per image (B,)."""

    quantized: torch.Tensor  # (B, D, h, w)
    codes: torch.Tensor  # (B, h, w) indices into the codebook
    commitment: torch.Tensor  # ||z_e - sg[e]||^2 summed over the grid
    codebook_loss: torch.Tensor  # ||sg[z_e] - e||^2 summed over the grid; 0 with the EMA codebook


class VectorQuantizer(nn.Module):
    """Nearest-code quantisation of (B, D, h, w) maps with a straight-through gradient.

    EMA codebook (`codebook=ema`): for each code i, with n_i the vectors assigned to it in the
    batch and s_i their sum, N_i <- decay * N_i + (1 - decay) * n_i and
    m_i <- decay * m_i + (1 - decay) * s_i, then e_i = m_i / N_i. `N` also serves as the usage
    record of the codebook-loss variant.

    Dead codes (Dhariwal et al. 2020, Jukebox, section 2.3): after each training step, a code whose
    running count N_i is below `dead_code_threshold` vectors per step becomes a random encoder
    output of the batch, with N_i = 1; with the default threshold of 1 it stays only if it is
    chosen about once per step from then on. All counts start at 0, so the first step puts the
    codebook onto encoder outputs: a data-dependent initialisation. (A threshold with a grace
    period, 0.03 and N_i = 1, left 96% of the codebook unused after 192 steps on CelebA at 64 px:
    codes placed on the first, random encoder outputs were not moved again in time.)
    """

    def __init__(
        self,
        num_codes: int = 512,
        code_dim: int = 64,
        codebook: str = "ema",
        decay: float = 0.99,
        dead_code_threshold: float = 1.0,
    ):
        super().__init__()
        if int(num_codes) < 2:
            raise UserError(f"model.net.quantizer.num_codes={num_codes} must be at least 2")
        if int(code_dim) <= 0:
            raise UserError(f"model.net.quantizer.code_dim={code_dim} must be a positive integer")
        if codebook not in CODEBOOKS:
            raise UserError(
                f"model.net.quantizer.codebook={codebook!r} is unknown; use one of: "
                f"{', '.join(CODEBOOKS)}"
            )
        if not 0 < decay < 1:
            raise UserError(f"model.net.quantizer.decay={decay} must be in (0, 1), e.g. 0.99")
        if dead_code_threshold < 0:
            raise UserError(
                f"model.net.quantizer.dead_code_threshold={dead_code_threshold} must be >= 0 "
                "(0 turns re-initialisation off)"
            )
        self.num_codes, self.code_dim = int(num_codes), int(code_dim)
        self.codebook_kind, self.decay = codebook, float(decay)
        self.dead_code_threshold = float(dead_code_threshold)
        # the paper's initialisation; the first training step replaces unused codes anyway
        init = torch.empty(self.num_codes, self.code_dim).uniform_(
            -1 / self.num_codes, 1 / self.num_codes
        )
        if codebook == "ema":
            self.register_buffer("embedding", init)
            self.register_buffer("ema_sum", torch.zeros(self.num_codes, self.code_dim))
        else:
            self.embedding = nn.Parameter(init)
        self.register_buffer("ema_count", torch.zeros(self.num_codes))

    def nearest_codes(self, flat: torch.Tensor) -> torch.Tensor:
        """(N, D) vectors -> (N,) index of the nearest code in Euclidean distance. In fp32 even
        under autocast (which runs the matmul in bf16 despite `.float()`), so training picks the
        codes an fp32 evaluation picks."""
        with torch.autocast(flat.device.type, enabled=False):
            codebook = self.embedding.detach().float()
            # ||x||^2 does not change the argmin; ||e||^2 - 2 x.e does
            distances = codebook.pow(2).sum(1) - 2 * flat.float() @ codebook.t()
            return distances.argmin(1)

    def lookup(self, codes: torch.Tensor) -> torch.Tensor:
        """(B, h, w) indices -> (B, D, h, w) code vectors."""
        if codes.min() < 0 or codes.max() >= self.num_codes:
            raise ValueError(
                f"codes must be in [0, {self.num_codes}), got {codes.min()}..{codes.max()}"
            )
        return self.embedding[codes].permute(0, 3, 1, 2).contiguous()

    def forward(self, z_e: torch.Tensor) -> QuantizerOutput:
        b, d, h, w = z_e.shape
        flat = z_e.permute(0, 2, 3, 1).reshape(-1, d)
        codes = self.nearest_codes(flat)
        # the codes chosen with this step's codebook (indexing copies), before the update moves it
        e = self.embedding[codes].view(b, h, w, d).permute(0, 3, 1, 2).to(z_e.dtype)
        if self.training:
            self.update_codebook(flat.detach().float(), codes)
        commitment = (z_e - e.detach()).pow(2).flatten(1).sum(1)
        if self.codebook_kind == "loss":
            codebook_loss = (z_e.detach() - e).pow(2).flatten(1).sum(1)
        else:
            codebook_loss = torch.zeros_like(commitment)
        # straight-through: the decoder's gradient with respect to e goes to z_e unchanged
        quantized = z_e + (e - z_e).detach()
        return QuantizerOutput(quantized, codes.view(b, h, w), commitment, codebook_loss)

    @torch.no_grad()
    def update_codebook(self, flat: torch.Tensor, codes: torch.Tensor) -> None:
        """One step of the running averages (EMA codebook) and of the usage counts, then dead
        codes onto encoder outputs. Under DDP the batch statistics are summed over processes and
        rank 0's re-initialised codes are broadcast, so every process keeps the same codebook.

        Nothing here reads a value back to the host (a GPU would wait): counts by `index_add_`
        (`bincount` reads its input's range), updates by `torch.where` (a boolean index is a
        `nonzero`), and dead codes by a draw of fixed size."""
        counts = torch.zeros_like(self.ema_count).index_add_(0, codes, flat.new_ones(len(codes)))
        sums = None
        if self.codebook_kind == "ema":
            sums = torch.zeros_like(self.ema_sum).index_add_(0, codes, flat)
        if distributed():
            dist.all_reduce(counts)
            if sums is not None:
                dist.all_reduce(sums)
        keep = self.decay
        self.ema_count.mul_(keep).add_(counts, alpha=1 - keep)
        if sums is not None:
            self.ema_sum.mul_(keep).add_(sums, alpha=1 - keep)
            used = self.ema_count > 0
            means = self.ema_sum / torch.where(used, self.ema_count, 1.0).unsqueeze(1)
            self.embedding.copy_(torch.where(used.unsqueeze(1), means, self.embedding))
        self.reinit_dead_codes(flat)

    @torch.no_grad()
    def reinit_dead_codes(self, flat: torch.Tensor) -> torch.Tensor:
        """Move every code with a running count below the threshold onto a random row of `flat`
        (distinct rows while there are enough); return the mask of the codes that moved."""
        dead = self.ema_count < self.dead_code_threshold
        if self.dead_code_threshold <= 0:  # re-initialisation is off
            return dead
        # a candidate row for every code, so the shapes never depend on how many are dead;
        # distinct rows, repeated only when the batch has fewer vectors than the codebook codes
        rows = torch.randperm(len(flat), device=flat.device)
        rows = rows.repeat(math.ceil(self.num_codes / len(flat)))[: self.num_codes]
        new = flat[rows].to(self.embedding.dtype)
        if distributed():
            dist.broadcast(new, src=0)
        column = dead.unsqueeze(1)
        self.embedding.data.copy_(torch.where(column, new, self.embedding.data))
        self.ema_count.copy_(torch.where(dead, 1.0, self.ema_count))
        if self.codebook_kind == "ema":
            self.ema_sum.copy_(torch.where(column, new, self.ema_sum))
        return dead


def distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class ResidualBlock(nn.Module):
    """ReLU, 3x3 conv, ReLU, 1x1 conv, plus the input (the paper's block)."""

    def __init__(self, channels: int, hidden: int):
        super().__init__()
        self.block = nn.Sequential(
            nn.ReLU(),
            nn.Conv2d(channels, hidden, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, channels, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x)


@dataclass
class VQVAEOutput:
    """What one forward pass gives the loss."""

    params: torch.Tensor  # the likelihood's parameters, (B, out_channels, H, W)
    quantized: QuantizerOutput
    z_e: torch.Tensor


class VQVAE(nn.Module):
    """Encoder -> (B, code_dim, h, w) -> quantizer -> decoder, for any square `image_size` >= 16.

    The encoder is the conv VAE's stride-2 conv stack (3x3, padding 1: side n -> ceil(n / 2) per
    block) followed by residual blocks; the decoder mirrors it with residual blocks, then bilinear
    upsampling + conv back to exactly the encoder's recorded sizes, so odd sizes come back too.
    The code grid is `grid_size` x `grid_size`.
    """

    def __init__(
        self,
        quantizer: VectorQuantizer,
        image_size: int = 32,
        channels: int = 3,
        hidden_channels: tuple[int, ...] = (64, 128),
        num_residual_blocks: int = 2,
        out_channels: int | None = None,
        fp32_output: bool = False,
    ):
        """`fp32_output`: the output layer in fp32 under autocast (networks/output_conv.py)."""
        super().__init__()
        widths = check_net_shape("VQ-VAE", image_size, channels, hidden_channels)
        self.image_size, self.channels = int(image_size), int(channels)
        self.out_channels = int(out_channels or channels)
        self.quantizer = quantizer
        code_dim = quantizer.code_dim
        sizes = downsampled_sizes(self.image_size, len(widths))
        self.grid_size = sizes[-1]

        encoder, in_ch = [], self.channels
        for out_ch in widths:
            encoder += [nn.Conv2d(in_ch, out_ch, 3, stride=2, padding=1), nn.ReLU(inplace=True)]
            in_ch = out_ch
        encoder += [nn.Conv2d(in_ch, in_ch, 3, padding=1)]
        encoder += [ResidualBlock(in_ch, in_ch // 2) for _ in range(num_residual_blocks)]
        encoder += [nn.ReLU(), nn.Conv2d(in_ch, code_dim, 1)]
        self.encoder = nn.Sequential(*encoder)

        decoder = [nn.Conv2d(code_dim, widths[-1], 3, padding=1)]
        decoder += [ResidualBlock(widths[-1], widths[-1] // 2) for _ in range(num_residual_blocks)]
        decoder += [nn.ReLU()]
        targets = list(reversed(sizes[:-1]))
        ins, outs = widths[::-1], widths[::-1][1:] + [self.out_channels]
        for i, (size, c_in, c_out) in enumerate(zip(targets, ins, outs, strict=True)):
            decoder.append(nn.Upsample(size=(size, size), mode="bilinear", align_corners=False))
            if i < len(targets) - 1:
                decoder += [nn.Conv2d(c_in, c_out, 3, padding=1), nn.ReLU(inplace=True)]
            else:  # the last conv gives the likelihood's parameters
                decoder.append(OutputConv2d(c_in, c_out, fp32_output))
        self.decoder = nn.Sequential(*decoder)

    @property
    def num_codes(self) -> int:
        return self.quantizer.num_codes

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Images -> the encoder's continuous (B, code_dim, h, w) map z_e."""
        return self.encoder(x)

    def decode(self, quantized: torch.Tensor) -> torch.Tensor:
        """(B, code_dim, h, w) vectors -> the likelihood's parameters (B, out_channels, H, W)."""
        return self.decoder(quantized)

    def decode_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """(B, h, w) code indices -> the likelihood's parameters."""
        return self.decode(self.quantizer.lookup(codes))

    def forward(self, x: torch.Tensor) -> VQVAEOutput:
        z_e = self.encode(x)
        quantized = self.quantizer(z_e)
        return VQVAEOutput(self.decode(quantized.quantized), quantized, z_e)
