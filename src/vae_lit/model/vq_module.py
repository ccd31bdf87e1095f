"""Training logic of a VQ-VAE: reconstruction NLL under the configured likelihood + the quantizer's
commitment (+ codebook) terms, one shared step for train/val/test.

The public surface matches `VAELitModule` where it means something, so the picture callbacks,
`vae_lit.sample` and `vae_lit.eval` take either. The "latent vector" of an image is its encoder
output z_e flattened; `decode` quantizes whatever it gets, so interpolations between two images
walk through code space. A VQ-VAE has no prior to sample until `vae_lit.train_prior` fits one:
during training the sample grid and GIF decode uniformly random codes, and say so.
"""

import logging
import math
from collections.abc import Callable

import torch
from pytorch_lightning import LightningModule
from pytorch_lightning.utilities import rank_zero_only

from vae_lit.errors import UserError
from vae_lit.model.likelihoods import Likelihood
from vae_lit.model.vae_module import (
    compile_networks,
    log_reconstruction_quality,
    optimizers_of,
    to_float_images,
)
from vae_lit.networks.vqvae import VQVAE
from vae_lit.persistence.pretrained import PretrainedVAE

log = logging.getLogger(__name__)


def perplexity(counts: torch.Tensor) -> torch.Tensor:
    """exp(entropy) of the code histogram: the number of equally used codes it is worth."""
    p = counts.double() / counts.sum().clamp(min=1)
    return torch.exp(-(p * torch.log(p.clamp(min=1e-30))).sum()).float()


