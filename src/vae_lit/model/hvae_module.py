"""The training logic of the hierarchical VAE (`model=hvae`, `vae_lit.networks.hierarchical`).

What keeps a deep VAE stable lives here, not in the network (as in openai/vdvae's
`train_helpers.py`):
- gradient-norm clipping, and an update skipped, counted and logged (`train/skipped_updates`)
  when the norm is not finite or above `skip_threshold`: one bad batch costs nothing. The norm is
  of the loss per dimension (nats per subpixel), VDVAE's unit, so its thresholds carry over;
- an exponential moving average of the weights, which validation, test, sampling, export and
  evaluation use; it is a submodule, so checkpoints save it and a resume continues it exactly;
- AdamW with a linear learning-rate warm-up; the KL schedule and free bits of
  `model/objective=elbo`.

It trains with manual optimisation: one host sync a step reads the gradient norm to decide the
skip, as VDVAE does.
"""

import copy
import math
from collections.abc import Callable

import torch
from pytorch_lightning import LightningModule
from torch import nn

from vae_lit.errors import UserError
from vae_lit.metrics.active_units import ACTIVITY_THRESHOLD, ActiveUnits
from vae_lit.model.likelihoods import Likelihood
from vae_lit.model.objectives import ELBO, ObjectiveTerms, bits_per_dim
from vae_lit.model.priors import StandardNormal
from vae_lit.model.vae_module import (
    COMPILE_MODES,
    log_reconstruction_quality,
    to_float_images,
)
from vae_lit.networks.hierarchical import HierarchicalVAE, LayerStats
from vae_lit.persistence.pretrained import PretrainedVAE

# a layer's unit counts as active when its mean KL over the validation split is above this
ACTIVE_KL_NATS = 0.01


def images_dims(batch: torch.Tensor) -> int:
    """Subpixels per image: channels x height x width."""
    return batch[0].numel()


