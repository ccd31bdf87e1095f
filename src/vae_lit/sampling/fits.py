"""Fitting a sampler once and keeping the fit: the tensors as `<checkpoint>.<name>.safetensors`
and the settings, fit statistics and the checkpoint's fingerprint as `<checkpoint>.<name>.json`,
beside the checkpoint (a model folder's, or a read-only one's, in the user's cache dir:
`vae_lit.persistence.derived`); a later run with the same settings on the same model reuses it.
"""

import json
import logging
import math
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from safetensors.torch import load_file, save_file

from vae_lit.errors import UserError
from vae_lit.model.vae_module import to_float_images
from vae_lit.persistence.atomic_write import atomic_path, write_text_atomic
from vae_lit.persistence.derived import derived_paths, save_derived
from vae_lit.persistence.fingerprint import fingerprint
from vae_lit.sampling.latent_sampler import LatentSampler

log = logging.getLogger(__name__)


def sampler_places(ckpt: Path, name: str, sha256: str) -> list[tuple[Path, Path]]:
    """(tensors, record) paths a fit of `ckpt` may live at, in the order to look."""
    return [
        (stem.with_name(stem.name + ".safetensors"), stem.with_name(stem.name + ".json"))
        for stem in derived_paths(ckpt, name, sha256)
    ]


def sampler_paths(ckpt: Path, name: str) -> tuple[Path, Path]:
    """Where a new fit of `ckpt` is saved, when that place can be written."""
    return sampler_places(ckpt, name, fingerprint(ckpt))[0]


def save_sampler(sampler: LatentSampler, ckpt: Path, record: dict[str, Any]) -> Path | None:
    tensors = {
        key: value.detach().cpu().contiguous() for key, value in sampler.state_dict().items()
    }

    def write(stem: Path) -> Path:
        tensors_path = stem.with_name(stem.name + ".safetensors")
        with atomic_path(tensors_path) as partial:
            save_file(tensors, str(partial))
        write_text_atomic(stem.with_name(stem.name + ".json"), json.dumps(record, indent=2) + "\n")
        return tensors_path

    stems = derived_paths(ckpt, sampler.name, record["checkpoint_sha256"])
    return save_derived(stems, f"{sampler.name} fit", write)


def load_saved(sampler: LatentSampler, ckpt: Path, expected: dict[str, Any]) -> Path | None:
    """Load the saved fit into `sampler` if one exists for these settings and this checkpoint;
    return where it was found."""
    for tensors_path, json_path in sampler_places(
        ckpt, sampler.name, expected["checkpoint_sha256"]
    ):
        if not (tensors_path.is_file() and json_path.is_file()):
            continue
        try:
            record = json.loads(json_path.read_text())
        except (OSError, ValueError):
            continue
        if any(record.get(key) != value for key, value in expected.items()):
            log.info(f"{json_path} was fitted with other settings or another checkpoint")
            continue
        sampler.build(int(record["latent_dim"]))
        sampler.load_state_dict(load_file(str(tensors_path)))
        return tensors_path
    return None


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
    found = load_saved(sampler, ckpt, expected)
    if found is not None:
        log.info(f"Reusing the {name} sampler saved in {found}")
        return sampler.to(module.device).eval()
    log.info(f"Fitting the {name} sampler on the training split's posterior means")
    codes = posterior_means(module, datamodule_factory(), "train")
    stats = sampler.fit(codes)
    unfinished = [k for k, v in sampler.state_dict().items() if not torch.isfinite(v).all()]
    losses = [v for v in stats.values() if isinstance(v, float) and not math.isfinite(v)]
    if unfinished or losses:  # a diverged fit draws black grids and scores nan: never kept
        what = f"{unfinished[0]} is not finite" if unfinished else f"fit: {stats}"
        raise UserError(
            f"the {name} sampler's fit diverged ({what}) and is not saved; lower "
            f"samplers.{name}.lr, or check the other samplers.{name}.* settings"
        )
    record = {
        **expected,
        "target": OmegaConf.select(sampler_cfg, "_target_"),
        "checkpoint": ckpt.name,
        "num_codes": len(codes),
        "fit": stats,
    }
    path = save_sampler(sampler, ckpt, record)
    if path is not None:
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
    found = load_saved(sampler, ckpt, expected)
    return sampler.to(module.device).eval() if found is not None else None
