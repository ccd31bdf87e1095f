"""Training logic: one shared step for train/val/test that wires the four ingredients (network,
likelihood, objective, prior); it knows none of their insides."""

import logging
from collections.abc import Callable

import torch
from pytorch_lightning import LightningModule
from pytorch_lightning.utilities import rank_zero_only
from torch import nn

from vae_lit.errors import UserError
from vae_lit.metrics.active_units import ActiveUnits
from vae_lit.metrics.image_quality import mse_per_image, psnr_per_image
from vae_lit.model.importance_weighted import importance_weighted_log_likelihood
from vae_lit.model.likelihoods import Likelihood
from vae_lit.model.objectives import (
    ELBO,
    Objective,
    ObjectiveTerms,
    elbo_terms,
    forward_pass,
    negative_elbo,
)
from vae_lit.model.priors import Prior, StandardNormal
from vae_lit.persistence.pretrained import PretrainedVAE

log = logging.getLogger(__name__)

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune")


def to_float_images(batch: torch.Tensor) -> torch.Tensor:
    """uint8 batches (what the data modules serve) become floats in [0, 1]; floats pass through."""
    if batch.dtype == torch.uint8:
        return batch.float().div_(255)
    return batch


def log_reconstruction_quality(
    module: LightningModule, images: torch.Tensor, reconstructions: torch.Tensor
) -> None:
    """test/mse and test/psnr of a test batch, averaged over the epoch and the processes."""
    module.log_dict(
        {
            "test/mse": mse_per_image(images, reconstructions).mean(),
            "test/psnr": psnr_per_image(images, reconstructions).mean(),
        },
        on_epoch=True,
        batch_size=images.shape[0],
        sync_dist=True,
    )


def compile_networks(net: nn.Module, mode: str) -> list[str]:
    """torch.compile the parts a step runs, in place (parameter names, so checkpoints, stay).
    `nn.Module.compile()` wraps `forward` only, and the steps call `net.encode`/`net.decode`, which
    run `net.encoder`/`net.decoder`: those are compiled, or `net` itself when it has neither.
    Returns the names of what was compiled."""
    parts = {
        name: getattr(net, name)
        for name in ("encoder", "decoder")
        if isinstance(getattr(net, name, None), nn.Module)
    }
    for part in (parts or {"net": net}).values():
        part.compile(mode=mode)
    return list(parts or ["net"])


def unfused_to_clip(module: LightningModule, optimizer_factory: Callable) -> dict[str, bool]:
    """`{"fused": False}` when gradients are clipped under fp16's gradient scaler, else `{}`.

    A fused optimizer unscales fp16 gradients inside its own step, after Lightning would clip them,
    so Lightning refuses to clip (a V100 or T4, where precision=auto picks 16-mixed). The unfused
    (foreach) Adam is unscaled before clipping, at the cost of a few more kernels per step."""
    trainer = module._trainer
    keywords = getattr(optimizer_factory, "keywords", {})
    if trainer is None or not keywords.get("fused") or not trainer.gradient_clip_val:
        return {}
    if getattr(trainer.precision_plugin, "scaler", None) is None:
        return {}
    if rank_zero_only.rank == 0:
        log.info(
            f"trainer.gradient_clip_val={trainer.gradient_clip_val} under {trainer.precision}: "
            "the optimizer runs unfused, since a fused one unscales fp16 gradients after clipping"
        )
    return {"fused": False}


def optimizers_of(module: LightningModule, optimizer_factory: Callable, scheduler_factory):
    """What `configure_optimizers` returns: the optimizer over the module's parameters and, when
    configured, its scheduler stepped each epoch on val/loss (which ReduceLROnPlateau reads)."""
    optimizer = optimizer_factory(
        params=module.parameters(), **unfused_to_clip(module, optimizer_factory)
    )
    if scheduler_factory is None:
        return optimizer
    scheduler = scheduler_factory(optimizer=optimizer)
    return {
        "optimizer": optimizer,
        "lr_scheduler": {"scheduler": scheduler, "monitor": "val/loss", "interval": "epoch"},
    }


