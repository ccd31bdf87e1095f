"""Building the Lightning Trainer from its config, with `trainer.gpus=N` mapped the 1.x way and
`trainer.precision=auto` resolved for the hardware at hand.

`Trainer(gpus=...)` was removed in Lightning 2.0, but users (and our own docs) still type it, so it
maps to `accelerator` + `devices`. A request for a GPU on a machine without one stops here, before
any data is read.
"""

import logging
import warnings
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning import Trainer
from pytorch_lightning.strategies.launchers import _SubprocessScriptLauncher
from pytorch_lightning.utilities import rank_zero_only

from vae_lit.errors import UserError

log = logging.getLogger(__name__)

# What every entry point that builds a Trainer (train, train_prior) keeps off the console:
# Lightning 2.6's own pytree helper builds torch's deprecated LeafSpec on every fit; not ours to
# fix, and harmless until a Lightning release that builds leaves the new way.
warnings.filterwarnings(
    "ignore",
    message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
    category=FutureWarning,
    module=r"pytorch_lightning\.utilities\._pytree",
)
# Lightning advertises its hosted logger on every run: a tip about a product, not about the run.
logging.getLogger("pytorch_lightning.utilities.rank_zero").addFilter(
    lambda record: "litlogger" not in record.getMessage()
)


def map_gpus(trainer_cfg: DictConfig, parallel_job: int | None = None) -> DictConfig:
    """A copy of the trainer config without `gpus`, its meaning moved to accelerator/devices, and
    with `precision: auto` replaced by what this machine runs fastest (logged, with the reason).
    `parallel_job`: the job's number in a sweep whose jobs run at once (joblib), which puts a
    one-GPU job on GPU number `parallel_job % GPUs` instead of every job on GPU 0."""
    cfg = OmegaConf.to_container(trainer_cfg, resolve=True)
    gpus = cfg.pop("gpus", None)
    if gpus is not None:
        if gpus == 0 or gpus == "0":
            cfg["accelerator"], cfg["devices"] = "cpu", cfg.get("devices") or 1
            if cfg["devices"] == "auto":
                cfg["devices"] = 1
        else:
            cfg["accelerator"], cfg["devices"] = "gpu", gpus
    check_accelerator(cfg.get("accelerator"), cfg.get("devices"), gpus)
    one_gpu = str(cfg.get("devices")) in ("1", "auto") and uses_cuda(cfg.get("accelerator"))
    if parallel_job is not None and one_gpu and torch.cuda.device_count() > 1:
        cfg["devices"] = [parallel_job % torch.cuda.device_count()]
        log.info(f"parallel sweep job {parallel_job} trains on GPU {cfg['devices'][0]}")
    if cfg.get("deterministic") is True and uses_cuda(cfg.get("accelerator")):
        # every network upsamples bilinearly, and that has no deterministic CUDA backward: `true`
        # would stop at the first backward; "warn" keeps every other op deterministic
        cfg["deterministic"] = "warn"
        if rank_zero_only.rank == 0:
            log.warning(
                "trainer.deterministic=true on CUDA runs as 'warn': bilinear upsampling has no "
                "deterministic CUDA backward, so runs repeat closely but not bit for bit"
            )
    if "benchmark" in cfg and cfg["benchmark"] is None:
        # cuDNN times its convolution algorithms once per shape and keeps the fastest; training
        # shapes are fixed (the training loader drops a last partial batch). Not when asked for
        # repeatable runs, whose algorithms must not depend on timings.
        cfg["benchmark"] = not cfg.get("deterministic")
    precision = str(cfg.get("precision"))
    if precision == "auto":
        cfg["precision"], why = auto_precision(cfg.get("accelerator"), cfg.get("devices"))
        if rank_zero_only.rank == 0:
            log.info(f"trainer.precision=auto chose {cfg['precision']}: {why}")
    elif precision.startswith("bf16"):  # an explicit value wins, but emulated bf16 is a trap
        best, why = auto_precision(cfg.get("accelerator"), cfg.get("devices"))
        if not best.startswith("bf16") and rank_zero_only.rank == 0:
            log.warning(
                f"trainer.precision={precision} will be emulated and slow: {why}; "
                f"trainer.precision=auto would choose {best}"
            )
    return OmegaConf.create(cfg)


