"""The decoder's output layer, bilinear 2x upsampling + 3x3 conv, plain against fused.

    python benchmarks/output_layer.py [--batch-size 64] [--size 75] [--out-channels 3 10]
        [--rounds 5] [--calls N] [--threads N]

One JSON line on stdout per configuration as it finishes, then one with all. For each precision
(fp32, and bf16 autocast where the device computes it natively) and output width, forward +
backward (gradients of input, weight and bias) of:

- `plain`: `nn.Upsample(bilinear)` then `nn.Conv2d(32, out, 3, padding=1)` at full size, the seed's
  layer and what `model.net` ran before;
- `fused`: `vae_lit.networks.upsample_conv`, the same function without the upsampled map;
- `neighbour`: the decoder's previous conv (64 -> 32 at the small size), the rate the output layer
  would run at if it were an ordinary layer.

Each is timed in every round, interleaved, channels_last (a round: `--calls` calls between two CUDA
events on a GPU, default 20), and reports its best round per call in ms and in
GFLOP/s of the convolution it computes (forward + backward = 3x the forward's FLOPs), plus the
largest difference between the two outputs and weight gradients relative to their scale.
"""

import argparse
import json
import os
import platform
import sys
import time
from datetime import datetime, timezone

import torch
import torch.nn.functional as F

from vae_lit.networks.upsample_conv import upsample_conv
from vae_lit.runs.trainer import auto_precision


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--size", type=int, default=75, help="side of the layer's input")
    parser.add_argument("--in-channels", type=int, default=32)
    parser.add_argument("--out-channels", type=int, nargs="+", default=[3, 10])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--calls", type=int, help="calls timed together per round; GPU 20, CPU 1 (default)"
    )
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    return parser.parse_args(argv)


def timer(device: torch.device, calls: int):
    """A function that runs `fn` `calls` times back to back and returns the seconds per call:
    on a GPU between two CUDA events around the whole loop, so launch gaps and the events' own
    resolution (~0.5 us) are spread over many calls, not charged to one."""
    if device.type == "cuda":

        def run_cuda(fn) -> float:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(calls):
                fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1e3 / calls

        return run_cuda

    def run_cpu(fn) -> float:
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        return (time.perf_counter() - start) / calls

    return run_cpu


def measure(args, device: torch.device, dtype: torch.dtype | None, c_out: int) -> dict:
    """Best-of-rounds times of the three layers at one precision and output width."""
    n, side, c_in = args.batch_size, args.size, args.in_channels
    layout, run = torch.channels_last, timer(device, args.calls)
    torch.manual_seed(0)
    x = torch.randn(n, c_in, side, side, device=device).to(dtype or torch.float32)
    x = x.contiguous(memory_format=layout).requires_grad_()
    weight = torch.randn(c_out, c_in, 3, 3, device=device) * (2 / (9 * c_in)) ** 0.5
    weight = weight.contiguous(memory_format=layout).requires_grad_()
    bias = torch.zeros(c_out, device=device, requires_grad=True)
    x_small = torch.randn(n, 2 * c_in, side, side, device=device).to(x.dtype)
    x_small = x_small.contiguous(memory_format=layout).requires_grad_()
    w_small = torch.randn(c_in, 2 * c_in, 3, 3, device=device)
    w_small = w_small.contiguous(memory_format=layout).requires_grad_()
    big = (2 * side, 2 * side)
    layers = {
        "plain": lambda: F.conv2d(
            F.interpolate(x, size=big, mode="bilinear", align_corners=False),
            weight,
            bias,
            padding=1,
        ),
        "fused": lambda: upsample_conv(x, weight, bias),
        "neighbour": lambda: F.conv2d(x_small, w_small, padding=1),
    }
    grads = {}

    def step(name: str) -> torch.Tensor:
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=bool(dtype)):
            y = layers[name]()
        if y.shape not in grads:  # plain and fused get the same output gradient
            grads[y.shape] = torch.randn_like(y)
        y.backward(grads[y.shape])
        return y

    outputs = {}
    for name in ("plain", "fused"):  # warm-up, and the numbers compared below
        x.grad = weight.grad = None
        outputs[name] = (step(name).detach().float(), weight.grad.clone())
    step("neighbour")
    seconds = {name: [] for name in layers}
    for _ in range(args.rounds):
        for name in layers:
            seconds[name].append(run(lambda name=name: step(name)))
    flop = {
        "plain": 3 * 2 * n * (2 * side) ** 2 * c_out * c_in * 9,
        "neighbour": 3 * 2 * n * side**2 * c_in * 2 * c_in * 9,
    }
    flop["fused"] = flop["plain"]
    best = {name: min(v) for name, v in seconds.items()}
    rate = {name: flop[name] / best[name] / 1e9 for name in layers}
    (y_plain, gw_plain), (y_fused, gw_fused) = outputs["plain"], outputs["fused"]
    return {
        **{f"{name}_ms": round(best[name] * 1e3, 2) for name in layers},
        **{f"{name}_gflops": round(rate[name], 1) for name in layers},
        "fused_speedup": round(best["plain"] / best["fused"], 2),
        "fused_vs_neighbour_rate": round(rate["fused"] / rate["neighbour"], 2),
        "output_max_rel_diff": float((y_fused - y_plain).abs().max() / y_plain.abs().max()),
        "weight_grad_max_rel_diff": float(
            (gw_fused - gw_plain).abs().max() / gw_plain.abs().max()
        ),
        "max_round_spread": round(max(max(v) / min(v) for v in seconds.values()), 2),
    }


def main(argv: list[str] | None = None, emit=None) -> dict:
    """Every configuration's numbers in one dict; `emit` gets each configuration's line as soon
    as it is measured, so a run cut short keeps what it finished."""
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    args.calls = args.calls or (20 if device.type == "cuda" else 1)
    torch.backends.cudnn.benchmark = True  # once, before any layer: every one runs alike
    precision, _ = auto_precision("auto", 1)
    dtypes = {"fp32": None} | ({"bf16": torch.bfloat16} if precision == "bf16-mixed" else {})
    load_start = os.getloadavg()[0]

    def line(results: dict) -> dict:
        return {
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "threads": torch.get_num_threads(),
            "input": [args.batch_size, args.in_channels, args.size, args.size],
            "calls_per_round": args.calls,
            "cudnn_benchmark": torch.backends.cudnn.benchmark,
            "results": results,
            "load_avg_1m": [round(load_start, 2), round(os.getloadavg()[0], 2)],
            "versions": {"python": platform.python_version(), "torch": torch.__version__},
        }

    results = {}
    for tag, dtype in dtypes.items():
        for c_out in args.out_channels:
            name = f"{tag}_out{c_out}"
            results[name] = measure(args, device, dtype, c_out)
            if emit is not None:
                emit(line({name: results[name]}))
    return line(results)


if __name__ == "__main__":

    def write(line: dict) -> None:
        sys.stdout.write(json.dumps(line) + "\n")
        sys.stdout.flush()

    write(main(emit=write))  # each configuration as it finishes, then all of them
