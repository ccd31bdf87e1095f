"""Training throughput of vae-lit against a plain PyTorch loop, the machine's peak and a roofline.

    python benchmarks/train_throughput.py [--image-size 150] [--batch-sizes 64 ...] [--rounds N]
        [--steps N] [--warmup N] [--compile [MODE ...]] [--override trainer.precision=32-true ...]

One process, one run, one JSON line on stdout per batch size (progress goes to stderr). What it
measures:

- `peak_gflops` / `peak_gflops_bf16` (`_fp16` on GPUs without bf16): on a CPU, the best of several
  large square matmuls through both GEMM libraries PyTorch has (MKL and oneDNN) and of a wide 3x3
  convolution, warmed up, with the thread count training uses, measured next to every path (what
  the machine can do, not what one library does). On a GPU, the vendor's dense (no sparsity) peak,
  hard-coded by device name (`GPU_PEAKS`; Lightning's table lacks the H200), measured only for a
  GPU not in the table. fp32 MFU on Ampere and later is against the TF32 peak: cuDNN runs fp32
  convolutions in TF32 by default.
- `gflop_per_image`: one full training step (forward, loss, backward) of the default network,
  counted by `torch.utils.flop_counter.FlopCounterMode`. MFU = gflop_per_image * img/s / peak.
- `roofline_img_s`: the rate if every op of one eager training step (forward, loss, backward,
  optimizer, at this batch size and the default precision) took max(its FLOPs / peak, its bytes /
  memory bandwidth), each op reading its inputs from and writing its outputs to memory
  (`StepCost`). Bandwidth: the vendor's HBM figure on a GPU, the best large copy on a CPU
  (`bandwidth_gb_s`). `roofline_fraction` = ours / roofline, the headline figure on CPU as on GPU
  (MFU says little for a network bound by memory). A compiled step fuses ops and moves fewer bytes,
  so it can pass this eager roofline. On a CPU, `roofline_by_op` checks the estimate against a
  profile (torch.profiler) of one eager step: the six costliest ops, measured beside their roofline
  seconds, which shows where the gap is.
- `reference_img_s`: a plain PyTorch loop a user would write: same network (with the seed's plain
  output layer, not our fused one) and optimizer (Adam, PyTorch defaults), NCHW, fp32, the textbook
  loss, data where ours is (`data.on_device`), host memory as glibc's malloc gives it;
  `reference_bf16_img_s`: the same in autocast.
- `ours_img_s`: `VAELitModule` from the real config inside a Lightning `Trainer` with the defaults
  a user gets (callbacks, `host_memory` among them, logger, `precision: auto`), `ours_fp32_img_s` /
  `ours_bf16_img_s` with `trainer.precision` set. `bare_*`: the same module in a hand-written loop
  (with host memory kept as the `host_memory` callback keeps it), so `trainer_vs_bare` is what
  Lightning costs. With `--compile`, `ours_<precision>_compile[_<mode>]` add
  `model.compile=<mode>` (default precision only). On a GPU, `ours_<precision>_fused_output`
  also runs the decoder's fused output layer (`vae_lit.networks.upsample_conv`, on by default on
  CPU only), to decide whether it should be the default there too.

Data is random uint8 images served by the project's own DataModule (a pool of 512 images indexed
round-robin), so loading costs one memory copy a batch; on a GPU they live on the device
(`data.on_device=true`) unless an override says otherwise. Every path is timed in every round,
round-robin, each round timing `--steps` steps after `--warmup` untimed ones (CUDA events on a GPU:
defaults 100 and 10), and reports its best round. `max_round_spread` and `load_avg_1m` say how
quiet the machine was: a spread well above 1 means the ratios are not to be trusted. On a GPU
every batch size of `--batch-sizes` (default 64, 256, 1024) gets its own entry in `by_batch`; the
top-level keys are the first batch size's. With several batch sizes, each one's line is printed as
soon as it is measured (so a timeout loses only the unfinished one), then the combined line.
`torch.backends.cudnn.benchmark` is set once at startup, so every path runs alike.
"""

import argparse
import json
import os
import platform
import re
import resource
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, open_dict
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.flop_counter import FlopCounterMode, flop_registry