def auto_precision(accelerator: Any, devices: Any) -> tuple[str, str]:
    """(precision, why) for `trainer.precision=auto`: bf16-mixed where the hardware computes bf16
    natively, fp16 with a gradient scaler on CUDA GPUs with fp16 tensor cores but no bf16 (Volta,
    Turing), fp32 elsewhere.

    `torch.cuda.is_bf16_supported()` says True on a T4 or V100, where bf16 is emulated and its
    convolutions take slow paths, so GPUs are judged by compute capability instead.
    """
    if uses_cuda(accelerator):
        name, capability = weakest_gpu(devices)
        gpu = f"{name} (compute capability {capability[0]}.{capability[1]})"
        if capability >= (8, 0):
            return "bf16-mixed", f"{gpu} has bf16 tensor cores"
        if capability < (7, 0):  # P100: no tensor cores; GTX 10xx: fp16 at 1/64 of fp32's rate
            return "32-true", f"{gpu} has no fp16 tensor cores: fp16 would not be faster"
        return "16-mixed", (
            f"{gpu} has no native bf16; fp16 with a gradient scaler, which a fused optimizer "
            "applies without a host sync"
        )
    if accelerator not in (None, "auto", "cpu"):
        return "32-true", f"no bf16 rule for accelerator={accelerator}"
    isa = cpu_bf16_isa()
    if isa:
        return "bf16-mixed", f"the CPU computes bf16 natively ({isa})"
    return "32-true", "the CPU has neither AVX512-BF16 nor AMX: bf16 would be emulated, slower"


def uses_cuda(accelerator: Any) -> bool:
    """Whether Lightning will train on CUDA: asked for, or `auto` on a machine with a GPU."""
    if accelerator in ("gpu", "cuda"):
        return True
    return accelerator in (None, "auto") and torch.cuda.is_available()


def weakest_gpu(devices: Any) -> tuple[str, tuple[int, int]]:
    """Name and compute capability of the oldest GPU training will use."""
    if isinstance(devices, str) and devices.strip().lstrip("-").isdigit():
        devices = int(devices)
    if isinstance(devices, list):
        indices = [int(d) for d in devices]
    elif isinstance(devices, str) and "," in devices:
        indices = [int(d) for d in devices.split(",") if d.strip()]
    else:
        indices = list(range(max(torch.cuda.device_count(), 1)))
        if isinstance(devices, int) and devices > 0:
            indices = indices[:devices]
    found = [(tuple(torch.cuda.get_device_capability(i)), i) for i in indices]
    capability, index = min(found)
    return torch.cuda.get_device_name(index), capability


def cpu_bf16_isa() -> str:
    """The CPU's native bf16 instructions ("AVX512-BF16", "AMX"), or "" when it has none.
    (`torch.ops.mkldnn._is_mkldnn_bf16_supported()` is True on any AVX512 CPU: oneDNN emulates.)"""
    found = []
    if getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)():
        found.append("AVX512-BF16")
    if getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)():
        found.append("AMX")
    return ", ".join(found)


def check_accelerator(accelerator: Any, devices: Any, gpus: Any = None) -> None:
    """Fail fast, in one line, when the config asks for GPUs this machine does not have."""
    if accelerator not in ("gpu", "cuda"):
        return
    asked = f"trainer.gpus={gpus}" if gpus is not None else f"trainer.accelerator={accelerator}"
    available = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if available == 0:
        raise UserError(
            f"{asked} asks for a GPU but no CUDA GPU was found; run on CPU with trainer=cpu"
        )
    wanted = (
        devices if isinstance(devices, int) else len(devices) if isinstance(devices, list) else 1
    )
    if wanted > available:
        raise UserError(
            f"{asked} asks for {wanted} GPUs but this machine has {available}; "
            f"set trainer.gpus={available} or fewer"
        )


def check_launcher(trainer: Trainer, in_multirun: bool) -> None:
    """`strategy=ddp` starts its other ranks by running this command line again; inside a Hydra
    multirun that starts a whole sweep per rank (Lightning #11300, hydra #2070). Under SLURM or
    torchrun the ranks already exist and nothing is relaunched, so that case is fine."""
    relaunches = isinstance(trainer.strategy.launcher, _SubprocessScriptLauncher)
    if in_multirun and relaunches and trainer.num_devices > 1:
        raise UserError(
            "trainer.strategy=ddp relaunches the command line and cannot run inside a Hydra "
            "multirun; use trainer.strategy=ddp_spawn for sweeps on one machine"
        )


def build_trainer(trainer_cfg: DictConfig, **kwargs: Any) -> Trainer:
    """Instantiate the Trainer; `kwargs` (callbacks, logger) go straight to its constructor."""
    return instantiate(map_gpus(trainer_cfg), **kwargs)


def instantiate_group(group: DictConfig | None) -> list[Any]:
    """Build every entry of a config group that holds several objects (callbacks, loggers)."""
    if not group:
        return []
    return [instantiate(entry) for entry in group.values() if entry and "_target_" in entry]
