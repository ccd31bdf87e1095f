"""Activation checkpointing of the hierarchical VAE (`model.net.checkpoint_blocks`): the memory and
time of one training pass (forward, loss, backward) with it off and on.

    python benchmarks/hvae_checkpointing.py [--experiment hvae_large] [--image-size 64]
        [--batch-size 8] [--steps 3] [--device auto]

One JSON line. Each setting runs in a fresh process of its own, so one's memory cannot hide the
other's: on a GPU the peak of `torch.cuda.max_memory_allocated` over the steps, on a CPU the growth
of the process's peak resident memory (getrusage) over them, both in MB. The time is the best
step's. The network comes from the real config (`experiment=<name>` and the image size), with
random images; the weights are the initial ones, which cost the same memory and time as trained.
"""

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate

import vae_lit  # noqa: F401  (registers the config resolvers, as every entry point does)

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--experiment", default="hvae_large", help="hvae | hvae_large")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--one", choices=["off", "on"], help=argparse.SUPPRESS)  # a child run
    return parser.parse_args(argv)


def peak_rss_mb() -> float:
    scale = 1 if platform.system() == "Darwin" else 1024  # bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


def measure_one(args: argparse.Namespace) -> dict:
    """One setting in this process: memory and best step time of a training pass."""
    GlobalHydra.instance().clear()
    overrides = [
        f"experiment={args.experiment}",
        f"data.image_size={args.image_size}",
        f"model.net.checkpoint_blocks={args.one == 'on'}",
    ]
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    device = torch.device(
        ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    )
    module = instantiate(cfg.model).to(device).train()
    generator = torch.Generator().manual_seed(0)
    shape = (args.batch_size, cfg.data.channels, args.image_size, args.image_size)
    images = torch.rand(shape, generator=generator).to(device)
    if module.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        before = peak_rss_mb()
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        terms, _ = module.pass_terms(images, module.net)
        terms.loss.backward()
        module.net.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    if device.type == "cuda":
        memory = (torch.cuda.max_memory_allocated() - before) / 2**20
    else:
        memory = peak_rss_mb() - before
    return {"memory_mb": round(memory, 1), "step_s": round(min(times), 4), "device": str(device)}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.one:
        print(json.dumps(measure_one(args)))
        return
    results = {}
    for setting in ("off", "on"):
        child = [sys.executable, __file__, *(argv if argv is not None else sys.argv[1:])]
        done = subprocess.run([*child, "--one", setting], capture_output=True, text=True)
        if done.returncode != 0:
            sys.exit(f"the run with checkpoint_blocks {setting} failed:\n{done.stderr[-2000:]}")
        results[setting] = json.loads(done.stdout.strip().splitlines()[-1])
    off, on = results["off"], results["on"]
    print(
        json.dumps(
            {
                "benchmark": "hvae_checkpointing",
                "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "experiment": args.experiment,
                "image_size": args.image_size,
                "batch_size": args.batch_size,
                "device": off["device"],
                "threads": torch.get_num_threads(),
                "torch": torch.__version__,
                "memory_mb_off": off["memory_mb"],
                "memory_mb_on": on["memory_mb"],
                "memory_ratio_on_off": round(on["memory_mb"] / max(off["memory_mb"], 1e-9), 3),
                "step_s_off": off["step_s"],
                "step_s_on": on["step_s"],
                "time_ratio_on_off": round(on["step_s"] / off["step_s"], 3),
                "load_avg_1m": os.getloadavg()[0],
            }
        )
    )


if __name__ == "__main__":
    main()