import vae_lit.networks.upsample_conv as output_layer
from vae_lit.callbacks.host_memory import freed_host_memory_kept
from vae_lit.data.datamodule import ImageArrayDataset, ImageDataModule
from vae_lit.networks import ConvVAE
from vae_lit.runs.trainer import auto_precision, build_trainer, instantiate_group, map_gpus

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
AUTOCAST = {"32-true": None, "bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}
TAGS = {"32-true": "fp32", "bf16-mixed": "bf16", "16-mixed": "fp16"}
POOL = 512  # distinct images; a long run indexes them round-robin

# Dense (no sparsity) peaks in TFLOP/s and memory bandwidth in GB/s, from the vendors' data sheets,
# matched against torch.cuda.get_device_name() in this order (the first substring found wins).
# bf16 None: no bf16 tensor cores (16-mixed runs fp16); tf32 None: no TF32.
GPU_PEAKS = [
    # name, bf16, fp16, tf32, fp32, GB/s
    ("H200 NVL", 835.5, 835.5, 417.8, 60.0, 4800),
    ("H200", 989.4, 989.4, 494.7, 66.9, 4800),
    ("H100 PCIe", 756.5, 756.5, 378.0, 51.2, 2000),
    ("H100 NVL", 835.5, 835.5, 417.8, 60.0, 3900),
    ("H100", 989.4, 989.4, 494.7, 66.9, 3350),  # SXM5
    ("A100-SXM4-80GB", 312.0, 312.0, 156.0, 19.5, 2039),
    ("A100 80GB PCIe", 312.0, 312.0, 156.0, 19.5, 1935),
    ("A100", 312.0, 312.0, 156.0, 19.5, 1555),  # 40 GB
    ("L40S", 362.1, 362.1, 183.0, 91.6, 864),
    ("L40", 181.0, 181.0, 90.5, 90.5, 864),
    ("L4", 121.0, 121.0, 60.0, 30.3, 300),
    ("T4", None, 65.0, None, 8.1, 320),
    ("V100S", None, 130.0, None, 16.4, 1134),
    ("V100-PCIE", None, 112.0, None, 14.0, 900),
    ("V100", None, 125.0, None, 15.7, 900),  # SXM2
]


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


class InMemoryImages(ImageDataModule):
    """Random uint8 images in RAM: the project's batching without any decoding or disk. A pool of
    at most `POOL` distinct images serves `num_images` training images round-robin."""

    def __init__(self, num_images: int, **kwargs):
        super().__init__(**kwargs)
        self.num_images = num_images

    def load_splits(self) -> dict[str, ImageArrayDataset]:
        pool = min(self.num_images, POOL)
        shape = (pool, self.channels, self.image_size, self.image_size)
        images = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
        few = np.arange(min(self.batch_size, pool))
        return {
            "train": ImageArrayDataset(images, np.arange(self.num_images) % pool),
            "val": ImageArrayDataset(images, few),
            "test": ImageArrayDataset(images, few),
        }


def compose_config(overrides: list[str], output_dir: Path) -> DictConfig:
    """The config `python -m vae_lit.train <overrides>` would run, writing into `output_dir`."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(output_dir)
    HydraConfig().set_config(cfg)
    with open_dict(cfg):
        del cfg.hydra
    return cfg


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model, flags = platform.processor() or "cpu", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    isa = [f for f in ("avx512f", "avx512_bf16", "amx_bf16") if f in flags]
    threads = torch.get_num_threads()
    name = f"{model}, {threads} thread" + ("s" if threads != 1 else "")
    return name + (f" ({', '.join(isa)})" if isa else "")


def library_versions() -> dict[str, str]:
    """oneDNN and MKL as this torch build reports them (the CPU kernels), cuDNN on a GPU."""
    build = torch.__config__.show()
    found = {
        "onednn": re.search(r"MKL-DNN v([\d.]+)", build),
        "mkl": re.search(r"Math Kernel Library Version ([\d.]+)", build),
    }
    versions = {name: match.group(1) for name, match in found.items() if match}
    if torch.cuda.is_available():
        versions |= {"cuda": torch.version.cuda, "cudnn": str(torch.backends.cudnn.version())}
    return versions


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Clock:
    """Seconds between `start()` and `stop()`: CUDA events on a GPU (no sync until read), wall
    time on a CPU."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.begin = self.end = None

    def mark(self):
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def start(self) -> None:
        self.begin = self.mark()

    def stop(self) -> None:
        self.end = self.mark()

    def seconds(self) -> float:
        if self.cuda:
            self.end.synchronize()
            return self.begin.elapsed_time(self.end) / 1e3
        return self.end - self.begin


# -- the machine's peak --------------------------------------------------------------------------
def dense_gflops(dtype: torch.dtype, device: torch.device, n: int, reps: int) -> dict[str, float]:
    """Best GFLOP/s of each dense kernel after a warm-up: an n x n x n matmul through each GEMM
    library, and a wide 3x3 convolution (the model's own kind of kernel, which can beat GEMM)."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    kernels = {"mm": (lambda: torch.mm(a, b), 2 * n**3)}
    if device.type == "cpu" and torch.backends.mkldnn.is_available():
        a_dnn, b_dnn = a.to_mkldnn(), b.to_mkldnn()  # oneDNN's own GEMM (MKL serves fp32 mm)
        kernels["onednn"] = (lambda: torch._C._nn.mkldnn_linear(a_dnn, b_dnn), 2 * n**3)
    x = torch.randn(8, 256, 32, 32, device=device).to(dtype)
    w = torch.randn(256, 256, 3, 3, device=device).to(dtype)
    x, w = (t.contiguous(memory_format=torch.channels_last) for t in (x, w))
    kernels["conv3x3"] = (lambda: F.conv2d(x, w, padding=1), 2 * 8 * 256 * 32 * 32 * 256 * 9)
    best = {}
    for name, (kernel, flops) in kernels.items():
        kernel()
        synchronize(device)
        seconds = []
        for _ in range(reps):
            start = time.perf_counter()
            kernel()
            synchronize(device)
            seconds.append(time.perf_counter() - start)
        best[name] = flops / min(seconds) / 1e9
    return best


def copy_bandwidth_gb_s(device: torch.device, megabytes: int = 256, reps: int = 5) -> float:
    """Best rate of copying a large tensor (read + write), in GB/s: a CPU's usable bandwidth."""
    src = torch.empty(megabytes * 2**20, dtype=torch.uint8, device=device).fill_(1)
    dst = torch.empty_like(src)
    dst.copy_(src)
    synchronize(device)
    seconds = []
    for _ in range(reps):
        start = time.perf_counter()
        dst.copy_(src)
        synchronize(device)
        seconds.append(time.perf_counter() - start)
    return 2 * src.numel() / min(seconds) / 1e9


def gpu_peaks(device: torch.device) -> dict[str, float | None] | None:
    """The data-sheet row of this GPU (TFLOP/s, GB/s), or None when it is not in the table."""
    name = torch.cuda.get_device_name(device)
    for key, bf16, fp16, tf32, fp32, bandwidth in GPU_PEAKS:
        if key in name:
            return {"bf16": bf16, "fp16": fp16, "tf32": tf32, "fp32": fp32, "gb_s": bandwidth}
    return None


# -- model cost ----------------------------------------------------------------------------------
def textbook_loss(x: torch.Tensor, logits: torch.Tensor, mu, logvar) -> torch.Tensor:
    """Negative ELBO as tutorials write it: BCE summed per image + analytic KL, batch mean."""
    n = x.shape[0]
    recon = F.binary_cross_entropy_with_logits(logits, x, reduction="sum") / n
    kl = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp()) / n
    return recon + kl


