"""Stop a run whose training loss went NaN or infinite, or skip such batches a few times.

Once a loss is not finite, the optimizer step makes every weight NaN, and the next checkpoint
would be worthless. Raising before any checkpoint is written keeps the last checkpoint good, and
the message says which step failed and where that checkpoint is. `action=skip` drops the batch's
update instead (all gradients set to None, so the optimizer leaves weights and moments alone; under
16-mixed set to NaN, so the gradient scaler skips the step), up to `max_skips` times, then stops.

`stop` never reads a loss back per step (a host sync that stalls an accelerator): each step's loss
is copied into a small buffer on the device, and the buffer is read in one go every
`trainer.log_every_n_steps` steps (when Lightning reads the logged metrics anyway), before
validation, at the end of an epoch or of training, and before any checkpoint is saved. `skip` must
decide before each update, so it reads every loss: one host sync per step.
"""

import logging
import math
from pathlib import Path
from typing import Any

import torch
from pytorch_lightning import Callback, LightningModule, Trainer

from vae_lit.errors import UserError

log = logging.getLogger(__name__)

ACTIONS = ("stop", "skip")


class NonFiniteLossError(UserError):
    """Training diverged. Printed as one line; a sweep records the job as failed and goes on."""


class NonFiniteLoss(Callback):
    def __init__(self, action: str = "stop", max_skips: int = 0):
        if action not in ACTIONS:
            raise UserError(
                f"callbacks.non_finite_loss.action={action!r} is unknown; "
                f"use one of: {', '.join(ACTIONS)}"
            )
        if int(max_skips) < 0:
            raise UserError(f"callbacks.non_finite_loss.max_skips={max_skips} must be >= 0")
        self.action, self.max_skips = action, int(max_skips)
        self.skipped = 0
        self._skip_this_step = False
        self._where = ""
        self._losses: torch.Tensor | None = None  # `stop`: the losses not looked at yet ...
        self._steps: list[str] = []  # ... and where each came from

    def on_train_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._where = (
            f"step {trainer.global_step} (epoch {trainer.current_epoch}, batch {batch_idx})"
        )

    def on_before_backward(self, trainer: Trainer, pl_module: LightningModule, loss: torch.Tensor):
        """`skip` must decide before the update; it costs one host sync per step."""
        self._skip_this_step = False
        if self.action != "skip" or not self._is_bad(trainer, loss):
            return
        if self.skipped >= self.max_skips:
            self._stop(trainer, loss)
        self.skipped += 1
        self._skip_this_step = True
        log.warning(
            f"training loss is {loss.item()} at {self._where}: batch skipped "
            f"({self.skipped} of at most {self.max_skips})"
        )

    def on_after_backward(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Under fp16's gradient scaler (16-mixed) the gradients of a skipped batch become NaN:
        the scaler, which raises when it finds no gradient to check, then skips the update
        itself (and lowers its scale). Done before Lightning unscales and records what it saw."""
        if not self._skip_this_step or grad_scaler(trainer) is None:
            return
        for param in pl_module.parameters():
            if param.grad is not None:
                param.grad.fill_(float("nan"))

    def on_before_optimizer_step(
        self, trainer: Trainer, pl_module: LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        if self._skip_this_step and grad_scaler(trainer) is None:
            for group in optimizer.param_groups:
                for param in group["params"]:
                    param.grad = None  # torch optimizers skip parameters without a gradient

    def on_train_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        """`stop` keeps the loss on the device and looks every `log_every_n_steps` steps."""
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if self.action != "stop" or loss is None:
            return
        every = max(1, int(trainer.log_every_n_steps))
        if (
            self._losses is None
            or len(self._losses) != every
            or self._losses.device != loss.device
        ):
            self.look(trainer)
            self._losses = torch.empty(every, dtype=torch.float32, device=loss.device)
        self._losses[len(self._steps)].copy_(loss.detach())  # device to device, no sync
        self._steps.append(self._where)
        if len(self._steps) == every:
            self.look(trainer)

    def look(self, trainer: Trainer) -> None:
        """Read the losses not looked at yet (one host sync) and stop at the first bad one."""
        if not self._steps:
            return
        losses, steps = self._losses[: len(self._steps)], self._steps
        self._steps = []
        bad = (~torch.isfinite(losses)).tolist()
        any_bad = any(bad)
        if trainer.world_size > 1:  # every rank must take the same branch, or DDP hangs
            any_bad = trainer.strategy.reduce_boolean_decision(any_bad, all=False)
        if any_bad:
            first = bad.index(True) if True in bad else 0  # bad on another rank: say the window
            self._where = steps[first]
            self._stop(trainer, losses[first])

    # Every place where the spoiled weights could be used or saved looks first. Lightning runs
    # checkpoint callbacks after all others, and `on_save_checkpoint` comes before the file is
    # written, so no checkpoint after a non-finite loss reaches the disk.
    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.look(trainer)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.look(trainer)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.look(trainer)

    def on_save_checkpoint(
        self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        self.look(trainer)

    @staticmethod
    def _is_bad(trainer: Trainer, loss: torch.Tensor) -> bool:
        bad = not bool(torch.isfinite(loss.detach()).all())
        if trainer.world_size > 1:  # every rank must take the same branch, or DDP hangs
            bad = trainer.strategy.reduce_boolean_decision(bad, all=False)
        return bad

    def _stop(self, trainer: Trainer, loss: torch.Tensor) -> None:
        skipped = f" after skipping {self.skipped} batches" if self.skipped else ""
        raise NonFiniteLossError(
            f"training loss is {loss.item()} at {self._where}{skipped}; training stopped. "
            f"Last good checkpoint: {last_good_checkpoint(trainer)}. {advice(trainer)}"
        )

    def state_dict(self) -> dict[str, Any]:
        return {"skipped": self.skipped}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.skipped = state_dict.get("skipped", 0)


def grad_scaler(trainer: Trainer) -> Any:
    """fp16's gradient scaler (16-mixed), or None (fp32, bf16)."""
    return getattr(trainer.precision_plugin, "scaler", None)


def advice(trainer: Trainer) -> str:
    """What to change: an infinite beta makes every loss infinite, whatever the learning rate."""
    objective = getattr(trainer.lightning_module, "objective", None)
    beta = getattr(getattr(objective, "kl_schedule", None), "beta", None)
    if isinstance(beta, float) and math.isinf(beta):
        return (
            "model.objective.kl_schedule.beta=inf makes every training loss infinite; give "
            "beta a finite value"
        )
    return "Lower model.optimizer.lr or set trainer.gradient_clip_val"


def last_good_checkpoint(trainer: Trainer) -> str:
    """The newest checkpoint written before the failure, or a note that there is none."""
    callbacks = trainer.checkpoint_callbacks  # the best-epoch writer and the last.ckpt writer
    paths = [getattr(c, "last_model_path", "") for c in callbacks]
    paths += [getattr(c, "best_model_path", "") for c in callbacks]
    existing = [Path(p) for p in paths if p and Path(p).is_file()]
    if not existing:
        return "none (no checkpoint was saved before it)"
    # the newest; written in the same second, last.ckpt (the same weights) is the one to name
    return str(max(existing, key=lambda p: (p.stat().st_mtime, p.name == "last.ckpt")))
