"""Loading a trained VAE from a checkpoint file or a model folder (`python -m vae_lit.export`)
alone: the config that built it travels inside.

Nothing in such a file runs. A checkpoint is read with `torch.load(weights_only=True)` (tensors and
plain values only), a model folder is JSON and safetensors, and the embedded config is checked
against an allowlist (`vae_lit.persistence.trusted_config`) before Hydra builds anything from it.
"""

import json
import pickle
import re
import warnings
import zipfile
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning import LightningModule

from vae_lit.errors import UserError, find_user_error
from vae_lit.persistence.checkpoint_upgrade import upgrade_checkpoint
from vae_lit.persistence.file_layout import CONFIG_FILE, CONFIG_KEY, FOLDER_FORMAT, WEIGHTS_FILE
from vae_lit.persistence.trusted_config import check_config, check_resolved

CHECKED_SECTIONS = ("model", "data")  # what load_checkpoint's callers build from the config
# a VQ-VAE prior's config: its VQ-VAE's file relative to the prior's checkpoint folder
VQVAE_FROM_CHECKPOINT = "vqvae_from_checkpoint_dir"


def first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0] if lines else ''}".rstrip(": ")


def read_checkpoint(path: str | Path, map_location: str = "cpu") -> dict[str, Any]:
    """A Lightning checkpoint's dict, tensors and plain values only. Anything else, an empty,
    cut-short or foreign file included, is a one-line UserError."""
    path = Path(path)

    def refused(reason: str) -> UserError:
        return UserError(f"{path} is not a vae-lit checkpoint: {reason}")

    if path.stat().st_size == 0:
        raise refused("the file is empty")
    # torch.save writes a zip archive; a kill mid-write leaves one without its closing directory
    if not zipfile.is_zipfile(path):
        raise refused("it is not a whole PyTorch zip archive (cut short, or another kind of file)")
    try:
        with warnings.catch_warnings():  # a foreign pickle protocol warns before it is refused
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            checkpoint = torch.load(path, map_location=map_location, weights_only=True, mmap=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))
        named = f" ({found.group(1)})" if found else ""
        raise refused(
            f"it holds Python objects other than tensors and plain values{named}, and vae-lit "
            "never runs a file's code"
        ) from None
    except Exception as exc:
        raise refused(first_line(exc)) from None
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), dict):
        raise refused("it holds no Lightning state_dict")
    return checkpoint


def read_model_folder(folder: str | Path, map_location: str = "cpu") -> dict[str, Any]:
    """A model folder (config.json + model.safetensors) as a checkpoint-shaped dict."""
    folder = Path(folder)

    def refused(reason: str) -> UserError:
        return UserError(f"{folder} is not a vae-lit model folder: {reason}")

    missing = [name for name in (CONFIG_FILE, WEIGHTS_FILE) if not (folder / name).is_file()]
    if missing and (folder / "checkpoints").is_dir():  # a run dir: its checkpoints are inside
        raise refused(f"it is a run dir; pass ckpt={folder / 'checkpoints' / 'last.ckpt'}")
    if missing:
        raise refused(
            f"it has no {' and no '.join(missing)}; write one with "
            f"python -m vae_lit.export ckpt=<.ckpt> out={folder}"
        )
    try:
        config = json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise refused(f"{CONFIG_FILE} is not JSON ({first_line(exc)})") from None
    model = config.get("model") if isinstance(config, dict) else None
    if not isinstance(model, dict) or "_target_" not in model:
        raise refused(f"{CONFIG_FILE} holds no model config")
    try:
        weights = safetensors.torch.load_file(folder / WEIGHTS_FILE, device=str(map_location))
    except Exception as exc:
        raise refused(f"{WEIGHTS_FILE} is unreadable ({first_line(exc)})") from None
    for key in ("global_step", "epoch"):
        value = config.get(key)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
            raise refused(f"{CONFIG_FILE}'s {key} is {value!r}, not an integer")
    return {
        CONFIG_KEY: {section: config.get(section) for section in CHECKED_SECTIONS},
        "state_dict": weights,
        "global_step": config.get("global_step", 0),
        "epoch": config.get("epoch"),
    }


def read_any(path: str | Path, map_location: str = "cpu") -> tuple[dict[str, Any], str]:
    """A checkpoint file or a model folder as a checkpoint dict, and how to name it in messages."""
    path = Path(path)
    if path.is_dir():
        return read_model_folder(path, map_location), f"model folder {path}"
    if not path.is_file():
        raise UserError(
            f"checkpoint {path} does not exist; pass ckpt=<run dir>/checkpoints/last.ckpt"
        )
    return read_checkpoint(path, map_location), f"checkpoint {path}"


def checkpoint_step(path: str | Path) -> int:
    """The training step a checkpoint or model folder was saved at."""
    path = Path(path)
    if path.is_dir():
        config = json.loads((path / CONFIG_FILE).read_text(encoding="utf-8"))
        return int(config.get("global_step") or 0)
    return int(read_checkpoint(path).get("global_step") or 0)