class HierarchicalVAELitModule(LightningModule, PretrainedVAE):  # save/from_pretrained
    """A top-down hierarchical VAE under Lightning; batches are uint8 images, as for
    `VAELitModule`.

    The public API (`encode`, `decode`, `reconstruct`, `sample`) uses the averaged weights and
    speaks the network's whitened coordinates, so every callback and entry point that works on a
    one-vector VAE works here; `prior` is N(0, I) over those coordinates.
    """

    def __init__(
        self,
        net: HierarchicalVAE,
        likelihood: Likelihood,
        optimizer: Callable[..., torch.optim.Optimizer],
        objective: ELBO | None = None,
        warmup_steps: int = 100,
        ema_decay: float = 0.999,
        grad_clip: float = 200.0,
        skip_threshold: float = 400.0,
        channels_last: bool = True,
        compile: bool | str = False,
    ):
        super().__init__()
        if not isinstance(net, HierarchicalVAE):
            raise UserError("model=hvae needs model/net=hierarchical (a HierarchicalVAE)")
        if objective is not None and type(objective) is not ELBO:
            raise UserError(
                f"model/objective={objective.name} needs one latent vector; model=hvae trains on "
                "the ELBO (model/objective=elbo, with its KL schedule and free bits)"
            )
        if net.out_channels != likelihood.out_channels:
            raise UserError(
                f"model.net.out_channels={net.out_channels} but model/likelihood="
                f"{likelihood.name} needs {likelihood.out_channels} decoder maps; leave "
                "out_channels to the config's interpolation"
            )
        if not 0 <= float(ema_decay) < 1:
            raise UserError(f"model.ema_decay={ema_decay} must be in [0, 1), e.g. 0.999")
        if int(warmup_steps) < 0:
            raise UserError(f"model.warmup_steps={warmup_steps} must be >= 0")
        if not 0 < float(grad_clip) <= float(skip_threshold):
            raise UserError(
                f"model.grad_clip={grad_clip} must be > 0 and at most "
                f"model.skip_threshold={skip_threshold}"
            )
        if compile not in (False, True, None, *COMPILE_MODES):
            raise UserError(
                f"model.compile={compile!r} is unknown; use false, true or one of: "
                f"{', '.join(COMPILE_MODES)}"
            )
        # NHWC convolutions: oneDNN's and cuDNN's fast kernels (1.3x a training step on CPU here)
        self.channels_last = bool(channels_last)
        if self.channels_last:
            net.to(memory_format=torch.channels_last)
        self.net = net
        self.ema = copy.deepcopy(net).requires_grad_(False)
        self.likelihood = likelihood
        self.objective = objective or ELBO()
        self.prior = StandardNormal(net.latent_dim)  # over the whitened coordinates
        self.optimizer_factory = optimizer
        self.warmup_steps, self.ema_decay = int(warmup_steps), float(ema_decay)
        self.grad_clip, self.skip_threshold = float(grad_clip), float(skip_threshold)
        self.compile_net = "default" if compile is True else (compile or None)
        self.automatic_optimization = False  # the skip decides whether the optimizer steps
        self.register_buffer("skipped_updates", torch.zeros((), dtype=torch.long))
        self.save_hyperparameters(
            {
                "image_size": net.image_size,
                "channels": net.channels,
                "latent_dim": net.latent_dim,
                "latent_layers": net.num_layers,
                "likelihood": likelihood.name,
                "likelihood_kind": likelihood.kind,
                "objective": self.objective.name,
                "prior": "hierarchical",
            },
            logger=False,
        )

    @property
    def latent_dim(self) -> int:
        return self.net.latent_dim

    # -- public API: images are floats in [0, 1]; the averaged weights ------------------------
    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The posterior-mean path in whitened coordinates (see HierarchicalVAE.encode)."""
        return self.ema.encode(x)

    def decode(self, z: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
        """Mean image of p(x|z) for whitened latents `z`."""
        return self.likelihood.mean(self.ema.decode(z, temperature)).contiguous()

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x)[0])

    @torch.no_grad()
    def sample_latents(self, n: int, seed: int, temperature: float = 1.0) -> torch.Tensor:
        """`n` whitened latents drawn from `seed` (a CPU generator: the same on every machine),
        scaled by `temperature`: every prior standard deviation times it."""
        eps = self.prior.sample(n, torch.Generator().manual_seed(seed), device=self.device)
        return eps * temperature

    @torch.no_grad()
    def sample(
        self, n: int, generator: torch.Generator | None = None, temperature: float = 1.0
    ) -> torch.Tensor:
        return self.decode(self.prior.sample(n, generator, device=self.device), temperature)

    @torch.no_grad()
    def partial_samples(
        self, x: torch.Tensor, keep_layers: int, temperature: float = 1.0
    ) -> torch.Tensor:
        """Images that keep the top `keep_layers` latent layers of x's posterior (their means)
        and draw the rest from the prior: what the coarse layers decided, and what they left."""
        net = self.ema
        params, _ = net.top_down(
            net.bottom_up(x), keep_layers=keep_layers, temperature=temperature, posterior_mean=True
        )
        return self.likelihood.mean(params).contiguous()

    # -- the bound --------------------------------------------------------------------------------
    def pass_terms(
        self, images: torch.Tensor, net: nn.Module | None = None
    ) -> tuple[ObjectiveTerms, list[LayerStats]]:
        """The negative ELBO's terms of one posterior pass (batch means) and each layer's stats."""
        params, stats = (net or self.ema)(images)
        recon = -self.likelihood.log_prob(params, images)
        kl_units = [layer.kl().float() for layer in stats]  # per element, each (N, C, H, W)
        kl = torch.stack([k.flatten(1).sum(1) for k in kl_units]).sum(0)
        neg_elbo = recon.mean() + kl.mean()
        terms = ObjectiveTerms(
            loss=neg_elbo,
            recon=recon.mean(),
            kl=kl.mean(),
            neg_elbo=neg_elbo,
            bits_per_dim=bits_per_dim(neg_elbo, images),
            kl_per_dim=torch.cat([k.mean(0).flatten() for k in kl_units]),
        )
        return terms, stats

    @torch.no_grad()
    def bound_terms(self, images: torch.Tensor) -> tuple[ObjectiveTerms, torch.Tensor]:
        """What `vae_lit.eval` reads: the bound's terms and the whitened posterior means."""
        terms, stats = self.pass_terms(images)
        terms.extras["kl_per_layer"] = torch.stack(
            [layer.kl().float().flatten(1).sum(1).mean() for layer in stats]
        )
        return terms, self.encode(images)[0]

    @torch.no_grad()
    def importance_weighted_log_likelihood(
        self, images: torch.Tensor, k: int, max_decodes: int = 512, generator=None
    ) -> torch.Tensor:
        """log p(x) >= log mean_k p(x, z^k) / q(z^k | x), over every layer (Burda et al. 2016),
        per image in nats; k = 1 is the ELBO of one draw. `max_decodes` bounds the images
        decoded at once (k draws of each image count k times)."""
        per_chunk = max(1, max_decodes // k)
        values = []
        for chunk in images.split(per_chunk):
            repeated = chunk.repeat(k, 1, 1, 1)  # draw-major: (k * n, C, H, W)
            params, stats = self.ema(repeated)
            log_w = self.likelihood.log_prob(params, repeated).float()
            log_w = log_w - sum(layer.log_q_minus_log_p().float() for layer in stats)
            log_w = log_w.view(k, len(chunk))
            values.append(torch.logsumexp(log_w, 0) - math.log(k))
        return torch.cat(values)

    # -- training ---------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> ObjectiveTerms:
        return self.pass_terms(x)[0]

    def model_step(self, batch: torch.Tensor, stage: str) -> tuple[ObjectiveTerms, list]:
        if self.channels_last:  # converted as uint8, a quarter of the bytes of the float copy
            batch = batch.contiguous(memory_format=torch.channels_last)
        images = to_float_images(batch)
        terms, stats = self.pass_terms(images, self.net if stage == "train" else self.ema)
        if stage == "train":
            terms = self.objective.weigh(terms, self.global_step)
        on_step = stage == "train"
        log_args = dict(
            on_step=on_step, on_epoch=True, batch_size=images.shape[0], sync_dist=not on_step
        )
        self.log(f"{stage}/loss", terms.loss, prog_bar=not on_step, **log_args)
        self.log_dict(
            {
                f"{stage}/recon": terms.recon,
                f"{stage}/kl": terms.kl,
                f"{stage}/bits_per_dim": terms.bits_per_dim,
            },
            **log_args,
        )
        return terms, stats

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> None:
        optimizer, warmup = self.optimizers(), self.lr_schedulers()
        terms, _ = self.model_step(batch, "train")
        optimizer.zero_grad(set_to_none=True)
        # nats per dimension, VDVAE's unit: grad_clip and skip_threshold mean what they mean
        # there at any image size, and Adam's steps do not depend on the loss's scale
        self.manual_backward(terms.loss / images_dims(batch))
        norm = nn.utils.clip_grad_norm_(self.trainable_parameters(), self.grad_clip)
        skip = not bool(torch.isfinite(norm)) or float(norm) > self.skip_threshold
        if skip:  # weights, moments and the average stay as they were
            self.skipped_updates += 1
        else:
            optimizer.step()
            self.update_ema()
            warmup.step()  # the warm-up counts applied updates
        self.log_dict(
            {
                "train/grad_norm": norm.detach().float(),
                "train/skipped_updates": self.skipped_updates.float(),
            },
            on_step=True,
            on_epoch=False,
            batch_size=batch.shape[0],
        )

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def ema_weight(self, step: int) -> float:
        """The new weights' share in the average after update number `step` + 1: the decay
        warms up as (1 + step) / (10 + step), so an early average is not stuck at the init."""
        return 1.0 - min(self.ema_decay, (1 + step) / (10 + step))

    @torch.no_grad()
    def update_ema(self) -> None:
        """After an applied update (global_step counts them): ema += w (net - ema)."""
        weight = self.ema_weight(self.global_step - 1)
        averaged = list(self.ema.parameters())
        torch._foreach_lerp_(averaged, [p.detach() for p in self.net.parameters()], weight)
        for ema_buffer, buffer in zip(self.ema.buffers(), self.net.buffers(), strict=True):
            ema_buffer.copy_(buffer)

    def on_validation_epoch_start(self) -> None:
        self.val_kl_units = [torch.zeros(s, device=self.device) for s in self.net.latent_sizes]
        self.val_images = 0

    def validation_step(self, batch: torch.Tensor, batch_idx: int) -> None:
        terms, stats = self.model_step(batch, "val")
        n = batch.shape[0]
        for i, layer in enumerate(stats):
            self.val_kl_units[i] += layer.kl().float().flatten(1).sum(0)
        self.val_images += n
        self.log_dict(
            {
                f"val/kl_layer/{i:02d}": layer.kl().float().flatten(1).sum(1).mean()
                for i, layer in enumerate(stats)
            },
            on_epoch=True,
            batch_size=n,
            sync_dist=True,
        )

    def on_validation_epoch_end(self) -> None:
        """Per layer: the mean KL (nats per image) and its active units, kept for the picture."""
        if not self.val_images:
            return
        means = [units / self.val_images for units in self.val_kl_units]
        self.kl_per_layer = [float(m.sum()) for m in means]
        active = {
            f"val/active_units_layer/{i:02d}": (m > ACTIVE_KL_NATS).sum().float()
            for i, m in enumerate(means)
        }
        self.log_dict(active, sync_dist=True)

    def on_test_epoch_start(self) -> None:
        self.test_active_units = ActiveUnits(self.latent_dim, ACTIVITY_THRESHOLD).to(self.device)

    def test_step(self, batch: torch.Tensor, batch_idx: int) -> None:
        self.model_step(batch, "test")
        images = to_float_images(batch)
        mu, _ = self.encode(images)
        log_reconstruction_quality(self, images, self.decode(mu))
        self.test_active_units.update(mu)

    def on_test_epoch_end(self) -> None:
        self.log("test/active_units", self.test_active_units.compute().float(), sync_dist=True)

    def setup(self, stage: str) -> None:
        if stage == "fit" and self._trainer is not None:
            precision = str(self.trainer.precision)
            if precision.startswith("16"):
                raise UserError(
                    f"trainer.precision={precision}: model=hvae clips and skips its own updates, "
                    "which a float16 gradient scaler hides; use bf16-mixed or 32-true"
                )
            if self.trainer.gradient_clip_val:
                raise UserError(
                    "trainer.gradient_clip_val is for one-vector models; model=hvae clips at "
                    "model.grad_clip (and skips above model.skip_threshold): leave it null"
                )
        if self.compile_net and stage == "fit":
            self.net.compile(mode=self.compile_net)  # its forward is the whole training pass

    def configure_optimizers(self):
        optimizer = self.optimizer_factory(params=self.trainable_parameters())
        warmup = max(self.warmup_steps, 1)
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: min(1.0, (step + 1) / warmup)
        )
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": schedule, "interval": "step"},
        }
