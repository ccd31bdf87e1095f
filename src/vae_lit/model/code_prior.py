"""A learned prior over a VQ-VAE's code grids, and the codes it trains on.

The prior (a gated PixelCNN, `vae_lit.networks.pixelcnn`) learns p(c) of the code grids the
VQ-VAE's
encoder gives the training images. The codes are extracted once, with the VQ-VAE in eval mode,
into `<vqvae checkpoint>.codes.safetensors` beside the checkpoint, or in the user's cache dir
(keyed by the checkpoint's SHA-256 and the data config), so the prior's epochs never run the
VQ-VAE's encoder.

The prior's checkpoint holds a reference to the VQ-VAE (its path and SHA-256), not a copy of its
weights: loading the prior loads that VQ-VAE, and refuses one whose file changed since.
"""

import json
import logging
import math
from collections.abc import Callable
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning import LightningModule
from safetensors import safe_open
from safetensors.torch import save_file

from vae_lit.errors import UserError
from vae_lit.model.vae_module import optimizers_of, to_float_images
from vae_lit.model.vq_module import VQVAELitModule
from vae_lit.networks.pixelcnn import GatedPixelCNN
from vae_lit.persistence.atomic_write import atomic_path
from vae_lit.persistence.checkpoint import load_checkpoint
from vae_lit.persistence.derived import derived_paths, save_derived
from vae_lit.persistence.fingerprint import fingerprint

log = logging.getLogger(__name__)


def load_vqvae(path: str | Path, sha256: str | None = None) -> tuple[VQVAELitModule, DictConfig]:
    """The VQ-VAE of a checkpoint, refused in one line when it is not one or (with `sha256`) when
    the file is not the one a prior was trained on."""
    path = Path(path)
    if not path.exists():
        raise UserError(
            f"the VQ-VAE checkpoint {path} is gone; pass vqvae=<its new path> if it moved, or "
            "train a prior for another one: python -m vae_lit.train_prior ckpt=<vqvae .ckpt>"
        )
    if sha256 is not None and fingerprint(path) != sha256:
        raise UserError(
            f"the VQ-VAE checkpoint {path} changed since this prior was trained on its codes; "
            f"train the prior again: python -m vae_lit.train_prior ckpt={path}"
        )
    module, config = load_checkpoint(path)
    if not isinstance(module, VQVAELitModule):
        raise UserError(
            f"ckpt={path} is not a VQ-VAE checkpoint ({config.model._target_}); a code prior "
            "needs one trained with model=vqvae"
        )
    return module, config


# -- the codes, extracted once --------------------------------------------------------------------
CODES_FILE = "codes.safetensors"


def code_dtype(num_codes: int) -> torch.dtype:
    """The smallest integer type that holds every code: int16 wraps above 32767 codes."""
    return torch.int16 if num_codes <= torch.iinfo(torch.int16).max + 1 else torch.int32


@torch.no_grad()
def extract_codes(vqvae: VQVAELitModule, datamodule, split: str) -> torch.Tensor:
    """The (N, h, w) code grids of every image of a split, as small integers on the CPU."""
    vqvae.eval()
    dtype = code_dtype(vqvae.num_codes)
    grids = [
        vqvae.encode_codes(to_float_images(batch.to(vqvae.device))).to("cpu", dtype)
        for batch in datamodule.dataloader(split)
    ]
    if not grids:
        size = vqvae.grid_size
        return torch.zeros(0, size, size, dtype=dtype)
    return torch.cat(grids)


def codes_problem(codes: dict[str, torch.Tensor], vqvae: VQVAELitModule) -> str | None:
    """Why a cache's codes cannot be this VQ-VAE's (a cache written by an older vae-lit, whose
    int16 codes wrapped, or a damaged file); None when they can."""
    size = vqvae.grid_size
    for split in ("train", "val", "test"):
        grid = codes.get(split)
        if grid is None:
            return f"it has no {split} codes"
        if grid.dtype not in (torch.int16, torch.int32, torch.int64) or grid.shape[1:] != (
            size,
            size,
        ):
            return f"its {split} codes are {grid.dtype} of shape {tuple(grid.shape)}"
        if grid.numel() and (int(grid.min()) < 0 or int(grid.max()) >= vqvae.num_codes):
            return f"its {split} codes leave 0..{vqvae.num_codes - 1}"
    return None


def read_codes_cache(
    path: Path, key: dict[str, str], vqvae: VQVAELitModule
) -> dict[str, torch.Tensor] | None:
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as cache:
            if cache.metadata() != key:
                log.info(f"{path} holds the codes of another checkpoint or data set")
                return None
            codes = {split: cache.get_tensor(split) for split in cache.keys()}
    except Exception as exc:  # a foreign or broken file: extract again
        log.info(f"{path} is unreadable ({type(exc).__name__}): extracting again")
        return None
    problem = codes_problem(codes, vqvae)
    if problem:
        log.warning(f"{path} is not a usable codes cache ({problem}): extracting again")
        return None
    return codes


