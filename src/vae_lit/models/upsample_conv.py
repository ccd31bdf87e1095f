"""Bilinear 2x upsampling followed by a 3x3 convolution, computed without the upsampled map.

The decoder's output layer upsamples 32 maps to full size and convolves them down to a few output
channels (3 for Bernoulli). On CPU that convolution runs at ~12% of peak: oneDNN computes output
channels in blocks of 16, so 3 cost what 16 do. And the upsampled map it reads is the largest
tensor of the network.

Both steps are linear, so they fold into one: output pixel (2i + p, 2j + q) is a 3x3 convolution
of the low-resolution input around (i, j) with a kernel that depends only on the phase (p, q).
That is one convolution with 4 * out_channels outputs on the small map (12 for RGB: 3/4 of a
oneDNN block instead of 3/16) and a pixel shuffle; the FLOPs are the same. The kernels are built
from the layer's own weight every call, so parameters, gradients and checkpoints stay those of
`nn.Upsample(mode="bilinear") + nn.Conv2d(padding=1)`. The two outermost rows and columns, where
the upsampling clamps at the edge and the convolution pads with zeros, are recomputed exactly from
thin strips. `benchmarks/output_layer.py` measures it.
"""

import functools

import torch
import torch.nn.functional as F

# Bilinear 2x (align_corners=False): high-res row 2i + p reads low-res rows i - 1, i, i + 1; its
# 3x3 convolution reads high-res rows 2i + p - 1 .. 2i + p + 1. TAPS[p, k] is high-res tap k of
# phase p written on the three low-res rows.
TAPS = torch.tensor(
    [
        [[0.75, 0.25, 0.0], [0.25, 0.75, 0.0], [0.0, 0.75, 0.25]],
        [[0.25, 0.75, 0.0], [0.0, 0.75, 0.25], [0.0, 0.25, 0.75]],
    ]
)


