"""What bf16 rounding of the decoder's output layer costs a discrete likelihood, in bits/dim.

    python benchmarks/output_precision.py --checkpoint <run>/checkpoints/last.ckpt
        [--data-root ../shared/data/celeba_sample] [--split test] [--repeats 3]

One JSON line. A trained model's negative ELBO in bits/dim over a split, computed three times with
the same noise: in fp32 (the eval's number), under bf16 autocast with the output layer in bf16
(`model.net.fp32_output=false`, the behaviour before issue 17) and under bf16 autocast with it in
fp32 (networks/output_conv.py, the default for discrete likelihoods). The gaps to fp32 are what a
bf16 run's validation numbers, and the loss its gradients come from, are off by.
"""

import argparse
import json
import os
from datetime import datetime, timezone

import torch
from hydra.utils import instantiate
from omegaconf import open_dict

from vae_lit.model.vae_module import to_float_images
from vae_lit.networks.output_conv import OutputConv2d
from vae_lit.persistence.checkpoint import load_checkpoint


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, help="a .ckpt file or a model folder")
    parser.add_argument("--data-root", help="where the images are (default: the recorded one)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--repeats", type=int, default=3, help="passes over the split, averaged")
    return parser.parse_args(argv)


@torch.no_grad()
def bits_per_dim(module, loader, autocast: bool, fp32_output: bool, repeats: int) -> float:
    """The split's mean negative ELBO in bits/dim, noise seeded alike for every setting."""
    for layer in module.modules():
        if isinstance(layer, OutputConv2d):
            layer.fp32 = fp32_output
    total, count = 0.0, 0
    torch.manual_seed(0)
    for _ in range(repeats):
        for batch in loader:
            images = to_float_images(batch)
            if getattr(module, "channels_last", False):
                images = images.contiguous(memory_format=torch.channels_last)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                terms, _ = module.bound_terms(images)
            total += float(terms.bits_per_dim) * len(images)
            count += len(images)
    return total / count


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    module, config = load_checkpoint(args.checkpoint)
    data_cfg = config.data.copy()
    if args.data_root:
        with open_dict(data_cfg):
            data_cfg.root = args.data_root
    datamodule = instantiate(data_cfg)
    datamodule.setup(args.split)
    loader = getattr(datamodule, f"{args.split}_dataloader")()
    fp32 = bits_per_dim(module, loader, autocast=False, fp32_output=False, repeats=args.repeats)
    bf16 = bits_per_dim(module, loader, autocast=True, fp32_output=False, repeats=args.repeats)
    mixed = bits_per_dim(module, loader, autocast=True, fp32_output=True, repeats=args.repeats)
    print(
        json.dumps(
            {
                "benchmark": "output_precision",
                "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "checkpoint": str(args.checkpoint),
                "model": config.model.net._target_.rsplit(".", 1)[-1],
                "likelihood": config.model.likelihood._target_.rsplit(".", 1)[-1],
                "image_size": int(config.data.image_size),
                "split": args.split,
                "repeats": args.repeats,
                "torch": torch.__version__,
                "bits_per_dim_fp32": round(fp32, 4),
                "bits_per_dim_bf16_output_bf16": round(bf16, 4),
                "bits_per_dim_bf16_output_fp32": round(mixed, 4),
                "gap_output_bf16": round(bf16 - fp32, 4),
                "gap_output_fp32": round(mixed - fp32, 4),
                "load_avg_1m": os.getloadavg()[0],
            }
        )
    )


if __name__ == "__main__":
    main()