def cached_codes(
    vqvae: VQVAELitModule, ckpt: Path, data_cfg: DictConfig, datamodule_factory: Callable
) -> dict[str, torch.Tensor]:
    """{split: (N, h, w) codes} of the VQ-VAE at `ckpt`, read from its cache when that was
    written for this very model and data config and holds valid codes, else extracted and cached
    (beside the checkpoint, or in the user's cache dir: `vae_lit.persistence.derived`)."""
    key = {
        "checkpoint_sha256": fingerprint(ckpt),
        "data": json.dumps(OmegaConf.to_container(data_cfg, resolve=True), sort_keys=True),
    }
    places = derived_paths(ckpt, CODES_FILE, key["checkpoint_sha256"])
    for path in places:
        codes = read_codes_cache(path, key, vqvae)
        if codes is not None:
            log.info(f"Reusing the codes cached in {path}")
            return codes
    datamodule = datamodule_factory()
    codes = {split: extract_codes(vqvae, datamodule, split) for split in ("train", "val", "test")}

    def write(path: Path) -> Path:
        with atomic_path(path) as partial:
            save_file(codes, str(partial), metadata=key)
        return path

    saved = save_derived(places, "VQ-VAE codes cache", write)
    counts = ", ".join(f"{split} {len(value)}" for split, value in codes.items())
    where = f" into {saved}" if saved else ""
    log.info(f"Extracted the codes of the VQ-VAE ({counts} images){where}")
    return codes


class CodeBatches(torch.utils.data.Dataset):
    """Rows of an (N, h, w) code array, batched as one long tensor."""

    def __init__(self, codes: torch.Tensor):
        self.codes = codes

    def __len__(self) -> int:
        return len(self.codes)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.codes[i].long()

    def __getitems__(self, rows: list[int]) -> torch.Tensor:
        return self.codes[torch.as_tensor(rows)].long()


def code_loader(
    codes: torch.Tensor, batch_size: int, shuffle: bool
) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(
        CodeBatches(codes),
        batch_size=batch_size,
        shuffle=shuffle,
        drop_last=shuffle and len(codes) > batch_size,
        collate_fn=lambda batch: batch if torch.is_tensor(batch) else torch.stack(batch),
    )


# -- the prior under Lightning ------------------------------------------------------------------
class CodePriorLitModule(LightningModule):
    """A PixelCNN prior over the code grids of the VQ-VAE at `vqvae_ckpt`.

    Losses are -log p(codes) in nats per image (summed over the grid); `*/bits_per_dim` divides
    them by the image's dimensions (channels x height x width x ln 2), the prior's share of the
    images' bits per dimension. Sampling draws code grids and decodes them with the VQ-VAE.
    """

    def __init__(
        self,
        net: GatedPixelCNN,
        vqvae_ckpt: str,
        optimizer: Callable[..., torch.optim.Optimizer],
        vqvae_sha256: str | None = None,
        scheduler: Callable[..., torch.optim.lr_scheduler.LRScheduler] | None = None,
    ):
        super().__init__()
        vqvae, _ = load_vqvae(vqvae_ckpt, vqvae_sha256)
        if net.num_codes != vqvae.num_codes:
            raise UserError(
                f"prior.num_codes={net.num_codes} but the VQ-VAE has {vqvae.num_codes} codes; "
                "leave num_codes to vae_lit.train_prior"
            )
        self.save_hyperparameters(
            {
                "vqvae_ckpt": str(vqvae_ckpt),
                "num_codes": net.num_codes,
                "grid_size": vqvae.grid_size,
            },
            logger=False,
        )
        self.net = net
        self.vqvae_ckpt = str(vqvae_ckpt)
        self._vqvae = [vqvae]  # a list: its weights stay in its own checkpoint, not in ours
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler

    @property
    def vqvae(self) -> VQVAELitModule:
        vqvae = self._vqvae[0]
        if vqvae.device != self.device:
            vqvae.to(self.device)
        return vqvae.eval()

    @property
    def grid_size(self) -> int:
        return self._vqvae[0].grid_size

    @property
    def image_dims(self) -> int:
        net = self._vqvae[0].net
        return net.channels * net.image_size**2

    # -- sampling ---------------------------------------------------------------------------------
    def sample_codes(
        self, n: int, temperature: float = 1.0, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        return self.net.sample(n, self.grid_size, temperature, generator)

    def sample_latents(self, n: int, seed: int, temperature: float = 1.0) -> torch.Tensor:
        """`n` code grids drawn from the prior with a CPU generator seeded by `seed`."""
        return self.sample_codes(n, temperature, torch.Generator().manual_seed(seed))

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Mean images in [0, 1] of (N, h, w) code grids."""
        return self.vqvae.decode(codes.to(self.device))

    @torch.no_grad()
    def sample(
        self, n: int, generator: torch.Generator | None = None, temperature: float = 1.0
    ) -> torch.Tensor:
        return self.decode(self.sample_codes(n, temperature, generator))

    def nll(self, codes: torch.Tensor) -> torch.Tensor:
        """-log p(codes) per grid, in nats: (N,)."""
        return self.net.nll(codes.long())

    # -- training ---------------------------------------------------------------------------------
    def model_step(self, codes: torch.Tensor, stage: str) -> torch.Tensor:
        loss = self.nll(codes).mean()
        on_step = stage == "train"
        log_args = dict(
            on_step=on_step, on_epoch=True, batch_size=codes.shape[0], sync_dist=not on_step
        )
        self.log(f"{stage}/loss", loss, prog_bar=not on_step, **log_args)
        self.log(f"{stage}/bits_per_dim", loss / (self.image_dims * math.log(2)), **log_args)
        return loss

    def training_step(self, codes: torch.Tensor, batch_idx: int) -> torch.Tensor:
        return self.model_step(codes, "train")

    def validation_step(self, codes: torch.Tensor, batch_idx: int) -> None:
        self.model_step(codes, "val")

    def test_step(self, codes: torch.Tensor, batch_idx: int) -> None:
        self.model_step(codes, "test")

    def configure_optimizers(self):
        return optimizers_of(self, self.optimizer_factory, self.scheduler_factory)