def load_checkpoint(
    path: str | Path, map_location: str = "cpu", vqvae: str | None = None
) -> tuple[LightningModule, DictConfig]:
    """Return the trained module (eval mode) and the resolved run config it was trained with.

    `path` is a `.ckpt` file or a model folder. The config's `model` and `data` are checked before
    the module is built, so callers may instantiate `config.data`; the other sections (loggers,
    callbacks, trainer) are unchecked data: check them with `vae_lit.persistence.trusted_config`
    first.
    """
    checkpoint, source = read_any(path, map_location)
    if not isinstance(checkpoint.get(CONFIG_KEY), dict):
        raise UserError(
            f"{path} is not a vae-lit checkpoint: it holds no vae-lit config (was it written by "
            "vae_lit.train?)"
        )
    checkpoint = upgrade_checkpoint(checkpoint)  # older layouts (model.loss) to today's
    locate_vqvae(checkpoint[CONFIG_KEY], Path(path), vqvae)
    module, config = build_module(checkpoint, source)
    return module, config


def locate_vqvae(config: dict[str, Any], path: Path, vqvae: str | None) -> None:
    """A VQ-VAE prior's checkpoint names its VQ-VAE's file: `vqvae=<path>` when given, else the
    recorded path, else the same file relative to the prior's checkpoint (a logs/ folder that
    was moved or copied whole). Its SHA-256 is checked whichever file it is."""
    model = config.get("model")
    if not isinstance(model, dict) or "vqvae_ckpt" not in model:
        if vqvae:
            raise UserError(f"vqvae={vqvae} is for a VQ-VAE prior's checkpoint; {path} is not one")
        return
    if vqvae:
        model["vqvae_ckpt"] = str(Path(vqvae).resolve())
        return
    relative = config.get(VQVAE_FROM_CHECKPOINT)
    if Path(str(model["vqvae_ckpt"])).exists() or not isinstance(relative, str):
        return
    moved = (path.parent / relative).resolve()
    if moved.exists():
        model["vqvae_ckpt"] = str(moved)


def build_module(checkpoint: dict[str, Any], source: str) -> tuple[LightningModule, DictConfig]:
    """The module a checked checkpoint dict describes, its weights loaded, in eval mode."""
    raw = checkpoint[CONFIG_KEY]
    if not isinstance(raw.get("model"), dict):
        raise UserError(f"{source} is not a vae-lit checkpoint: its config has no model")
    check_resolved(raw, source)
    for section in CHECKED_SECTIONS:
        if raw.get(section) is not None:
            check_config(raw[section], source, section)
    try:
        config = OmegaConf.create(raw)
    except Exception as exc:  # values no config holds (a tensor, say)
        raise UserError(
            f"{source} is refused: its config is not plain data ({first_line(exc)})"
        ) from None
    try:
        module = instantiate(config.model)
    except Exception as exc:  # a value of the wrong type (`hidden_channels: "abc"`, `[64]`)
        error = find_user_error(exc)
        if error is not None:
            raise error from None
        reason = first_line(exc.__cause__ or exc)
        raise UserError(
            f"{source} is refused: its model config does not build ({reason})"
        ) from exc
    if not isinstance(module, LightningModule):
        raise UserError(f"{source} is refused: its model config builds no LightningModule")
    check_weights(checkpoint["state_dict"], module.state_dict(), source)
    try:
        module.load_state_dict(checkpoint["state_dict"])
    except RuntimeError as exc:  # missing or unexpected keys, other shapes
        reason = " ".join(str(exc).split())[:300]
        raise UserError(f"{source} does not fit the model its config builds: {reason}") from None
    # what save_pretrained / push_to_hub write as config.json (see vae_lit.persistence.pretrained)
    module._hub_mixin_config = folder_config(config, checkpoint)
    return module.eval(), config


def check_weights(weights: dict[str, Any], expected: dict[str, torch.Tensor], source: str) -> None:
    """Weights cast to integers load silently (copy_ casts them back) and NaN weights sample
    fine, then break eval after all its work: refuse both before anything runs."""
    for key, value in weights.items():
        want = expected.get(key)
        if not torch.is_tensor(value) or want is None:
            continue
        if want.is_floating_point() and not value.is_floating_point():
            raise UserError(
                f"{source} is refused: {key} is {value.dtype} where the model holds {want.dtype} "
                "(a converted or damaged file)"
            )
        if value.is_floating_point() and not torch.isfinite(value).all():
            raise UserError(
                f"{source} is refused: {key} holds NaN or infinite values; use a checkpoint "
                "saved before training diverged"
            )


def folder_config(config: DictConfig, checkpoint: dict[str, Any]) -> dict[str, Any]:
    """config.json of a model folder: the resolved model and data configs, and when saved."""
    return {
        "vae_lit_format": FOLDER_FORMAT,
        "model": OmegaConf.to_container(config.model, resolve=True),
        "data": OmegaConf.to_container(config.data, resolve=True) if config.get("data") else None,
        "global_step": int(checkpoint.get("global_step") or 0),
        "epoch": checkpoint.get("epoch"),
    }
