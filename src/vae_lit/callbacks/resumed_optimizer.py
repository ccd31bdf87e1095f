"""On resume, optimizer settings changed on the command line win over the checkpoint's.

Lightning restores the optimizer's state, learning rate included, from the checkpoint, so after a
NaN stop `model.optimizer.lr=1e-4 resume=auto` would go on with the old learning rate and diverge
at the same step. A setting that differs from the one in the checkpoint's config (what the
resumed run was started with) is written into the restored optimizer, and the log says so.
"""

import logging
import math
from typing import Any

from pytorch_lightning import Callback, LightningModule, Trainer

from vae_lit.persistence.file_layout import CONFIG_KEY

log = logging.getLogger(__name__)


def settings(optimizer_cfg: dict[str, Any] | None) -> dict[str, Any]:
    """The plain values of an optimizer config (lr, weight_decay, betas, ...)."""
    return {
        key: value
        for key, value in (optimizer_cfg or {}).items()
        if not key.startswith("_") and isinstance(value, int | float | list | tuple)
    }


def same(a: Any, b: Any) -> bool:
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, int | float) and isinstance(b, int | float):
        return math.isclose(a, b, rel_tol=1e-12, abs_tol=0.0)
    return a == b


class ConfiguredOptimizerSettings(Callback):
    def __init__(self, optimizer_cfg: dict[str, Any] | None):
        self.wanted = settings(optimizer_cfg)
        self.saved: dict[str, Any] | None = None

    def on_load_checkpoint(
        self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        run_config = checkpoint.get(CONFIG_KEY) or {}
        self.saved = settings((run_config.get("model") or {}).get("optimizer"))

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not self.saved:
            return
        changed = {
            key: value
            for key, value in self.wanted.items()
            if key in self.saved and not same(value, self.saved[key])
        }
        for key, value in changed.items():
            restored = None
            for optimizer in trainer.optimizers:
                for group in optimizer.param_groups:
                    if key not in group:
                        continue
                    restored = group[key]
                    group[key] = tuple(value) if isinstance(group[key], tuple) else value
                    if key == "lr" and "initial_lr" in group:
                        group["initial_lr"] = value
            if key == "lr":  # schedulers scale from their base rates: start those anew too
                for config in trainer.lr_scheduler_configs:
                    if hasattr(config.scheduler, "base_lrs"):
                        config.scheduler.base_lrs = [value] * len(config.scheduler.base_lrs)
            if restored is not None:
                log.info(
                    f"model.optimizer.{key}={value} from the command line replaces the resumed "
                    f"checkpoint's {restored} (it was started with {self.saved[key]})"
                )
