"""The decoder's last convolution, whose outputs are the likelihood's parameters.

Under bf16 autocast a convolution's output is rounded to bf16: 8 significant bits, so a mean just
below 1 on the [-1, 1] scale lands on a grid of 1/256, half of an 8-bit bin (2/255), and a
log-scale near -4 on one of 1/32. A discrete likelihood (discretized logistic, its mixture) prices
that rounding in bits/dim, and its training gradient sees it. With `fp32=True` the layer runs in
fp32 under autocast (mixed precision keeps fp32 weights, so only its input is cast); the
network's other layers stay in bf16. Measured on trained models (`benchmarks/output_precision.py`,
benchmarks/RESULTS.md), it moves the bound by 0.0001-0.0006 bits/dim: the learned logistics are
several bins wide.
"""

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


class OutputConv2d(nn.Conv2d):
    """A 3x3, padding-1 `nn.Conv2d` (same parameters and checkpoint keys) that runs in fp32 under
    autocast when built with `fp32=True`."""

    def __init__(self, in_channels: int, out_channels: int, fp32: bool = False):
        super().__init__(in_channels, out_channels, 3, padding=1)
        self.fp32 = bool(fp32)

    @contextmanager
    def precision(self, x: torch.Tensor) -> Iterator[torch.Tensor]:
        """`x` in fp32 with autocast off, for this layer and whatever the decoder computes with
        it (its upsampling), when the layer runs in fp32 under autocast; `x` unchanged else."""
        device = x.device.type
        if self.fp32 and torch.is_autocast_enabled(device):
            with torch.autocast(device, enabled=False):
                yield x.float()
        else:
            yield x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with self.precision(x) as x:
            return super().forward(x)
