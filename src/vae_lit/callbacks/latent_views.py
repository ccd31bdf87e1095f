"""Views of the latent space, drawn once when training ends: interpolations between validation
images, and traversals of the latent dimensions the model uses most.
"""

from pathlib import Path

import torch
from pytorch_lightning import Callback, LightningModule, Trainer

from vae_lit.callbacks.image_grids import (
    evaluating,
    fixed_images,
    image_grid,
    save_png,
)
from vae_lit.loggers.media import log_image
from vae_lit.model.vae_module import to_float_images


def lerp(a: torch.Tensor, b: torch.Tensor, steps: int) -> torch.Tensor:
    """(N, D) ends -> (N, steps, D) points on the lines from a to b, both ends included."""
    t = torch.linspace(0, 1, steps, device=a.device).view(1, steps, 1)
    return a.unsqueeze(1) * (1 - t) + b.unsqueeze(1) * t


def slerp(a: torch.Tensor, b: torch.Tensor, steps: int) -> torch.Tensor:
    """Like `lerp` along great circles. Between two draws from N(0, I) it keeps the norm that
    draws typically have, where a straight line passes through unlikely, too-short codes."""
    t = torch.linspace(0, 1, steps, device=a.device).view(1, steps, 1)
    cos = torch.nn.functional.cosine_similarity(a, b, dim=-1).clamp(-1 + 1e-6, 1 - 1e-6)
    omega = torch.acos(cos).view(-1, 1, 1)
    a, b = a.unsqueeze(1), b.unsqueeze(1)
    return (torch.sin((1 - t) * omega) * a + torch.sin(t * omega) * b) / torch.sin(omega)


class LatentView(Callback):
    """Draws `draw()` once at the end of training, on rank 0, into `output_dir/filename`."""

    def __init__(self, output_dir: str, filename: str, seed: int):
        self.path = Path(output_dir) / filename
        self.seed = seed

    def draw(self, trainer: Trainer, pl_module: LightningModule) -> None:
        raise NotImplementedError

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.fast_dev_run or not trainer.is_global_zero:
            return
        with evaluating(pl_module):
            self.draw(trainer, pl_module)


class LatentInterpolation(LatentView):
    """Each row: a validation image, `steps` decodings along the line between its latent mean and
    another image's, then that other image."""

    def __init__(
        self,
        output_dir: str,
        filename: str = "interpolation.png",
        num_pairs: int = 4,
        steps: int = 8,
        seed: int = 1,
    ):
        super().__init__(output_dir, filename, seed)
        self.num_pairs, self.steps = num_pairs, steps

    def draw(self, trainer: Trainer, pl_module: LightningModule) -> None:
        images = fixed_images(trainer, 2 * self.num_pairs, self.seed)
        x = to_float_images(images.to(pl_module.device))
        pairs = len(x) // 2
        start, end = x[:pairs], x[pairs : 2 * pairs]
        mu_start, _ = pl_module.encode(start)
        mu_end, _ = pl_module.encode(end)
        path = lerp(mu_start, mu_end, self.steps).flatten(0, 1)
        decoded = pl_module.decode(path).view(pairs, self.steps, *x.shape[1:])
        rows = torch.cat([start.unsqueeze(1), decoded, end.unsqueeze(1)], dim=1)
        picture = image_grid(rows.flatten(0, 1), nrow=self.steps + 2)
        save_png(picture, self.path)
        log_image(trainer, "interpolation", picture, "validation image, latent path, image")


class LatentTraversal(LatentView):
    """Row i: the latent mean of one validation image with its i-th most active dimension set to
    `steps` values from -span to span (N(0, I) units).

    A dimension's activity is the variance of its posterior mean over validation images (Burda et
    al. 2016): a dimension the decoder ignores has activity near 0, and traversing it changes
    nothing, so the most active ones are the ones worth looking at.
    """

    def __init__(
        self,
        output_dir: str,
        filename: str = "traversal.png",
        num_dims: int = 8,
        steps: int = 9,
        span: float = 3.0,
        num_images: int = 512,
        seed: int = 2,
    ):
        super().__init__(output_dir, filename, seed)
        self.num_dims, self.steps, self.span, self.num_images = num_dims, steps, span, num_images

    def draw(self, trainer: Trainer, pl_module: LightningModule) -> None:
        images = fixed_images(trainer, self.num_images, self.seed)
        means = torch.cat(
            [
                pl_module.encode(to_float_images(batch.to(pl_module.device)))[0]
                for batch in images.split(128)
            ]
        )
        activity = means.var(0) if len(means) > 1 else means.new_ones(means.shape[1])
        dims = activity.argsort(descending=True)[: self.num_dims]
        values = torch.linspace(-self.span, self.span, self.steps, device=means.device)
        codes = means[0].repeat(len(dims), self.steps, 1)
        codes[torch.arange(len(dims)), :, dims] = values
        picture = image_grid(pl_module.decode(codes.flatten(0, 1)), nrow=self.steps)
        save_png(picture, self.path)
        described = ", ".join(f"{d} ({activity[d]:.2f})" for d in dims.tolist())
        log_image(trainer, "traversal", picture, f"rows: dims (activity) {described}")