class VQVAELitModule(LightningModule, PretrainedVAE):  # save/from_pretrained, push_to_hub
    """A VQ-VAE under Lightning (van den Oord et al. 2017), batches of uint8 images.

    Training minimises -log p(x|z_q) + commitment_weight * ||z_e - sg[e]||^2 (+ the codebook loss
    ||sg[z_e] - e||^2 when the codebook is not learned by EMA), each summed over the code grid and
    averaged over the batch: nats per image. Validation and test report reconstruction NLL +
    weighted commitment as `loss`; every stage logs the perplexity of the codes used in the epoch
    and the share of the codebook they cover (`codebook_usage`).
    """

    sample_label = "random codes, not samples"

    def __init__(
        self,
        net: VQVAE,
        likelihood: Likelihood,
        optimizer: Callable[..., torch.optim.Optimizer],
        commitment_weight: float = 0.25,
        scheduler: Callable[..., torch.optim.lr_scheduler.LRScheduler] | None = None,
        channels_last: bool = True,
        compile: bool = False,
    ):
        super().__init__()
        if commitment_weight < 0:
            raise UserError(f"model.commitment_weight={commitment_weight} must be >= 0 (0.25)")
        if net.out_channels != likelihood.out_channels:
            raise UserError(
                f"model.net.out_channels={net.out_channels} but model/likelihood="
                f"{likelihood.name} needs {likelihood.out_channels} decoder maps; leave "
                "out_channels to the config's interpolation"
            )
        self.save_hyperparameters(
            {
                "image_size": net.image_size,
                "channels": net.channels,
                "num_codes": net.num_codes,
                "code_dim": net.quantizer.code_dim,
                "grid_size": net.grid_size,
                "likelihood": likelihood.name,
                "likelihood_kind": likelihood.kind,
            },
            logger=False,
        )
        self.net, self.likelihood = net, likelihood
        self.commitment_weight = float(commitment_weight)
        self.channels_last = bool(channels_last)
        if self.channels_last:
            self.net.to(memory_format=torch.channels_last)
        self.compile_net = bool(compile)
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.code_counts: dict[str, torch.Tensor] = {}

    # -- public API: images are floats in [0, 1] ------------------------------------------------
    @property
    def num_codes(self) -> int:
        return self.net.num_codes

    @property
    def grid_size(self) -> int:
        return self.net.grid_size

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return (self.net.quantizer.code_dim, self.grid_size, self.grid_size)

    @property
    def latent_dim(self) -> int:
        """Length of a flattened encoder output, what `encode` returns."""
        return math.prod(self.latent_shape)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, None]:
        """The encoder's continuous output z_e, flattened to (B, latent_dim); no variance."""
        return self.net.encode(x).flatten(1), None

    def encode_codes(self, x: torch.Tensor) -> torch.Tensor:
        """Images -> their (B, h, w) code grids."""
        z_e = self.net.encode(x)
        flat = z_e.permute(0, 2, 3, 1).reshape(-1, z_e.shape[1])
        return self.net.quantizer.nearest_codes(flat).view(z_e.shape[0], *z_e.shape[2:])

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Mean image in [0, 1] of (B, h, w) code indices, or of continuous vectors ((B,
        latent_dim) or (B, code_dim, h, w)), which are quantized to their nearest codes first."""
        if z.dtype in (torch.long, torch.int32, torch.int16):
            codes = z.long()
        else:
            z = z.view(z.shape[0], *self.latent_shape)
            flat = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])
            codes = self.net.quantizer.nearest_codes(flat).view(z.shape[0], *z.shape[2:])
        return self.likelihood.mean(self.net.decode_codes(codes)).contiguous()

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode_codes(x))

    @torch.no_grad()
    def sample_latents(self, n: int, seed: int) -> torch.Tensor:
        """`n` grids of uniformly random codes from `seed` (a CPU generator): what the sample
        grid shows during training, labelled as such. Samples need a prior over the codes."""
        shape = (n, self.grid_size, self.grid_size)
        generator = torch.Generator().manual_seed(seed)
        return torch.randint(self.num_codes, shape, generator=generator).to(self.device)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Decoded uniformly random codes (see `sample_latents`)."""
        codes = torch.randint(
            self.num_codes, (n, self.grid_size, self.grid_size), generator=generator
        )
        return self.decode(codes.to(self.device))

    # -- training ---------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor):
        return self.net(x)

    def model_step(self, batch: torch.Tensor, stage: str) -> dict[str, torch.Tensor]:
        if self.channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last)
        images = to_float_images(batch)
        out = self.net(images)
        recon = -self.likelihood.log_prob(out.params, images).mean()
        commitment = out.quantized.commitment.float().mean()
        loss = recon + self.commitment_weight * commitment
        terms = {
            "recon": recon,
            "commitment": commitment,
            "recon_bits_per_dim": recon / (images[0].numel() * math.log(2)),
        }
        if self.net.quantizer.codebook_kind == "loss":
            terms["codebook_loss"] = out.quantized.codebook_loss.float().mean()
            if stage == "train":
                loss = loss + terms["codebook_loss"]
        on_step = stage == "train"
        log_args = dict(
            on_step=on_step, on_epoch=True, batch_size=images.shape[0], sync_dist=not on_step
        )
        self.log(f"{stage}/loss", loss, prog_bar=not on_step, **log_args)
        self.log_dict({f"{stage}/{key}": value for key, value in terms.items()}, **log_args)
        self.count_codes(stage, out.quantized.codes)
        return {"loss": loss, "images": images, "codes": out.quantized.codes, "params": out.params}

    def count_codes(self, stage: str, codes: torch.Tensor) -> None:
        codes = codes.flatten()
        # index_add_, not bincount: bincount reads the codes' range back to the host every step
        counts = torch.zeros(self.num_codes, dtype=torch.long, device=codes.device)
        counts.index_add_(0, codes, torch.ones_like(codes))
        if stage in self.code_counts:
            self.code_counts[stage] += counts
        else:
            self.code_counts[stage] = counts

    def log_code_use(self, stage: str) -> None:
        """Perplexity and codebook usage of the codes of the whole epoch, over all processes."""
        counts = self.code_counts.pop(stage, None)
        if counts is None:
            return
        if self.trainer.world_size > 1:
            counts = self.trainer.strategy.reduce(counts, reduce_op="sum")
        self.log_dict(
            {
                f"{stage}/perplexity": perplexity(counts),
                f"{stage}/codebook_usage": (counts > 0).float().mean(),
            }
        )

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        return self.model_step(batch, "train")["loss"]

    def validation_step(self, batch: torch.Tensor, batch_idx: int) -> None:
        self.model_step(batch, "val")

    def test_step(self, batch: torch.Tensor, batch_idx: int) -> None:
        step = self.model_step(batch, "test")
        images = step["images"]
        reconstructions = self.likelihood.mean(step["params"])
        log_reconstruction_quality(self, images, reconstructions)

    def on_train_epoch_start(self) -> None:
        self.code_counts.pop("train", None)

    def on_validation_epoch_start(self) -> None:
        self.code_counts.pop("val", None)

    def on_test_epoch_start(self) -> None:
        self.code_counts.pop("test", None)

    def on_train_epoch_end(self) -> None:
        self.log_code_use("train")

    def on_validation_epoch_end(self) -> None:
        self.log_code_use("val")

    def on_test_epoch_end(self) -> None:
        self.log_code_use("test")

    def on_fit_start(self) -> None:
        if rank_zero_only.rank == 0:
            log.info(
                "VQ-VAE: the sample grids decode uniformly random codes, not samples; to sample, "
                "train a prior over the codes: python -m vae_lit.train_prior ckpt=<this run>/"
                "checkpoints/last.ckpt"
            )

    def setup(self, stage: str) -> None:
        if self.compile_net and stage == "fit":
            # encoder and decoder: the quantizer's codebook update would break the graph anyway
            compile_networks(self.net, "default")

    def configure_optimizers(self):
        return optimizers_of(self, self.optimizer_factory, self.scheduler_factory)
