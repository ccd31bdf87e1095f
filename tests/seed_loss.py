"""A frozen copy of the seed model's training loss (vae_lit/losses.py at commit f79cb3a, before
the ingredient split): Bernoulli BCE with logits summed over an image, plus the analytic KL to
N(0, I), averaged over the batch, beta = 1. The golden test trains this beside the default
composition in one process, so their losses must agree bit for bit on any CPU."""

import torch

from vae_lit.model.vae_module import VAELitModule, to_float_images


class SeedBernoulliNLL(torch.autograd.Function):
    """The seed's per-pixel BCE with logits: max(l, 0) - x * l + log(1 + exp(-|l|))."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(logits, x)
        log1p_exp = logits.abs().neg_().exp_().add_(1).log_()
        return torch.addcmul(logits.clamp(min=0), x, logits, value=-1.0).add_(log1p_exp)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        logits, x = ctx.saved_tensors
        return torch.sigmoid(logits).sub_(x).mul_(grad), None


class SeedLossModule(VAELitModule):
    """Today's module and network, trained on the seed's loss expression."""

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        if self.channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last)
        images = to_float_images(batch)
        mu, logvar = self.net.encode(images)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        logits = self.net.decode(z)
        nll = SeedBernoulliNLL.apply(logits.float(), images.float())
        recon = nll.sum(dim=tuple(range(1, nll.dim()))).mean()
        mu, logvar = mu.float(), logvar.float()
        kl = (0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar)).mean(0).sum()
        return recon + 1.0 * kl