class VAELitModule(LightningModule, PretrainedVAE):  # save/from_pretrained, push_to_hub
    """A VAE under Lightning. Batches are uint8 images (N, C, H, W); they become floats in [0, 1]
    on the device, so workers and host-to-device copies move a quarter of the bytes.

    `net` maps images to q(z|x) and codes to the likelihood's parameters; `likelihood` scores
    pixels; `prior` is p(z); `objective` turns them into the training loss. Validation and test
    report the plain negative ELBO (beta = 1) whatever the objective, so `val/loss` compares runs.
    """

    def __init__(
        self,
        net: nn.Module,
        likelihood: Likelihood,
        optimizer: Callable[..., torch.optim.Optimizer],
        objective: Objective | None = None,
        prior: Prior | None = None,
        scheduler: Callable[..., torch.optim.lr_scheduler.LRScheduler] | None = None,
        channels_last: bool = True,
        compile: bool | str = False,
    ):
        super().__init__()
        self.net = net
        self.likelihood = likelihood
        self.objective = objective or ELBO()
        self.prior = prior or StandardNormal(net.latent_dim)
        self.check_ingredients()
        self.prior.attach(net)
        self.objective.check(self.prior)
        # Plain values only: a checkpoint must load with torch.load(weights_only=True). The full
        # config that rebuilds this module travels separately (see vae_lit.persistence.checkpoint).
        self.save_hyperparameters(
            {
                "image_size": net.image_size,
                "channels": net.channels,
                "latent_dim": net.latent_dim,
                "likelihood": self.likelihood.name,
                "likelihood_kind": self.likelihood.kind,
                "objective": self.objective.name,
                "prior": self.prior.name,
            },
            logger=False,
        )
        # NHWC convolutions are oneDNN's (CPU) and cuDNN's (tensor cores) fast kernels: ~1.7x on
        # CPU for this model (benchmarks/RESULTS.md). Outputs of the public API stay NCHW.
        self.channels_last = bool(channels_last)
        if self.channels_last:
            self.net.to(memory_format=torch.channels_last)
        # torch.compile's mode, or None: true means "default"; "reduce-overhead" adds CUDA graphs.
        if compile not in (False, True, None, *COMPILE_MODES):
            raise UserError(
                f"model.compile={compile!r} is unknown; use false, true or one of: "
                f"{', '.join(COMPILE_MODES)}"
            )
        self.compile_net = "default" if compile is True else (compile or None)
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler

    def check_ingredients(self) -> None:
        """Ingredients built from separate configs must agree; say which key to change."""
        if self.net.out_channels != self.likelihood.out_channels:
            raise UserError(
                f"model.net.out_channels={self.net.out_channels} but model/likelihood="
                f"{self.likelihood.name} needs {self.likelihood.out_channels} decoder maps; leave "
                "out_channels to the config's interpolation"
            )
        if self.prior.latent_dim != self.net.latent_dim:
            raise UserError(
                f"model.prior.latent_dim={self.prior.latent_dim} differs from "
                f"model.net.latent_dim={self.net.latent_dim}; leave it to the interpolation"
            )

    @property
    def latent_dim(self) -> int:
        return self.net.latent_dim

    # -- public API: images are floats in [0, 1] ------------------------------------------------
    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior mean and log-variance of q(z|x)."""
        return self.net.encode(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Mean image of p(x|z), in [0, 1]."""
        return self.likelihood.mean(self.net.decode(z)).contiguous()

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Decode the posterior mean: the deterministic reconstruction."""
        mu, _ = self.encode(x)
        return self.decode(mu)

    @torch.no_grad()
    def sample_latents(self, n: int, seed: int, temperature: float = 1.0) -> torch.Tensor:
        """`n` points z ~ p(z) drawn from `seed`: the same points on every machine and epoch (a
        CPU generator), what the sample grid, the GIF and `vae_lit.sample` decode. A temperature
        scales N(0, I)'s standard deviation; a learned prior has none to scale."""
        z = self.prior.sample(n, torch.Generator().manual_seed(seed), device=self.device)
        if temperature == 1.0:
            return z
        if self.prior.name != "normal":
            raise UserError(
                f"temperature={temperature} scales an N(0, I) prior; "
                f"model/prior={self.prior.name} samples at temperature 1 only"
            )
        return z * temperature

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """`n` mean images decoded from z ~ p(z); a seeded CPU generator makes them repeatable."""
        return self.decode(self.prior.sample(n, generator, device=self.device))

    # -- the bound, as `vae_lit.eval` reads it ---------------------------------------------------
    @torch.no_grad()
    def bound_terms(self, images: torch.Tensor) -> tuple[ObjectiveTerms, torch.Tensor]:
        """The negative ELBO's terms of one pass (batch means) and the posterior means."""
        out = forward_pass(images, self.net, self.likelihood)
        return elbo_terms(images, out, self.prior), out.mu

    @torch.no_grad()
    def importance_weighted_log_likelihood(
        self, images: torch.Tensor, k: int, max_decodes: int = 512, generator=None
    ) -> torch.Tensor:
        """The IWAE bound on log p(x) per image, nats (vae_lit.model.importance_weighted)."""
        return importance_weighted_log_likelihood(
            self.net, self.likelihood, self.prior, images, k, max_decodes, generator
        )

    # -- training ---------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> ObjectiveTerms:
        return negative_elbo(x, self.net, self.likelihood, self.prior)

    def on_fit_start(self) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        splits = getattr(datamodule, "splits", None)
        if splits and "train" in splits:
            self.objective.prepare(len(splits["train"]))

    def model_step(self, batch: torch.Tensor, stage: str) -> ObjectiveTerms:
        if self.channels_last:  # converted as uint8, a quarter of the bytes of the float copy
            batch = batch.contiguous(memory_format=torch.channels_last)
        images = to_float_images(batch)
        if stage == "train":
            terms = self.objective(images, self.net, self.likelihood, self.prior, self.global_step)
        else:  # the bound itself, whatever the training objective
            terms = negative_elbo(images, self.net, self.likelihood, self.prior)
        on_step = stage == "train"
        log_args = dict(
            on_step=on_step, on_epoch=True, batch_size=images.shape[0], sync_dist=not on_step
        )
        # Not on the progress bar per step: it reads each value back to the host, a sync per step
        # that stalls an accelerator. The bar shows `val/loss` and epoch means.
        self.log(f"{stage}/loss", terms.loss, prog_bar=not on_step, **log_args)
        metrics = {
            f"{stage}/recon": terms.recon,
            f"{stage}/kl": terms.kl,
            f"{stage}/bits_per_dim": terms.bits_per_dim,
        }
        if stage == "train":
            extras = terms.extras.items()
            metrics.update({f"train/{k}": v for k, v in extras if torch.is_tensor(v)})
        self.log_dict(metrics, **log_args)
        # Host numbers (beta, capacity) would each be a host-to-device copy per step as a tensor:
        # they are logged only on the steps whose metrics Lightning writes to the loggers.
        writes = self._trainer is not None and self.trainer._logger_connector.should_update_logs
        if stage == "train" and writes:
            host = {f"train/{k}": float(v) for k, v in extras if not torch.is_tensor(v)}
            self.log_dict(host, on_step=True, on_epoch=False, batch_size=images.shape[0])
        return terms

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        return self.model_step(batch, "train").loss

    def validation_step(self, batch: torch.Tensor, batch_idx: int) -> None:
        terms = self.model_step(batch, "val")
        if terms.kl_per_dim is None:
            return
        # One scalar per latent dimension: a collapsed dimension shows as a flat line at 0 nats.
        self.log_dict(
            {f"val/kl_dim/{i:03d}": kl for i, kl in enumerate(terms.kl_per_dim)},
            on_epoch=True,
            batch_size=batch.shape[0],
            sync_dist=True,
        )

    def on_test_epoch_start(self) -> None:
        self.test_active_units = ActiveUnits(self.latent_dim).to(self.device)

    def test_step(self, batch: torch.Tensor, batch_idx: int) -> None:
        self.model_step(batch, "test")
        # The cheap part of `vae_lit.eval`: posterior-mean reconstructions and active units.
        images = to_float_images(batch)
        mu, _ = self.encode(images)
        reconstructions = self.decode(mu)
        log_reconstruction_quality(self, images, reconstructions)
        self.test_active_units.update(mu)

    def on_test_epoch_end(self) -> None:
        # compute() reduces the sums over processes, so the sync only averages equal counts.
        self.log("test/active_units", self.test_active_units.compute().float(), sync_dist=True)

    def setup(self, stage: str) -> None:
        # Only when fitting: evaluating or sampling a checkpoint should not wait for a compile.
        if self.compile_net and stage == "fit":
            compile_networks(self.net, self.compile_net)

    def configure_optimizers(self):
        return optimizers_of(self, self.optimizer_factory, self.scheduler_factory)
