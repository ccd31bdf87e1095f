"""Post-hoc samplers for a trained Gaussian VAE: densities fitted after training on the posterior
means of the training split, drawn from instead of the prior.

The aggregate posterior of a trained VAE does not fill N(0, I): prior samples land in holes the
decoder never saw, which is why they look blurrier than reconstructions. A density fitted on the
codes the decoder was trained on covers them better, at no training cost:
- `gmm`: a Gaussian mixture fitted by EM (Ghosh et al. 2020, "From Variational to Deterministic
  Autoencoders", section 4 "ex-post density estimation");
- `two_stage`: a second, small VAE on the codes (Dai & Wipf 2019, "Diagnosing and Enhancing VAE
  Models"), sampled by decoding u ~ N(0, I).

A sampler is fitted once and saved next to the checkpoint as `<checkpoint>.<name>.safetensors`
(its tensors) and `<checkpoint>.<name>.json` (settings, fit statistics and the checkpoint's
SHA-256); a later run with the same settings on the same checkpoint file reuses it.
"""

import hashlib
import json
import logging
import math
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from safetensors.torch import load_file, save_file
from torch import nn

from vae_lit.atomic_write import atomic_path, write_text_atomic
from vae_lit.errors import UserError

log = logging.getLogger(__name__)

LOG_2PI = math.log(2 * math.pi)
COVARIANCES = ("full", "diag")


class LatentSampler(nn.Module):
    """A density over latent codes, fitted on (N, D) points: `log_prob`, `sample`, `fit`.

    Tensors are created by `build(dim)`, so a saved sampler loads into a fresh one of the same
    settings; `settings()` is what must match for a saved fit to be reused.
    """

    name = ""

    def __init__(self, seed: int = 0):
        super().__init__()
        self.seed = int(seed)
        self.dim = 0

    def settings(self) -> dict[str, Any]:
        raise NotImplementedError

    def build(self, dim: int) -> None:
        raise NotImplementedError

    def fit(self, codes: torch.Tensor) -> dict[str, float]:
        """Fit on (N, D) points; return statistics of the fit for the json."""
        raise NotImplementedError

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """log density of (N, D) points in nats: shape (N,)."""
        raise NotImplementedError

    def sample(
        self, n: int, generator: torch.Generator | None = None, device=None
    ) -> torch.Tensor:
        """`n` points drawn with a CPU `generator` (the same on every machine), on `device`."""
        raise NotImplementedError


def gaussian_log_probs(
    x: torch.Tensor, means: torch.Tensor, scale: torch.Tensor, covariance: str
) -> torch.Tensor:
    """log N(x_n; mean_k, Sigma_k) for every point and component: (N, D) -> (N, K).

    `scale` is the lower Cholesky factor of each Sigma_k (K, D, D) for `full`, the standard
    deviations (K, D) for `diag`.
    """
    diff = x.unsqueeze(1) - means.unsqueeze(0)  # (N, K, D)
    if covariance == "full":
        # L y = diff per component: Mahalanobis distance |y|^2; log det Sigma = 2 sum log diag L
        y = torch.linalg.solve_triangular(scale, diff.permute(1, 2, 0), upper=False)  # (K, D, N)
        mahalanobis = y.pow(2).sum(1).t()
        log_det = 2 * torch.log(torch.diagonal(scale, dim1=-2, dim2=-1)).sum(-1)
    else:
        mahalanobis = (diff / scale.unsqueeze(0)).pow(2).sum(-1)
        log_det = 2 * torch.log(scale).sum(-1)
    return -0.5 * (x.shape[1] * LOG_2PI + log_det.unsqueeze(0) + mahalanobis)