def train_step_gflop(net_cfg: DictConfig, image_size: int, channels: int) -> float:
    """FLOPs of forward + loss + backward for one image of the default network, in GFLOP."""
    net: ConvVAE = instantiate(net_cfg)
    x = torch.rand(2, channels, image_size, image_size)
    with FlopCounterMode(display=False) as counter:
        out = net(x)
        textbook_loss(x, out.logits, out.mu, out.logvar).backward()
    return counter.get_total_flops() / 2 / 1e9


class StepCost(TorchDispatchMode):
    """FLOPs and bytes of every op one eager step runs: each op reads its inputs from memory and
    writes its outputs there (views and allocations move nothing), the eager roofline's model."""

    FREE = ("empty", "empty_like", "empty_strided", "new_empty", "_local_scalar_dense", "detach")

    def __init__(self):
        super().__init__()
        self.ops: list[tuple[str, int, int]] = []  # (op, flops, bytes)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        packet = func._overloadpacket
        if func.is_view or packet.__name__ in self.FREE:
            return out
        inputs = [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        outputs = [t for t in tree_leaves(out) if isinstance(t, torch.Tensor)]
        if out is None and packet.__name__.endswith("_"):  # in place, e.g. the fused Adam
            outputs = [t for t in tree_leaves(args[0]) if isinstance(t, torch.Tensor)]
        moved = sum(t.numel() * t.element_size() for t in inputs + outputs)
        flops = (
            flop_registry[packet](*args, **kwargs, out_val=out) if packet in flop_registry else 0
        )
        self.ops.append((packet.__name__, int(flops), int(moved)))
        return out


def roofline_step_seconds(
    cfg, autocast: torch.dtype | None, device, batch, peak_gflops: float, gb_s: float
) -> tuple[float, float, dict | None]:
    """(seconds, bytes, by op) of one eager training step of our module at `batch` on the
    roofline: each op takes max(FLOPs / peak, bytes / bandwidth). By op (CPU only): the six ops
    that took longest in a profiled step (with host memory as a fit keeps it), {op: {measured_s,
    roofline_s}}; an op's measured time includes the kernels it calls (`convolution` runs
    `mkldnn_convolution`)."""
    model_cfg = cfg.model
    step = bare_path(model_cfg, autocast, device)
    step(batch, 0)  # optimizer state exists from here on, as in a long run
    cost = StepCost()
    with cost:
        step(batch, 1)
    synchronize(device)
    roofline: dict[str, float] = {}
    for op, flops, moved in cost.ops:
        seconds = max(flops / (peak_gflops * 1e9), moved / (gb_s * 1e9))
        roofline[op] = roofline.get(op, 0.0) + seconds
    by_op = None
    if device.type == "cpu":
        with host_memory_as_fitted(cfg):
            step(batch, 2)  # the heap settles, as in a run's first steps
            with torch.profiler.profile(
                activities=[torch.profiler.ProfilerActivity.CPU]
            ) as profile:
                step(batch, 3)
        measured = {event.key: event.cpu_time_total / 1e6 for event in profile.key_averages()}
        costliest = sorted(roofline, key=lambda op: -measured.get(f"aten::{op}", 0.0))[:6]
        by_op = {
            op: {
                "measured_s": round(measured.get(f"aten::{op}", 0.0), 4),
                "roofline_s": round(roofline[op], 4),
            }
            for op in costliest
        }
    return sum(roofline.values()), sum(moved for _, _, moved in cost.ops), by_op


# -- the timed paths -----------------------------------------------------------------------------
class WindowTimer(pl.Callback):
    """Time from the end of the last warm-up batch to the end of the last batch."""

    def __init__(self, warmup: int, device: torch.device):
        self.warmup, self.clock = warmup, Clock(device)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if batch_idx == self.warmup - 1:
            self.clock.start()
        elif batch_idx == trainer.num_training_batches - 1:
            self.clock.stop()


def timed_loop(step: Callable, batches, warmup: int, device: torch.device) -> float:
    """Seconds for the batches after the first `warmup` ones, each run through `step`."""
    clock = Clock(device)
    for i, batch in enumerate(batches):
        step(batch.to(device, non_blocking=True), i)
        if i == warmup - 1:
            clock.start()
    clock.stop()
    return clock.seconds()


def timed_in(context: AbstractContextManager, *args) -> float:
    """`timed_loop(*args)` inside `context`."""
    with context:
        return timed_loop(*args)


def reference_path(net_cfg, lr: float, autocast: torch.dtype | None, device: torch.device):
    """A plain PyTorch training loop over the same network with the seed's output layer (plain
    upsample + conv, not ours fused): NCHW, fp32 weights, Adam defaults."""
    torch.manual_seed(0)
    net = instantiate(net_cfg).to(device)
    optimizer = torch.optim.Adam(net.parameters(), lr=lr)

    def step(batch: torch.Tensor, i: int) -> None:
        x = batch.float() / 255
        autocast_on = torch.autocast(
            device.type, dtype=autocast or torch.float32, enabled=bool(autocast)
        )
        with autocast_on, fused_output_layer_on(()):
            out = net(x)
            loss = textbook_loss(x, out.logits, out.mu, out.logvar)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def host_memory_as_fitted(cfg: DictConfig) -> AbstractContextManager:
    """What the `host_memory` callback does during a fit (callbacks/host_memory.py), for the
    paths outside a Trainer that run our module; the reference loop runs with glibc's defaults."""
    return (
        freed_host_memory_kept()
        if "host_memory" in (cfg.get("callbacks") or {})
        else nullcontext()
    )


def bare_path(model_cfg, autocast: torch.dtype | None, device: torch.device):
    """Our LightningModule's own training_step and optimizer in a hand-written loop."""
    torch.manual_seed(0)
    module = instantiate(model_cfg).to(device)
    optimizer = module.configure_optimizers()
    optimizer = optimizer["optimizer"] if isinstance(optimizer, dict) else optimizer

    def step(batch: torch.Tensor, i: int) -> None:
        with torch.autocast(device.type, dtype=autocast or torch.float32, enabled=bool(autocast)):
            loss = module.training_step(batch, i)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def trainer_path(cfg: DictConfig, precision: str, datamodule, warmup: int, device, root: Path):
    """Our module inside a fresh Lightning Trainer each round, with the user's callbacks/logger."""
    torch.manual_seed(0)
    module = instantiate(cfg.model)
    trainer_cfg = cfg.trainer.copy()
    with open_dict(trainer_cfg):
        trainer_cfg.precision = precision
        trainer_cfg.default_root_dir = str(root)
        trainer_cfg.max_epochs, trainer_cfg.max_steps = 1, -1  # one epoch = one timed round
        trainer_cfg.limit_val_batches, trainer_cfg.num_sanity_val_steps = 0, 0
        trainer_cfg.fast_dev_run = False

    def run_round() -> float:
        timer = WindowTimer(warmup, device)
        callbacks = [*instantiate_group(cfg.get("callbacks")), timer]
        loggers = instantiate_group(cfg.get("logger"))
        trainer = build_trainer(trainer_cfg, callbacks=callbacks, logger=loggers or False)
        trainer.fit(module, datamodule=datamodule)
        return timer.clock.seconds()

    return run_round


@contextmanager
def fused_output_layer_on(devices: tuple[str, ...]) -> Iterator[None]:
    """The decoder's fused output layer (`vae_lit.networks.upsample_conv`) on exactly `devices`."""
    saved = output_layer.FUSED_DEVICES
    output_layer.FUSED_DEVICES = devices
    try:
        yield
    finally:
        output_layer.FUSED_DEVICES = saved


def with_fused_output_layer(run: Callable[[], float], device: torch.device):
    """`run` with the decoder's fused output layer switched on for `device` too."""

    def run_fused() -> float:
        with fused_output_layer_on((*output_layer.FUSED_DEVICES, device.type)):
            return run()

    return run_fused


# -- main ----------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image-size", type=int, default=150)
    parser.add_argument(
        "--batch-sizes", type=int, nargs="+", help="default: 64 on a CPU, 64 256 1024 on a GPU"
    )
    parser.add_argument("--rounds", type=int, help="every path once a round; CPU 3, GPU 2")
    parser.add_argument("--steps", type=int, help="timed steps per path and round; CPU 3, GPU 100")
    parser.add_argument("--warmup", type=int, help="untimed steps before them; CPU 1, GPU 10")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--peak-size", type=int, default=2048, help="side of the peak matmul")
    parser.add_argument(
        "--compile",
        nargs="*",
        metavar="MODE",
        help="also time model.compile=MODE (none given: default), at the default precision",
    )
    parser.add_argument(
        "--override", action="append", default=[], help="a Hydra override for our config"
    )
    return parser.parse_args(argv)


def measure_batch(args, device: torch.device, batch: int, root: Path, peaks: dict | None) -> dict:
    """Every path at one batch size: the result dict (and `per_round_img_s`, for the spread)."""
    overrides = [f"data.image_size={args.image_size}", f"data.batch_size={batch}"]
    if device.type == "cuda" and not any(o.startswith("data.on_device") for o in args.override):
        overrides.append("data.on_device=true")
    cfg = compose_config(overrides + args.override, root)
    default_precision = str(map_gpus(cfg.trainer).precision)  # `auto` resolved as train.py does
    low = auto_precision("cuda" if device.type == "cuda" else "cpu", 1)[0]
    precisions = ["32-true"] + ([low] if low != "32-true" else [])
    if default_precision not in precisions:
        precisions.append(default_precision)
    default_tag = TAGS[default_precision]
    channels, lr = int(cfg.data.channels), float(cfg.model.optimizer.lr)

    datamodule = InMemoryImages(
        num_images=(args.warmup + args.steps) * batch,
        image_size=args.image_size,
        channels=channels,
        batch_size=batch,
        num_workers=cfg.data.get("num_workers", 0),
        on_device=cfg.data.get("on_device", "auto"),  # auto is decided (False) in setup()
    )
    datamodule.setup()
    if datamodule.on_device:  # `data.on_device=true`: the uint8 images live on the accelerator
        datamodule.device_images = datamodule.move_to_device(device)
    loader = datamodule.dataloader("train", shuffle=True)

    log(f"device: {device_name(device)}; batch {batch}; counting FLOPs")
    gflop = train_step_gflop(cfg.model.net, args.image_size, channels)

    paths: dict[str, Callable[[], float]] = {}
    for precision in precisions:
        tag, dtype = TAGS[precision], AUTOCAST[precision]
        suffix = "" if tag == "fp32" else f"_{tag}"
        ref_step = reference_path(cfg.model.net, lr, dtype, device)
        paths[f"reference{suffix}"] = lambda s=ref_step: timed_loop(
            s, iter(loader), args.warmup, device
        )
        bare_step = bare_path(cfg.model, dtype, device)
        paths[f"bare_{tag}"] = lambda s=bare_step: timed_in(
            host_memory_as_fitted(cfg), s, iter(loader), args.warmup, device
        )
        paths[f"ours_{tag}"] = trainer_path(
            cfg, precision, datamodule, args.warmup, device, root / precision
        )
        if device.type not in output_layer.FUSED_DEVICES and dtype is not None:
            paths[f"ours_{tag}_fused_output"] = with_fused_output_layer(
                trainer_path(cfg, precision, datamodule, args.warmup, device, root / "f"), device
            )
        for mode in args.compile if precision == default_precision else []:
            compiled = cfg.copy()
            with open_dict(compiled):
                compiled.model.compile = mode
            name = f"ours_{tag}_compile" + ("" if mode == "default" else f"_{mode}")
            paths[name] = trainer_path(
                compiled, precision, datamodule, args.warmup, device, root / f"c{mode}"
            )

    peak_runs: dict[str, list[float]] = {}
    dtypes = [("fp32", torch.float32)] + [
        (TAGS[p], AUTOCAST[p]) for p in precisions if AUTOCAST[p] is not None
    ]

    def measure_peak() -> None:
        if peaks is not None:  # a GPU from the table: its data sheet
            return
        for dtype_name, dtype in dtypes:
            for lib, gflops in dense_gflops(dtype, device, args.peak_size, reps=3).items():
                peak_runs.setdefault(f"{dtype_name}_{lib}", []).append(gflops)

    # The peak is measured next to every path, so that a quiet moment which flatters a path's best
    # round is also a quiet moment for the peak: a best-of ratio never mixes quiet and busy.
    load_start = os.getloadavg()[0]
    per_round: dict[str, list[float]] = {name: [] for name in paths}
    for r in range(args.rounds):
        for name, run in paths.items():
            measure_peak()
            per_round[name].append(batch * args.steps / run())
        log(
            f"batch {batch}, round {r + 1}/{args.rounds}: "
            + ", ".join(f"{k} {v[-1]:.1f}" for k, v in per_round.items())
        )
    measure_peak()
    spread = max(max(v) / min(v) for v in per_round.values())
    if spread > 1.25:
        log(
            f"timings varied {spread:.2f}x between rounds: something else used the "
            f"{device.type.upper()}; ratios are unreliable, re-run on a quiet machine"
        )

    img_s = {name: max(values) for name, values in per_round.items()}
    if peaks is not None:
        fp32_peak = 1e3 * (
            peaks["tf32"] if torch.backends.cudnn.allow_tf32 and peaks["tf32"] else peaks["fp32"]
        )
        peak_by_lib = {"fp32": fp32_peak} | {
            t: 1e3 * peaks[t] for t in ("bf16", "fp16") if t in dict(dtypes) and peaks[t]
        }
        bandwidth = float(peaks["gb_s"])
    else:
        peak_by_lib = {k: round(max(v), 1) for k, v in peak_runs.items()}
        bandwidth = copy_bandwidth_gb_s(device)

    def peak_of(tag: str) -> float | None:
        return max((v for k, v in peak_by_lib.items() if k.split("_")[0] == tag), default=None)

    ours = img_s[f"ours_{default_tag}"]
    default_peak = peak_of(default_tag)

    def mfu(rate: float, peak_gflops: float | None) -> float | None:
        return round(gflop * rate / peak_gflops, 3) if peak_gflops else None

    one_batch = next(iter(loader)).to(device)
    roofline_s, step_bytes, roofline_by_op = roofline_step_seconds(
        cfg, AUTOCAST[default_precision], device, one_batch, default_peak, bandwidth
    )
    low_tag = TAGS[low]
    result = {
        "batch_size": batch,
        "default_precision": default_precision,
        "peak_gflops": round(peak_of("fp32"), 1),
        f"peak_gflops_{low_tag}": round(peak_of(low_tag), 1) if low_tag != "fp32" else None,
        "peak_by_library": peak_by_lib,
        "bandwidth_gb_s": round(bandwidth, 1),
        "gflop_per_image": round(gflop, 4),
        "mbytes_per_image": round(step_bytes / batch / 2**20, 2),
        "reference_img_s": round(img_s["reference"], 2),
        **{
            f"reference_{t}_img_s": round(img_s[f"reference_{t}"], 2)
            for t in (low_tag,)
            if f"reference_{t}" in img_s
        },
        "ours_img_s": round(ours, 2),
        **{
            f"ours_{t}_img_s": round(img_s[f"ours_{t}"], 2)
            for t in ("fp32", low_tag)
            if f"ours_{t}" in img_s
        },
        "bare_img_s": round(img_s[f"bare_{default_tag}"], 2),
        "ours_mfu": mfu(ours, default_peak),
        **{
            f"ours_{t}_mfu": mfu(img_s[f"ours_{t}"], peak_of(t))
            for t in ("fp32", low_tag)
            if f"ours_{t}" in img_s
        },
        "reference_mfu": mfu(img_s["reference"], peak_of("fp32")),
        "roofline_img_s": round(batch / roofline_s, 2),
        "roofline_fraction": round(ours * roofline_s / batch, 3),
        "roofline_by_op": roofline_by_op,
        "speedup_vs_reference": round(ours / img_s["reference"], 2),
        **{
            f"{t}_speedup_vs_reference": round(img_s[f"ours_{t}"] / img_s["reference"], 2)
            for t in ("fp32", low_tag)
            if f"ours_{t}" in img_s
        },
        "trainer_vs_bare": round(ours / img_s[f"bare_{default_tag}"], 3),
        "trainer_vs_bare_by_precision": {
            t: round(img_s[f"ours_{t}"] / img_s[f"bare_{t}"], 3)
            for t in ("fp32", low_tag)
            if f"ours_{t}" in img_s
        },
        "compile_img_s": {k: round(v, 2) for k, v in img_s.items() if "_compile" in k},
        "fused_output_img_s": {k: round(v, 2) for k, v in img_s.items() if "_fused_output" in k},
        "per_round_img_s": {k: [round(x, 1) for x in v] for k, v in per_round.items()},
        "max_round_spread": round(spread, 2),  # slowest vs fastest round of one path; ~1: quiet
        "load_avg_1m": [round(load_start, 2), round(os.getloadavg()[0], 2)],
    }
    if device.type == "cuda":
        result["peak_memory_gb"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    return result


def main(argv: list[str] | None = None, emit: Callable[[dict], None] | None = None) -> dict:
    """The result of the first batch size (with `by_batch`); `emit` gets each batch size's line
    as soon as it is measured, so a run cut short by a timeout keeps what it finished."""
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    # once, before any path: cuDNN picks its fastest algorithm per shape for every path alike
    # (Lightning's Trainer(benchmark=True), what train.py sets, would switch it on only for ours)
    torch.backends.cudnn.benchmark = True
    warnings.filterwarnings("ignore")  # self.log outside a Trainer, dataloader worker hints ...
    for name in ("pytorch_lightning", "lightning_fabric", "lightning.pytorch", "vae_lit"):
        __import__("logging").getLogger(name).setLevel("ERROR")
    root = Path(tempfile.mkdtemp(prefix="vae-lit-bench-"))
    probe = compose_config(args.override, root)
    use_cuda = torch.cuda.is_available() and str(probe.trainer.get("accelerator")) != "cpu"
    device = torch.device("cuda", 0) if use_cuda else torch.device("cpu")
    gpu = device.type == "cuda"
    args.batch_sizes = args.batch_sizes or ([64, 256, 1024] if gpu else [64])
    args.rounds = args.rounds or (2 if gpu else 3)
    args.steps = args.steps or (100 if gpu else 3)
    args.warmup = max(1, args.warmup or (10 if gpu else 1))
    args.compile = None if args.compile is None else (args.compile or ["default"])
    args.compile = args.compile or []
    peaks = gpu_peaks(device) if gpu else None

    def line(measured: dict, by_batch: dict | None = None) -> dict:
        return {
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "device": device_name(device),
            "threads": torch.get_num_threads(),
            "image_size": args.image_size,
            **measured,
            "by_batch": by_batch,
            "peak_source": "data sheet"
            if peaks
            else ("measured" if not gpu else "measured (GPU not in GPU_PEAKS)"),
            "rounds": args.rounds,
            "steps_per_round": args.steps,
            "warmup_steps": args.warmup,
            "overrides": args.override,
            "compile_modes": args.compile,
            "cudnn_benchmark": torch.backends.cudnn.benchmark,
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
            "versions": {
                "python": platform.python_version(),
                "torch": torch.__version__,
                "pytorch_lightning": pl.__version__,
                **library_versions(),
            },
        }

    by_batch = {}
    for batch in args.batch_sizes:
        try:
            by_batch[str(batch)] = measure_batch(args, device, batch, root / str(batch), peaks)
        except torch.OutOfMemoryError:
            by_batch[str(batch)] = {"batch_size": batch, "error": "out of memory"}
            torch.cuda.empty_cache()
        if emit is not None:
            emit(line(by_batch[str(batch)]))
    first = by_batch[str(args.batch_sizes[0])]
    shutil.rmtree(root, ignore_errors=True)  # checkpoints, logs and W&B files of the timed runs
    return line(first, by_batch if len(by_batch) > 1 else None)


if __name__ == "__main__":
    # Progress bars, model summaries and loggers write to stdout: send all of it to stderr, so
    # stdout carries the one JSON line.
    sys.stdout.flush()
    json_out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)

    def write(line: dict) -> None:
        sys.stdout.flush()
        json_out.write(json.dumps(line) + "\n")
        json_out.flush()

    arguments = parse_args()
    several = len(arguments.batch_sizes or []) > 1 or (
        arguments.batch_sizes is None and torch.cuda.is_available()
    )
    # several batch sizes: one line each as it finishes, then the combined line (`by_batch`)
    outcome = main(emit=write if several else None)
    write(outcome)
