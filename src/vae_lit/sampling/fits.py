"""Fitting a sampler once and keeping the fit: the tensors as `<checkpoint>.<name>.safetensors`
and the settings, fit statistics and the checkpoint's fingerprint as `<checkpoint>.<name>.json`,
beside the checkpoint; a later run with the same settings on the same model reuses it.
"""

import json
import logging
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from safetensors.torch import load_file, save_file

from vae_lit.errors import UserError
from vae_lit.model.vae_module import to_float_images
from vae_lit.persistence.atomic_write import atomic_path, write_text_atomic
from vae_lit.persistence.fingerprint import fingerprint
from vae_lit.sampling.latent_sampler import LatentSampler

log = logging.getLogger(__name__)


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
