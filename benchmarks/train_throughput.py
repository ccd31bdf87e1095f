"""Training throughput of vae-lit against a plain PyTorch loop and against the machine's peak.

    python benchmarks/train_throughput.py [--image-size 150] [--batch-size 64] [--rounds 3]
        [--steps 3] [--compile] [--override trainer.precision=32-true ...]

One process, one run, one JSON line on stdout (progress goes to stderr). What it measures:

- `peak_gflops` / `peak_gflops_bf16`: the best of several large square matmuls, warmed up, with the
  thread count training uses, through both CPU GEMM libraries PyTorch has (MKL and oneDNN), and of
  a wide 3x3 convolution: on AMD CPUs MKL's fp32 GEMM stays well below the FMA units' limit that
  oneDNN reaches, and oneDNN's convolutions can beat its GEMM. The peak is what the machine can
  do, not what one library does, so MFU is never flattered by a slow reference kernel.
- `gflop_per_image`: one full training step (forward, loss, backward) of the default network,
  counted by `torch.utils.flop_counter.FlopCounterMode`. MFU = gflop_per_image * img/s / peak.
- `reference_img_s`: a plain PyTorch loop a user would write: same network and optimizer (Adam,
  PyTorch defaults), NCHW, fp32, the textbook loss; `reference_bf16_img_s`: the same in autocast.
- `ours_img_s`: `VAELitModule` from the real config inside a Lightning `Trainer` with the defaults
  a user gets (callbacks, logger, precision), `ours_fp32_img_s` / `ours_bf16_img_s` with
  `trainer.precision` set. `bare_*`: the same module in a hand-written loop, so `trainer_vs_bare`
  is what Lightning costs.

Data is random uint8 images in RAM served by the project's own DataModule, so loading costs one
memory copy a batch. Every path is timed in every round, round-robin, with the peak measured
next to each, so a neighbour's load hits all of them alike; each reports its best round, and each
round times `--steps` steps after `--warmup` untimed ones. `max_round_spread` and `load_avg_1m`
say how quiet the machine was: a spread well above 1 means the ratios are not to be trusted.
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
from collections.abc import Callable
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
from torch.utils.flop_counter import FlopCounterMode

from vae_lit.data.datamodule import ImageArrayDataset, ImageDataModule
from vae_lit.models import ConvVAE
from vae_lit.train import instantiate_group
from vae_lit.trainer import build_trainer

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
PRECISIONS = {"32-true": None, "bf16-mixed": torch.bfloat16}


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


class InMemoryImages(ImageDataModule):
    """Random uint8 images in RAM: the project's batching without any decoding or disk."""

    def __init__(self, num_images: int, **kwargs):
        super().__init__(**kwargs)
        self.num_images = num_images

    def load_splits(self) -> dict[str, ImageArrayDataset]:
        shape = (self.num_images, self.channels, self.image_size, self.image_size)
        images = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
        few = np.arange(min(self.batch_size, self.num_images))
        return {
            "train": ImageArrayDataset(images),
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
    return f"{model}, {torch.get_num_threads()} threads" + (f" ({', '.join(isa)})" if isa else "")


def library_versions() -> dict[str, str]:
    """oneDNN and MKL as this torch build reports them: they decide the CPU kernels."""
    build = torch.__config__.show()
    found = {
        "onednn": re.search(r"MKL-DNN v([\d.]+)", build),
        "mkl": re.search(r"Math Kernel Library Version ([\d.]+)", build),
    }
    return {name: match.group(1) for name, match in found.items() if match}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


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


def bf16_supported(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()


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


# -- the timed paths -----------------------------------------------------------------------------
class WindowTimer(pl.Callback):
    """Wall time from the end of the last warm-up batch to the end of the last batch."""

    def __init__(self, warmup: int, device: torch.device):
        self.warmup, self.device = warmup, device
        self.start = self.stop = 0.0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if batch_idx == self.warmup - 1 or batch_idx == trainer.num_training_batches - 1:
            synchronize(self.device)
            if batch_idx == self.warmup - 1:
                self.start = time.perf_counter()
            else:
                self.stop = time.perf_counter()


def timed_loop(step: Callable, batches, warmup: int, device: torch.device) -> float:
    """Seconds for the batches after the first `warmup` ones, each run through `step`."""
    start = None
    for i, batch in enumerate(batches):
        step(batch.to(device, non_blocking=True), i)
        if i == warmup - 1:
            synchronize(device)
            start = time.perf_counter()
    synchronize(device)
    return time.perf_counter() - start


def reference_path(net_cfg, lr: float, autocast: torch.dtype | None, device: torch.device):
    """A plain PyTorch training loop over the same network: NCHW, fp32 weights, Adam defaults."""
    torch.manual_seed(0)
    net = instantiate(net_cfg).to(device)
    optimizer = torch.optim.Adam(net.parameters(), lr=lr)

    def step(batch: torch.Tensor, i: int) -> None:
        x = batch.float() / 255
        with torch.autocast(device.type, dtype=autocast or torch.float32, enabled=bool(autocast)):
            out = net(x)
            loss = textbook_loss(x, out.logits, out.mu, out.logvar)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


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
        return timer.stop - timer.start

    return run_round


# -- main ----------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image-size", type=int, default=150)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3, help="every path is timed once a round")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per path and round")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps before them")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--peak-size", type=int, default=2048, help="side of the peak matmul")
    parser.add_argument("--compile", action="store_true", help="also time model.compile=true")
    parser.add_argument(
        "--override", action="append", default=[], help="a Hydra override for our config"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")  # self.log outside a Trainer, dataloader worker hints ...
    for name in ("pytorch_lightning", "lightning_fabric", "lightning.pytorch"):
        __import__("logging").getLogger(name).setLevel("ERROR")
    root = Path(tempfile.mkdtemp(prefix="vae-lit-bench-"))
    cfg = compose_config(
        [f"data.image_size={args.image_size}", f"data.batch_size={args.batch_size}"]
        + args.override,
        root,
    )
    accelerator = str(cfg.trainer.get("accelerator", "auto"))
    use_cuda = torch.cuda.is_available() and accelerator not in ("cpu",)
    device = torch.device("cuda", 0) if use_cuda else torch.device("cpu")
    has_bf16 = bf16_supported(device)
    default_precision = str(cfg.trainer.precision)
    batch, channels = args.batch_size, int(cfg.data.channels)
    lr = float(cfg.model.optimizer.lr)

    datamodule = InMemoryImages(
        num_images=(args.warmup + args.steps) * batch,
        image_size=args.image_size,
        channels=channels,
        batch_size=batch,
        num_workers=cfg.data.get("num_workers", 0),
        on_device=bool(cfg.data.get("on_device", False)),
    )
    datamodule.setup()
    if datamodule.on_device:  # `data.on_device=true`: the uint8 images live on the accelerator
        datamodule.device_images = datamodule.move_to_device(device)
    loader = datamodule.dataloader("train", shuffle=True)

    log(f"device: {device_name(device)}; counting FLOPs")
    gflop = train_step_gflop(cfg.model.net, args.image_size, channels)

    precisions = ["32-true"] + (["bf16-mixed"] if has_bf16 else [])
    paths: dict[str, Callable[[], float]] = {}
    for precision in precisions:
        tag = "" if precision == "32-true" else "_bf16"
        dtype = PRECISIONS[precision]
        ref_step = reference_path(cfg.model.net, lr, dtype, device)
        paths[f"reference{tag}"] = lambda s=ref_step: timed_loop(
            s, iter(loader), args.warmup, device
        )
        bare_step = bare_path(cfg.model, dtype, device)
        paths[f"bare{'_fp32' if not tag else tag}"] = lambda s=bare_step: timed_loop(
            s, iter(loader), args.warmup, device
        )
        paths[f"ours{'_fp32' if not tag else tag}"] = trainer_path(
            cfg, precision, datamodule, args.warmup, device, root / precision
        )
        if args.compile:
            compiled = cfg.copy()
            with open_dict(compiled):
                compiled.model.compile = True
            paths[f"ours{'_fp32' if not tag else tag}_compile"] = trainer_path(
                compiled, precision, datamodule, args.warmup, device, root / f"c{precision}"
            )

    peak_runs: dict[str, list[float]] = {}
    dtypes = [("fp32", torch.float32)] + ([("bf16", torch.bfloat16)] if has_bf16 else [])

    def measure_peak() -> None:
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
            f"round {r + 1}/{args.rounds}: "
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
    peak_by_lib = {k: round(max(v), 1) for k, v in peak_runs.items()}
    peak = max(v for k, v in peak_by_lib.items() if k.startswith("fp32"))
    peak_bf16 = max((v for k, v in peak_by_lib.items() if k.startswith("bf16")), default=None)
    default_tag = "bf16" if default_precision.startswith("bf16") else "fp32"
    ours = img_s[f"ours_{default_tag}"]
    default_peak = peak_bf16 if default_tag == "bf16" else peak

    def mfu(rate: float, peak_gflops: float | None) -> float | None:
        return round(gflop * rate / peak_gflops, 3) if peak_gflops else None

    result = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "device": device_name(device),
        "threads": torch.get_num_threads(),
        "image_size": args.image_size,
        "batch_size": batch,
        "default_precision": default_precision,
        "peak_gflops": round(peak, 1),
        "peak_gflops_bf16": peak_bf16,
        "peak_by_library": peak_by_lib,
        "gflop_per_image": round(gflop, 4),
        "reference_img_s": round(img_s["reference"], 2),
        "reference_bf16_img_s": round(img_s["reference_bf16"], 2) if has_bf16 else None,
        "ours_img_s": round(ours, 2),
        "ours_fp32_img_s": round(img_s["ours_fp32"], 2),
        "ours_bf16_img_s": round(img_s["ours_bf16"], 2) if has_bf16 else None,
        "bare_img_s": round(img_s[f"bare_{default_tag}"], 2),
        "ours_mfu": mfu(ours, default_peak),
        "ours_fp32_mfu": mfu(img_s["ours_fp32"], peak),
        "ours_bf16_mfu": mfu(img_s["ours_bf16"], peak_bf16) if has_bf16 else None,
        "reference_mfu": mfu(img_s["reference"], peak),
        "speedup_vs_reference": round(ours / img_s["reference"], 2),
        "fp32_speedup_vs_reference": round(img_s["ours_fp32"] / img_s["reference"], 2),
        "bf16_speedup_vs_reference": (
            round(img_s["ours_bf16"] / img_s["reference"], 2) if has_bf16 else None
        ),
        "trainer_vs_bare": round(ours / img_s[f"bare_{default_tag}"], 3),
        "trainer_vs_bare_by_precision": {
            tag: round(img_s[f"ours_{tag}"] / img_s[f"bare_{tag}"], 3)
            for tag in ("fp32", "bf16")
            if f"ours_{tag}" in img_s
        },
        "compile_img_s": {
            name: round(v, 2) for name, v in img_s.items() if name.endswith("_compile")
        },
        "per_round_img_s": {k: [round(x, 1) for x in v] for k, v in per_round.items()},
        "rounds": args.rounds,
        "max_round_spread": round(
            spread, 2
        ),  # slowest vs fastest round of one path; ~1 when quiet
        "load_avg_1m": [round(load_start, 2), round(os.getloadavg()[0], 2)],
        "steps_per_round": args.steps,
        "overrides": args.override,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "pytorch_lightning": pl.__version__,
            **library_versions(),
        },
    }
    shutil.rmtree(root, ignore_errors=True)  # checkpoints, logs and W&B files of the timed runs
    return result


if __name__ == "__main__":
    # Progress bars, model summaries and loggers write to stdout: send all of it to stderr, so
    # stdout carries the one JSON line.
    sys.stdout.flush()
    json_out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    outcome = main()
    sys.stdout.flush()
    json_out.write(json.dumps(outcome) + "\n")
    json_out.flush()