@functools.cache
def taps_on(device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """TAPS on `device`, copied once: a copy per call would be a host-to-device copy per step."""
    return TAPS.to(device, dtype)


# Devices where the fused layer is measured to be faster (benchmarks/RESULTS.md); elsewhere the
# plain pair runs. Both compute the same function.
FUSED_DEVICES = ("cpu",)


def fuses(x: torch.Tensor, size: tuple[int, int], weight: torch.Tensor) -> bool:
    """Whether the decoder computes its output layer with `upsample_conv`: an exact 2x upsampling
    and a 3x3 kernel, on a device where it is faster, in bf16 or fp16. It rounds differently from
    the plain pair (well below bf16's own rounding), so fp32 runs, the project's bit-for-bit
    reference (tests/test_ingredients.py), keep the plain layer."""
    height, width = x.shape[-2:]
    device = x.device.type
    low_precision = (torch.float16, torch.bfloat16)
    return (
        device in FUSED_DEVICES
        and (
            x.dtype in low_precision
            or (
                torch.is_autocast_enabled(device)
                and torch.get_autocast_dtype(device) in low_precision
            )
        )
        and tuple(size) == (2 * height, 2 * width)
        and height >= 2
        and width >= 2
        and tuple(weight.shape[-2:]) == (3, 3)
    )


def phase_kernels(weight: torch.Tensor) -> torch.Tensor:
    """(4 * out, in, 3, 3) kernels on the low-res map, outputs ordered (p, q, out). Built in the
    weight's own dtype outside autocast, so a bf16 run rounds them once, as it rounds `weight`."""
    out_channels, in_channels = weight.shape[:2]
    with torch.autocast(weight.device.type, enabled=False):
        taps = taps_on(weight.device, weight.dtype)
        kernels = torch.einsum("pya,qxb,ocyx->pqocab", taps, taps, weight)
    return kernels.reshape(4 * out_channels, in_channels, 3, 3)


def pixel_shuffle_phases(y: torch.Tensor) -> torch.Tensor:
    """(N, 4 * C, H, W) with channels ordered (p, q, c) -> (N, C, 2H, 2W), in y's memory format."""
    n, channels, height, width = y.shape
    c = channels // 4
    if y.is_contiguous(memory_format=torch.channels_last) and not y.is_contiguous():
        nhwc = y.permute(0, 2, 3, 1).reshape(n, height, width, 2, 2, c)
        nhwc = nhwc.permute(0, 1, 3, 2, 4, 5).reshape(n, 2 * height, 2 * width, c)
        return nhwc.permute(0, 3, 1, 2)
    nchw = y.reshape(n, 2, 2, c, height, width).permute(0, 3, 4, 1, 5, 2)
    return nchw.reshape(n, c, 2 * height, 2 * width)


def upsample_conv(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    """`conv2d(interpolate(x, scale 2, bilinear), weight, bias, padding=1)` (see `fuses`)."""
    if bias is None:
        bias = weight.new_zeros(weight.shape[0])
    return UpsampleConv.apply(x, weight, bias)


def frame_strips(x: torch.Tensor) -> dict[str, torch.Tensor]:
    """The 2-pixel strips of x next to each edge, from which the output's frame is computed."""
    return {
        "top": x[:, :, :2],
        "bottom": x[:, :, -2:],
        "left": x[:, :, :, :2],
        "right": x[:, :, :, -2:],
    }


def frame_region(name: str) -> tuple[slice, slice]:
    """The output pixels each strip owns: the rows or columns 0, 1 and the last two, once each."""
    rows, cols = slice(None), slice(None)
    if name == "top":
        rows = slice(0, 2)
    elif name == "bottom":
        rows = slice(-2, None)
    else:
        rows, cols = slice(2, -2), slice(0, 2) if name == "left" else slice(-2, None)
    return rows, cols


def plain_on_strip(
    name: str, strip: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, out_size: int
) -> torch.Tensor:
    """The plain layer on a 2-pixel strip: upsampled to 4 pixels across (the 3 nearest the edge
    equal the full map's) and convolved with the full map's zero padding; the owned pixels."""
    size = (4, out_size) if name in ("top", "bottom") else (out_size, 4)
    up = F.interpolate(strip, size=size, mode="bilinear", align_corners=False)
    if strip.dim() == 4 and strip.stride(1) == 1:  # channels_last: a thin NCHW strip takes
        up = up.contiguous(memory_format=torch.channels_last)  # oneDNN's slow path (~30x)
    y = F.conv2d(up, weight, bias, padding=1)
    keep = {"top": (slice(0, 2), slice(None)), "bottom": (slice(-2, None), slice(None))}
    rows, cols = keep.get(name, (slice(2, -2), slice(0, 2) if name == "left" else slice(-2, None)))
    return y[:, :, rows, cols]


class UpsampleConv(torch.autograd.Function):
    """Forward and backward by hand, so that the strips' gradients are added into x's gradient in
    place: through autograd each strip would cost a zero-filled copy of x's full gradient."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        if torch.is_autocast_enabled(x.device.type):  # autocast's conv2d rule, applied here
            dtype = torch.get_autocast_dtype(x.device.type)
        with torch.autocast(x.device.type, enabled=False):
            kernels = phase_kernels(weight).to(dtype)
            xc, w, b = x.to(dtype), weight.to(dtype), bias.to(dtype)
            y = pixel_shuffle_phases(F.conv2d(xc, kernels, b.repeat(4), padding=1))
            height, width = y.shape[-2:]
            for name, strip in frame_strips(xc).items():
                rows, cols = frame_region(name)
                size = width if name in ("top", "bottom") else height
                y[:, :, rows, cols] = plain_on_strip(name, strip, w, b, size)
        ctx.save_for_backward(xc, w, b, kernels)
        ctx.input_dtypes = (x.dtype, weight.dtype, bias.dtype)
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_y: torch.Tensor):
        xc, w, b, kernels = ctx.saved_tensors
        x_dtype, w_dtype, b_dtype = ctx.input_dtypes
        grad_y = grad_y.to(xc.dtype)
        height, width = grad_y.shape[-2:]
        # The main convolution's share: the gradient outside the frame, back in phase layout.
        grad_phase = unshuffle_phases(grad_y)
        for edge in (0, -1):  # slices, not an index list: that would be a host-to-device copy
            grad_phase[:, :, edge] = 0
            grad_phase[:, :, :, edge] = 0
        grad_x, grad_kernels, grad_bias4 = torch.ops.aten.convolution_backward(
            grad_phase,
            xc,
            kernels,
            [kernels.shape[0]],
            [1, 1],
            [1, 1],
            [1, 1],
            False,
            [0, 0],
            1,
            [True, True, True],
        )
        exact = torch.promote_types(w_dtype, torch.float32)  # weight gradients sum in >= fp32
        taps = taps_on(grad_kernels.device, exact)
        grad_w = torch.einsum(
            "pya,qxb,pqocab->ocyx", taps, taps, grad_kernels.to(exact).unflatten(0, (2, 2, -1))
        )
        grad_b = grad_bias4.to(exact).unflatten(0, (4, -1)).sum(0)
        # The frame's share, strip by strip, added into the few rows and columns it read.
        for name, strip in frame_strips(xc).items():
            rows, cols = frame_region(name)
            size = width if name in ("top", "bottom") else height
            with torch.enable_grad():
                leaves = [t.detach().requires_grad_() for t in (strip, w, b)]
                out = plain_on_strip(name, *leaves, size)
                g_strip, g_w, g_b = torch.autograd.grad(out, leaves, grad_y[:, :, rows, cols])
            frame_strips(grad_x)[name].add_(g_strip)
            grad_w += g_w.to(exact)
            grad_b += g_b.to(exact)
        return grad_x.to(x_dtype), grad_w.to(w_dtype), grad_b.to(b_dtype)


def unshuffle_phases(y: torch.Tensor) -> torch.Tensor:
    """The inverse of `pixel_shuffle_phases`, in y's memory format."""
    n, c, height, width = y.shape
    h, w = height // 2, width // 2
    if y.is_contiguous(memory_format=torch.channels_last) and not y.is_contiguous():
        nhwc = y.permute(0, 2, 3, 1).reshape(n, h, 2, w, 2, c).permute(0, 1, 3, 2, 4, 5)
        return nhwc.reshape(n, h, w, 4 * c).permute(0, 3, 1, 2)
    nchw = y.reshape(n, c, h, 2, w, 2).permute(0, 3, 5, 1, 2, 4)
    return nchw.reshape(n, 4 * c, h, w)
