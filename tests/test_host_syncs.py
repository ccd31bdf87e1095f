"""A training step on the default path never waits for the device: nothing reads a value back to
the host (`.item()`, `bool(tensor)`, `.tolist()`, `.cpu()`), and nothing turns a Python number into
a tensor (a host-to-device copy), except on the steps whose metrics Lightning sends to the loggers
(every `trainer.log_every_n_steps`). On a GPU, `torch.cuda.set_sync_debug_mode("error")` proves
it; on a CPU, a torch function mode and a dispatch mode count every such call of a real run."""

import traceback
from pathlib import Path

import pytest
import torch
from pytorch_lightning import Callback
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from tests.conftest import TINY, compose_config
from vae_lit.callbacks.non_finite_loss import NonFiniteLossError
from vae_lit.train import train

EVERY = 4  # trainer.log_every_n_steps in these runs
STEPS = 12  # 240 images, 10% validation, 10% test: 192 training images, batches of 16
RUN = [
    *TINY,
    "data.num_images=240",
    "trainer.precision=auto",  # the default path: bf16-mixed where the hardware has it
    f"trainer.log_every_n_steps={EVERY}",
    "trainer.limit_val_batches=1",
    "test=false",
]
# Reads of a tensor's value on the host, by the name torch's function mode sees.
READS = {"item", "tolist", "numpy", "cpu", "__bool__", "__float__", "__int__", "__index__"}
NEW_FROM_PYTHON = {"tensor", "as_tensor", "scalar_tensor"}


def logging_step(step: int) -> bool:
    return (step + 1) % EVERY == 0


class StepMarker(Callback):
    """Tells the counter which training step (or other phase) the calls it sees belong to."""

    phase: int | str = "setup"

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        StepMarker.phase = trainer.global_step

    def on_validation_start(self, trainer, pl_module) -> None:
        StepMarker.phase = "validation"

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        StepMarker.phase = "epoch end"


class HostTraffic(TorchFunctionMode):
    """Every host read or tensor-from-a-Python-number, with the phase and the calling lines."""

    def __init__(self):
        super().__init__()
        self.calls: list[tuple[int | str, str, str]] = []

    def record(self, what: str) -> None:
        frames = traceback.extract_stack()[:-3]
        ours = [f for f in frames if "/torch/" not in f.filename and f.filename != __file__][-4:]
        where = " <- ".join(f"{Path(f.filename).name}:{f.lineno}" for f in reversed(ours))
        self.calls.append((StepMarker.phase, what, where))

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        kwargs = kwargs or {}
        if name in READS:  # (not `.to(device)`: on a CPU run the device is the host)
            self.record(name)
        elif name in NEW_FROM_PYTHON and args and isinstance(args[0], (bool, int, float)):
            self.record(f"{name}({type(args[0]).__name__})")
        return func(*args, **kwargs)


class ScalarReads(TorchDispatchMode):
    """`.item()` as C++ calls it too (e.g. `if tensor:` inside torch), below the function mode."""

    def __init__(self, traffic: HostTraffic):
        super().__init__()
        self.traffic = traffic

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            self.traffic.record("_local_scalar_dense")
        return func(*args, **(kwargs or {}))


def marker_override() -> str:
    return f"+callbacks.step_marker._target_={__name__}.{StepMarker.__name__}"


def test_training_steps_read_nothing_back_between_logging_steps(tmp_path: Path):
    """The default callbacks, logger and precision, 12 steps; step 0 is left out (Lightning makes
    its metric accumulators there, once per epoch)."""
    traffic = HostTraffic()
    with traffic, ScalarReads(traffic):
        train(compose_config(tmp_path, [*RUN, marker_override()]))
    steps = {phase for phase, _, _ in traffic.calls if isinstance(phase, int)}
    assert {3, 7, 11} <= steps, "the counter missed Lightning's own reads when it logs"
    quiet = [
        f"step {phase}: {what} at {where}"
        for phase, what, where in traffic.calls
        if isinstance(phase, int) and phase > 0 and not logging_step(phase)
    ]
    assert not quiet, "host syncs in training steps:\n" + "\n".join(sorted(set(quiet)))
    assert max(steps) == STEPS - 1


class SyncGuard(Callback):
    """Turns CUDA's sync debug mode to "error" for a training step that is not a logging step,
    from its start until the end of every callback's `on_train_batch_end`: the data, forward,
    backward, optimizer step, logging calls and callbacks of that step."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        step = trainer.global_step
        if step > 0 and not logging_step(step):
            torch.cuda.set_sync_debug_mode("error")
            SyncGuard.guarded.append(step)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        torch.cuda.set_sync_debug_mode("default")

    guarded: list[int] = []


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (sync debug mode)")
def test_no_cuda_synchronisation_in_a_training_step(tmp_path: Path):
    SyncGuard.guarded = []
    overrides = [
        *RUN,
        "trainer=default",  # TINY asks for trainer=cpu
        "trainer.gpus=1",
        "data.on_device=true",
        "trainer.precision=auto",
        f"+callbacks.zz_sync_guard._target_={__name__}.{SyncGuard.__name__}",  # the last one
    ]
    try:
        train(compose_config(tmp_path, overrides))
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert SyncGuard.guarded == [s for s in range(1, STEPS) if not logging_step(s)]


def test_a_non_finite_loss_found_late_never_reaches_a_checkpoint(tmp_path: Path):
    """`stop` looks at the losses every log_every_n_steps steps, but also before every
    checkpoint: here one is saved after every step, and the run is told to look only every 50."""
    overrides = [
        *TINY,
        "trainer.max_epochs=3",
        "trainer.log_every_n_steps=50",
        "+callbacks.model_checkpoint.every_n_train_steps=1",
        "test=false",
        # the learning rate jumps 1e9-fold after the first epoch: the next steps blow up
        "model.scheduler={_target_:torch.optim.lr_scheduler.ExponentialLR,_partial_:true,"
        "gamma:1e9}",
    ]
    with pytest.raises(NonFiniteLossError) as failure:
        train(compose_config(tmp_path, overrides))
    step = int(str(failure.value).split("at step ")[1].split()[0])
    named = str(failure.value).split("Last good checkpoint: ")[1].split(". ")[0]
    checkpoint = Path(named)  # the newest: here the per-step epoch_NNN.ckpt
    assert checkpoint.parent == tmp_path / "checkpoints" and checkpoint.is_file()
    saved = torch.load(checkpoint, weights_only=True)
    assert saved["global_step"] <= step
    assert all(torch.isfinite(w).all() for w in saved["state_dict"].values())