def kmeans_plus_plus(x: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """k starting centres, each drawn with probability proportional to its squared distance from
    the centres so far (Arthur & Vassilvitskii 2007)."""
    first = torch.randint(len(x), (1,), generator=generator)
    centres = [x[first[0]]]
    closest = (x - centres[0]).pow(2).sum(1)
    for _ in range(1, k):
        weights = closest / closest.sum() if closest.sum() > 0 else torch.ones_like(closest)
        pick = torch.multinomial(weights.float(), 1, generator=generator)[0]
        centres.append(x[pick])
        closest = torch.minimum(closest, (x - x[pick]).pow(2).sum(1))
    return torch.stack(centres)


class GaussianMixture(LatentSampler):
    """A mixture of `num_components` Gaussians with `full` or `diag` covariances, fitted by EM
    (Dempster et al. 1977; Bishop 2006, section 9.2.2) in float64.

    EM starts from k-means++ centres and a few Lloyd iterations; `reg_covar` is added to each
    covariance's diagonal so a component on a few points stays invertible. It stops when the mean
    log-likelihood per point improves by less than `tol`, or after `max_iter` iterations.
    """

    name = "gmm"

    def __init__(
        self,
        num_components: int = 10,
        covariance: str = "full",
        max_iter: int = 300,
        tol: float = 1e-5,
        reg_covar: float = 1e-6,
        seed: int = 0,
    ):
        super().__init__(seed)
        if int(num_components) < 1:
            raise UserError(
                f"samplers.gmm.num_components={num_components} must be a positive integer"
            )
        if covariance not in COVARIANCES:
            raise UserError(
                f"samplers.gmm.covariance={covariance!r} is unknown; use one of: "
                f"{', '.join(COVARIANCES)}"
            )
        if reg_covar < 0 or tol < 0 or int(max_iter) < 1:
            raise UserError(
                f"samplers.gmm: reg_covar={reg_covar} and tol={tol} must be >= 0 and "
                f"max_iter={max_iter} >= 1"
            )
        self.num_components, self.covariance = int(num_components), covariance
        self.max_iter, self.tol, self.reg_covar = int(max_iter), float(tol), float(reg_covar)

    def settings(self) -> dict[str, Any]:
        return {
            "num_components": self.num_components,
            "covariance": self.covariance,
            "max_iter": self.max_iter,
            "tol": self.tol,
            "reg_covar": self.reg_covar,
            "seed": self.seed,
        }

    def build(self, dim: int) -> None:
        self.dim, k = int(dim), self.num_components
        scale_shape = (k, self.dim, self.dim) if self.covariance == "full" else (k, self.dim)
        self.register_buffer("log_weights", torch.zeros(k, dtype=torch.float64))
        self.register_buffer("means", torch.zeros(k, self.dim, dtype=torch.float64))
        self.register_buffer("scale", torch.zeros(scale_shape, dtype=torch.float64))

    def m_step(self, x: torch.Tensor, resp: torch.Tensor) -> None:
        """Weights, means and covariances from the responsibilities (N, K)."""
        counts = resp.sum(0) + 10 * torch.finfo(resp.dtype).eps
        means = resp.t() @ x / counts.unsqueeze(1)
        diff = x.unsqueeze(1) - means.unsqueeze(0)  # (N, K, D)
        if self.covariance == "full":
            weighted = diff * resp.unsqueeze(2)
            cov = torch.einsum("nkd,nke->kde", weighted, diff) / counts.view(-1, 1, 1)
            cov = cov + self.reg_covar * torch.eye(self.dim, dtype=x.dtype)
            scale = torch.linalg.cholesky(cov)
        else:
            var = (resp.unsqueeze(2) * diff.pow(2)).sum(0) / counts.unsqueeze(1)
            scale = (var + self.reg_covar).sqrt()
        self.log_weights.copy_(torch.log(counts / counts.sum()))
        self.means.copy_(means)
        self.scale.copy_(scale)

    def joint_log_probs(self, x: torch.Tensor) -> torch.Tensor:
        """log w_k + log N(x_n; mean_k, Sigma_k): (N, K)."""
        return self.log_weights + gaussian_log_probs(x, self.means, self.scale, self.covariance)

    @torch.no_grad()
    def fit(self, codes: torch.Tensor) -> dict[str, float]:
        x = codes.detach().to("cpu", torch.float64)
        n, dim = x.shape
        if n < self.num_components:
            raise UserError(
                f"samplers.gmm.num_components={self.num_components} is more than the {n} "
                "training codes; lower it"
            )
        self.build(dim)
        generator = torch.Generator().manual_seed(self.seed)
        centres = kmeans_plus_plus(x, self.num_components, generator)
        for _ in range(10):  # Lloyd iterations: hard assignments to start EM from
            assign = torch.cdist(x, centres).argmin(1)
            for k in range(self.num_components):
                if (assign == k).any():
                    centres[k] = x[assign == k].mean(0)
        resp = torch.nn.functional.one_hot(assign, self.num_components).to(x.dtype)
        self.m_step(x, resp)
        previous, converged, iterations = -math.inf, False, 0
        for iterations in range(1, self.max_iter + 1):  # noqa: B007 (reported after the loop)
            joint = self.joint_log_probs(x)
            log_norm = torch.logsumexp(joint, dim=1, keepdim=True)
            mean_ll = float(log_norm.mean())
            if mean_ll - previous < self.tol:
                converged = True
                break
            previous = mean_ll
            self.m_step(x, torch.exp(joint - log_norm))
        final = float(self.log_prob(x).mean())
        return {"iterations": iterations, "converged": converged, "train_log_likelihood": final}

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        x = z.detach().to(self.means.device, torch.float64)
        return torch.logsumexp(self.joint_log_probs(x), dim=1).to(z.device, torch.float32)

    def sample(self, n: int, generator: torch.Generator | None = None, device=None):
        weights = torch.exp(self.log_weights).cpu()
        component = torch.multinomial(weights, n, replacement=True, generator=generator)
        noise = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        means, scale = self.means.cpu()[component], self.scale.cpu()[component]
        if self.covariance == "full":
            points = means + (scale @ noise.unsqueeze(2)).squeeze(2)
        else:
            points = means + scale * noise
        return points.float().to(device or "cpu")


@contextmanager
def one_thread() -> Iterator[None]:
    """Matrices this small gain nothing from a second thread and lose a lot when the cores are
    busy: a step of the default two-stage VAE took 3.8 ms on one thread and 60 ms on two, on a
    2-core machine shared with other work."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def mlp(sizes: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.SiLU())
    return nn.Sequential(*layers)


class TwoStageVAE(LatentSampler):
    """A second VAE on the (standardised) codes, u in R^D -> z in R^D, with a Gaussian decoder of
    one learned variance gamma (Dai & Wipf 2019, section 4: the second stage's latent space as
    large as its data, so it can match the aggregate posterior and gamma need not go to 0).

    `log_prob` is the importance-weighted bound with `importance_samples` samples (Burda et al.
    2016), a lower bound on log p(z); the standardisation's Jacobian is included.
    """

    name = "two_stage"

    def __init__(
        self,
        hidden_dim: int = 256,
        num_layers: int = 2,
        steps: int = 3000,
        batch_size: int = 256,
        lr: float = 1e-3,
        importance_samples: int = 100,
        seed: int = 0,
    ):
        super().__init__(seed)
        if min(int(hidden_dim), int(num_layers), int(steps), int(batch_size)) < 1 or lr <= 0:
            raise UserError(
                f"samplers.two_stage: hidden_dim={hidden_dim}, num_layers={num_layers}, "
                f"steps={steps} and batch_size={batch_size} must be positive integers and "
                f"lr={lr} > 0"
            )
        if int(importance_samples) < 1:
            raise UserError(
                f"samplers.two_stage.importance_samples={importance_samples} must be >= 1"
            )
        self.hidden_dim, self.num_layers = int(hidden_dim), int(num_layers)
        self.steps, self.batch_size, self.lr = int(steps), int(batch_size), float(lr)
        self.importance_samples = int(importance_samples)

    def settings(self) -> dict[str, Any]:
        return {
            "hidden_dim": self.hidden_dim,
            "num_layers": self.num_layers,
            "steps": self.steps,
            "batch_size": self.batch_size,
            "lr": self.lr,
            "importance_samples": self.importance_samples,
            "seed": self.seed,
        }

    def build(self, dim: int) -> None:
        self.dim = int(dim)
        hidden = [self.hidden_dim] * self.num_layers
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            self.encoder = mlp([self.dim, *hidden, 2 * self.dim])
            self.decoder = mlp([self.dim, *hidden, self.dim])
        self.log_gamma = nn.Parameter(torch.zeros(()))
        self.register_buffer("shift", torch.zeros(self.dim))
        self.register_buffer("scale", torch.ones(self.dim))

    def terms(self, x: torch.Tensor, k: int = 1):
        """log p(x|u), log p(u), log q(u|x) for `k` draws u ~ q(u|x): each (k, N)."""
        mu, logvar = self.encoder(x).chunk(2, dim=1)
        u = mu + torch.randn(k, *mu.shape, device=x.device) * torch.exp(0.5 * logvar)
        mean = self.decoder(u)
        log_px = -0.5 * (
            (x - mean).pow(2).sum(-1) * torch.exp(-self.log_gamma)
            + self.dim * (self.log_gamma + LOG_2PI)
        )
        log_pu = -0.5 * (u.pow(2) + LOG_2PI).sum(-1)
        log_qu = -0.5 * (((u - mu) ** 2) * torch.exp(-logvar) + logvar + LOG_2PI).sum(-1)
        return log_px, log_pu, log_qu

    def fit(self, codes: torch.Tensor) -> dict[str, float]:
        x = codes.detach().to("cpu", torch.float32)
        self.build(x.shape[1])
        with torch.no_grad():
            self.shift.copy_(x.mean(0))
            self.scale.copy_(x.std(0).clamp(min=1e-6) if len(x) > 1 else torch.ones(self.dim))
        data = (x - self.shift) / self.scale
        parameters = [*self.encoder.parameters(), *self.decoder.parameters(), self.log_gamma]
        optimizer = torch.optim.Adam(parameters, lr=self.lr)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, self.steps)
        generator = torch.Generator().manual_seed(self.seed)
        with torch.random.fork_rng(devices=[]), one_thread():
            torch.manual_seed(self.seed)
            for _ in range(self.steps):
                batch = data[torch.randint(len(data), (self.batch_size,), generator=generator)]
                log_px, log_pu, log_qu = self.terms(batch)
                loss = -(log_px + log_pu - log_qu).mean()
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
        return {
            "final_neg_elbo": float(loss.detach()),
            "gamma": float(torch.exp(self.log_gamma.detach())),
            "train_log_likelihood": float(self.log_prob(x).mean()),
        }

    @torch.no_grad()
    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        x = (z.detach().float().to(self.shift.device) - self.shift) / self.scale
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            values = []
            for batch in x.split(max(1, 65536 // self.importance_samples)):
                log_px, log_pu, log_qu = self.terms(batch, self.importance_samples)
                weights = log_px + log_pu - log_qu
                values.append(torch.logsumexp(weights, 0) - math.log(self.importance_samples))
        log_jacobian = torch.log(self.scale).sum()
        return (torch.cat(values) - log_jacobian).to(z.device)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None, device=None):
        u = torch.randn(n, self.dim, generator=generator).to(self.shift.device)
        noise = torch.randn(n, self.dim, generator=generator).to(self.shift.device)
        # z ~ p(z|u), the density log_prob scores: Dai & Wipf decode the mean alone, the same
        # once gamma is small, but a second stage that explains the codes by its noise would
        # then draw every sample at one point
        points = self.decoder(u) + noise * torch.exp(0.5 * self.log_gamma)
        return (points * self.scale + self.shift).to(device or "cpu")


# -- fitting once, saving next to the checkpoint -------------------------------------------------
def fingerprint(path: Path) -> str:
    """SHA-256 of a checkpoint file, or of every file of a checkpoint folder (names included)."""
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        if path.is_dir():
            digest.update(str(file.relative_to(path)).encode())
        with open(file, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def sampler_paths(ckpt: Path, name: str) -> tuple[Path, Path]:
    stem = ckpt.parent / f"{ckpt.name}.{name}"
    return stem.with_name(stem.name + ".safetensors"), stem.with_name(stem.name + ".json")


def save_sampler(sampler: LatentSampler, ckpt: Path, record: dict[str, Any]) -> Path:
    tensors_path, json_path = sampler_paths(ckpt, sampler.name)
    tensors = {
        key: value.detach().cpu().contiguous() for key, value in sampler.state_dict().items()
    }
    with atomic_path(tensors_path) as partial:
        save_file(tensors, str(partial))
    write_text_atomic(json_path, json.dumps(record, indent=2) + "\n")
    return tensors_path


def load_saved(sampler: LatentSampler, ckpt: Path, expected: dict[str, Any]) -> bool:
    """Load the saved fit into `sampler` if one exists for these settings and this checkpoint."""
    tensors_path, json_path = sampler_paths(ckpt, sampler.name)
    if not (tensors_path.is_file() and json_path.is_file()):
        return False
    try:
        record = json.loads(json_path.read_text())
    except json.JSONDecodeError:
        return False
    if any(record.get(key) != value for key, value in expected.items()):
        log.info(f"{json_path} was fitted with other settings or another checkpoint: refitting")
        return False
    sampler.build(int(record["latent_dim"]))
    sampler.load_state_dict(load_file(str(tensors_path)))
    return True


@torch.no_grad()
def posterior_means(module, datamodule, split: str = "train") -> torch.Tensor:
    """The posterior means E[z|x] of every image of a split, (N, latent_dim), on the CPU."""
    from vae_lit.lit_module import to_float_images

    module.eval()
    means = [
        module.encode(to_float_images(batch.to(module.device)))[0].float().cpu()
        for batch in datamodule.dataloader(split)
    ]
    if not means:
        raise UserError(f"the {split} split has no images to fit a sampler on")
    return torch.cat(means)


def fitted_sampler(
    name: str, sampler_cfg: DictConfig, module, ckpt: Path, datamodule_factory
) -> LatentSampler:
    """The sampler `sampler_cfg` builds, fitted on the training split's posterior means of
    `module`, or loaded from the files next to `ckpt` when those were fitted alike.

    `datamodule_factory()` builds the set-up datamodule; it is only called when fitting.
    """
    sampler: LatentSampler = instantiate(sampler_cfg)
    if sampler.name != name:
        raise UserError(
            f"samplers.{name} builds a {sampler.name!r} sampler; name it {sampler.name}"
        )
    expected = {
        "sampler": name,
        "settings": sampler.settings(),
        "checkpoint_sha256": fingerprint(ckpt),
        "latent_dim": int(module.latent_dim),
    }
    if load_saved(sampler, ckpt, expected):
        log.info(f"Reusing the {name} sampler saved next to {ckpt}")
        return sampler.to(module.device).eval()
    log.info(f"Fitting the {name} sampler on the training split's posterior means")
    codes = posterior_means(module, datamodule_factory(), "train")
    stats = sampler.fit(codes)
    record = {
        **expected,
        "target": OmegaConf.select(sampler_cfg, "_target_"),
        "checkpoint": ckpt.name,
        "num_codes": len(codes),
        "fit": stats,
    }
    path = save_sampler(sampler, ckpt, record)
    log.info(f"Saved the {name} sampler to {path} (fit: {stats})")
    return sampler.to(module.device).eval()


# -- what `vae_lit.sample` and `vae_lit.eval` call ----------------------------------------------
def sampler_names(samplers_cfg: DictConfig | None) -> list[str]:
    return ["prior", *((samplers_cfg or {}).keys())]


def check_sampler_name(name: str, samplers_cfg: DictConfig | None) -> None:
    names = sampler_names(samplers_cfg)
    if name not in names:
        raise UserError(f"sampler={name} is unknown; use one of: {', '.join(names)}")


def data_factory(data_cfg: DictConfig):
    """A function that builds and sets up the datamodule of `data_cfg` (only when called)."""

    def build():
        datamodule = instantiate(data_cfg)
        datamodule.setup("fit")
        return datamodule

    return build


def lerp_rows(ends: torch.Tensor, steps: int) -> torch.Tensor:
    """2R points -> R straight paths of `steps` points each, flattened: (R * steps, D)."""
    rows = len(ends) // 2
    t = torch.linspace(0, 1, steps, device=ends.device).view(1, steps, 1)
    path = ends[:rows].unsqueeze(1) * (1 - t) + ends[rows : 2 * rows].unsqueeze(1) * t
    return path.flatten(0, 1)


def sample_latents(cfg: DictConfig, module, run_cfg: DictConfig) -> torch.Tensor | None:
    """The latents `vae_lit.sample` decodes when they are not the model prior's own: codes from a
    VQ-VAE's learned prior (at `cfg.temperature`), or draws from a fitted sampler (`cfg.sampler`).
    None: draw from the model's prior as usual."""
    from vae_lit.code_prior import CodePriorLitModule  # imports this module
    from vae_lit.vq_lit_module import VQVAELitModule

    name, temperature = str(cfg.get("sampler", "prior")), float(cfg.get("temperature", 1.0))
    if isinstance(module, VQVAELitModule):
        raise UserError(
            f"ckpt={cfg.ckpt} is a VQ-VAE, which samples through a prior over its codes; train "
            f"one with python -m vae_lit.train_prior ckpt={cfg.ckpt}, then pass its checkpoint"
        )
    if isinstance(module, CodePriorLitModule):
        if cfg.mode != "sample" or name != "prior":
            raise UserError(
                f"mode={cfg.mode} sampler={name}: a VQ-VAE prior checkpoint draws mode=sample "
                "sampler=prior only (its codes are discrete)"
            )
        return module.sample_latents(int(cfg.n), int(cfg.seed), temperature)
    if temperature != 1.0:
        raise UserError(
            f"temperature={temperature} applies to VQ-VAE prior checkpoints only; leave it at 1"
        )
    check_sampler_name(name, cfg.get("samplers"))
    if name == "prior":
        return None
    sampler = fitted_sampler(
        name, cfg.samplers[name], module, Path(cfg.ckpt), data_factory(run_cfg.data)
    )
    generator = torch.Generator().manual_seed(int(cfg.seed))
    if cfg.mode == "sample":
        return sampler.sample(int(cfg.n), generator, module.device)
    ends = sampler.sample(2 * (int(cfg.n) // int(cfg.nrow)), generator, module.device)
    return lerp_rows(ends, int(cfg.nrow))  # straight lines: slerp assumes N(0, I)


def saved_sampler(name: str, sampler_cfg: DictConfig, module, ckpt: Path) -> LatentSampler | None:
    """The sampler saved beside `ckpt` with these settings, or None when there is none."""
    sampler: LatentSampler = instantiate(sampler_cfg)
    expected = {
        "sampler": name,
        "settings": sampler.settings(),
        "checkpoint_sha256": fingerprint(ckpt),
        "latent_dim": int(module.latent_dim),
    }
    return sampler.to(module.device).eval() if load_saved(sampler, ckpt, expected) else None


def latent_log_likelihoods(
    module,
    datamodule,
    samplers_cfg: DictConfig | None,
    ckpt: Path,
    split: str = "test",
    fit: list[str] | tuple[str, ...] = ("gmm",),
) -> dict[str, Any]:
    """Mean log-density (nats per image) of the split's posterior means under the model's prior
    and under the samplers of `samplers_cfg`: how well each covers the aggregate posterior, higher
    is better. Those named in `fit` are fitted on the training split when no saved fit matches;
    the others are scored only when a fit is saved beside the checkpoint (`vae_lit.sample
    sampler=<name>` saves one)."""
    unknown = sorted(set(fit) - set(samplers_cfg or {}))
    if unknown:
        raise UserError(
            f"eval.samplers names {', '.join(unknown)}, which is not among samplers: "
            f"{', '.join(samplers_cfg or {}) or 'none'}"
        )
    means = posterior_means(module, datamodule, split).to(module.device)
    with torch.no_grad():
        values = {"prior": float(module.prior.log_prob(means).mean())}
    for name, sampler_cfg in (samplers_cfg or {}).items():
        if sampler_cfg is None:
            continue
        if name in fit:
            sampler = fitted_sampler(name, sampler_cfg, module, ckpt, lambda: datamodule)
        else:
            sampler = saved_sampler(name, sampler_cfg, module, ckpt)
        if sampler is not None:
            values[name] = float(sampler.log_prob(means).mean())
    return {"latent_log_likelihood": values}


def latent_likelihood_rows(metrics: dict[str, Any]) -> list[tuple[str, str, str]]:
    """Rows of the eval table for `latent_log_likelihood`."""
    values = metrics.get("latent_log_likelihood") or {}
    return [
        (
            f"log p(means), {name}",
            f"{value:.2f} nats",
            "posterior means under the model's prior"
            if name == "prior"
            else f"under the fitted {name} sampler; higher: covers them better",
        )
        for name, value in values.items()
    ]
