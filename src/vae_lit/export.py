"""A model folder anyone can load safely: `python -m vae_lit.export ckpt=<.ckpt> out=<dir>`.

Writes `model.safetensors` (weights only), `config.json` (the model's resolved config) and a
`README.md` model card, in the Hugging Face Hub's layout (see
`vae_lit.persistence.pretrained`). The card shows
the evaluation table when `eval.json` (from `python -m vae_lit.eval`) of this very checkpoint lies
next to it, and the run's sample grid of the checkpoint's epoch when it is in the run dir; both
files are copied in. `vae_lit.sample`, `vae_lit.eval`, the notebook and
`VAELitModule.from_pretrained` (a VQ-VAE's: `VQVAELitModule.from_pretrained`) load the folder, and
nothing in it can run code.
"""

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig
from safetensors import SafetensorError

from vae_lit.errors import UserError, exit_on_user_error
from vae_lit.persistence.atomic_write import atomic_path, write_text_atomic
from vae_lit.persistence.checkpoint import load_checkpoint
from vae_lit.persistence.file_layout import CONFIG_FILE, WEIGHTS_FILE
from vae_lit.persistence.pretrained import EVAL_FILE, SAMPLE_FILE, PretrainedVAE
from vae_lit.runs.config_checks import not_given, run_cli

log = logging.getLogger(__name__)


def evaluation_of(ckpt: Path, step: int) -> dict[str, Any] | None:
    """The eval.json beside `ckpt` when it scores this checkpoint's step (several checkpoints
    share a folder, and eval.json is the last one evaluated)."""
    path = (ckpt if ckpt.is_dir() else ckpt.parent) / EVAL_FILE
    if not path.is_file():
        return None
    try:
        metrics = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError):
        log.warning(f"Not using {path} in the model card: it is not JSON")
        return None
    if not isinstance(metrics, dict) or metrics.get("global_step") != step:
        log.info(f"Not using {path} in the model card: it scores another checkpoint")
        return None
    return metrics


def sample_grid_of(ckpt: Path, epoch: Any) -> Path | None:
    """The run's sample grid of the checkpoint's epoch, looked for in the checkpoint's own run dir
    (`<run>/checkpoints/x.ckpt` or `<run>/hpc_ckpt_N.ckpt`), or in a model folder."""
    if ckpt.is_dir():
        candidates = [ckpt / SAMPLE_FILE]
    else:
        name = f"sample_{epoch}.png"
        candidates = [ckpt.parent.parent / "results" / name, ckpt.parent / "results" / name]
    return next((path for path in candidates if path.is_file()), None)


def export(cfg: DictConfig) -> Path:
    """Write the model folder the config asks for; return its path."""
    for key in ("ckpt", "out"):
        if not_given(cfg, key):
            raise UserError(
                f"{key} is not set; pass ckpt=<run dir>/checkpoints/last.ckpt out=<dir>"
            )
    ckpt, out = Path(cfg.ckpt), Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"out={out} is a file; pass a folder to write the model into")
    existing = next(p for p in out.absolute().parents if p.exists())
    if not existing.is_dir():  # out=<a file>/m
        raise UserError(f"out={out}: {existing} is a file; pass a folder to write the model into")
    if not out.exists() and existing == existing.parent:  # a typo, not a request for /x
        raise UserError(
            f"out={out}: its folder {out.parent} does not exist; create it, or pass a path in an "
            "existing folder"
        )
    if out.resolve() == ckpt.resolve():
        raise UserError(f"out={out} is the folder being exported; pass another folder")
    module, _ = load_checkpoint(ckpt)
    if not isinstance(module, PretrainedVAE):
        raise UserError(
            f"{ckpt} holds a {type(module).__name__}, which has no model folder format"
        )
    config = module.pretrained_config()
    metrics = evaluation_of(ckpt, config["global_step"])
    sample = sample_grid_of(ckpt, config["epoch"])
    try:
        out.mkdir(parents=True, exist_ok=True)
        if metrics is not None:
            write_text_atomic(out / EVAL_FILE, json.dumps(metrics, indent=2) + "\n")
        if sample is not None:
            with atomic_path(out / SAMPLE_FILE) as partial:
                shutil.copyfile(sample, partial)
        module.save_pretrained(
            out,
            model_card_kwargs={
                "eval_metrics": metrics,
                "sample_image": SAMPLE_FILE if sample is not None else None,
            },
        )
    except (OSError, SafetensorError) as exc:  # a full disk, a read-only place: one line
        reason = getattr(exc, "strerror", None) or str(exc)
        raise UserError(
            f"out={out} cannot be written ({reason}); free some space there or pass another out"
        ) from exc
    extras = [name for name, found in ((EVAL_FILE, metrics), (SAMPLE_FILE, sample)) if found]
    files = ", ".join([WEIGHTS_FILE, CONFIG_FILE, "README.md", *extras])
    name = type(module).__name__
    log.info(f"Wrote {out}: {files}. Load it with {name}.from_pretrained('{out}')")
    return out


@hydra.main(version_base="1.3", config_path="../../configs", config_name="export.yaml")
def main(cfg: DictConfig) -> None:
    exit_on_user_error(lambda: export(cfg))


if __name__ == "__main__":
    run_cli(main)  # a typo in a key or a config name is one line too
