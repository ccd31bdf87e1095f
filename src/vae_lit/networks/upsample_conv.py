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
def cached_taps(device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    return TAPS.to(device, dtype)


def taps_on(device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """TAPS on `device`, copied once: a copy per call would be a host-to-device copy per step.
    torch.compile traces the copy as a constant instead (and warns about a cached function)."""
    if torch.compiler.is_compiling():
        return TAPS.to(device, dtype)
    return cached_taps(device, dtype)


# Devices where the fused layer is measured to be faster (benchmarks/RESULTS.md); elsewhere the
# plain pair runs. Both compute the same function.
FUSED_DEVICES = ("cpu",)


def fuses(x: torch.Tensor, size: tuple[int, int], weight: torch.Tensor) -> bool:
    """Whether the decoder computes its output layer with `upsample_conv`: an exact 2x upsampling
    and a 3x3 kernel, on a device where it is faster, in any precision (fp32 on one AVX2 core:
    682 -> 262 ms forward + backward at batch 64, 150 px; it rounds differently from the plain
    pair, ~1e-6 of the output's scale in fp32)."""
    height, width = x.shape[-2:]
    return (
        x.device.type in FUSED_DEVICES
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


# The output's frame, rows and columns 0, 1 and the last two, is recomputed exactly from 2-pixel
# strips of x: rows for the top and bottom, columns (transposed, so that every strip is wide and
# flat: a tall narrow one takes oneDNN's slow path, ~10x in backward) for the left and right,
# which leave the corners to the rows. Name: (the strip's output rows it owns, transposed).
FRAME = {
    "top": (slice(0, 2), False),
    "bottom": (slice(-2, None), False),
    "left": (slice(0, 2), True),
    "right": (slice(-2, None), True),
}


def oriented(t: torch.Tensor, transposed: bool) -> torch.Tensor:
    return t.transpose(-2, -1) if transposed else t


def strip_of(t: torch.Tensor, name: str) -> torch.Tensor:
    """The 2-pixel strip of a low-res map, a (N, C, 2, length) view in the strip's orientation."""
    rows, transposed = FRAME[name]
    t = oriented(t, transposed)
    return t[:, :, :2] if rows.start == 0 else t[:, :, -2:]


def owned(name: str, t: torch.Tensor) -> torch.Tensor:
    """The pixels a strip owns, as a view of a full-size map `t` in the strip's orientation."""
    rows, transposed = FRAME[name]
    return t[:, :, rows, 2:-2] if transposed else t[:, :, rows]


def strip_upsampled(strip: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """The strip upsampled to 4 rows: the 3 by the edge equal the full upsampled map's. Dense in
    the network's layout first and after: a strided or NCHW strip takes slow paths (~10-30x)."""
    layout = torch.channels_last if channels_last else torch.contiguous_format
    strip = strip.contiguous(memory_format=layout)
    up = F.interpolate(strip, size=(4, 2 * strip.shape[-1]), mode="bilinear", align_corners=False)
    return up.contiguous(memory_format=layout)


class UpsampleConv(torch.autograd.Function):
    """Forward and backward by hand: the strips' gradients go into x's gradient in place (through
    autograd each strip would cost a zero-filled copy of x's full gradient), and torch.compile
    traces it whole (no torch.autograd.grad inside)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        if torch.is_autocast_enabled(x.device.type):  # autocast's conv2d rule, applied here
            dtype = torch.get_autocast_dtype(x.device.type)
        with torch.autocast(x.device.type, enabled=False):
            kernels = phase_kernels(weight).to(dtype)
            xc, w, b = x.to(dtype), weight.to(dtype), bias.to(dtype)
            channels_last = xc.is_contiguous(memory_format=torch.channels_last)
            y = pixel_shuffle_phases(F.conv2d(xc, kernels, b.repeat(4), padding=1))
            for name, (_, transposed) in FRAME.items():
                up = strip_upsampled(strip_of(xc, name), channels_last)
                frame = F.conv2d(up, oriented(w, transposed).contiguous(), b, padding=1)
                owned(name, oriented(y, transposed)).copy_(owned(name, frame))
        ctx.save_for_backward(xc, w, kernels)
        ctx.input_dtypes = (x.dtype, weight.dtype, bias.dtype)
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_y: torch.Tensor):
        xc, w, kernels = ctx.saved_tensors
        x_dtype, w_dtype, b_dtype = ctx.input_dtypes
        grad_y = grad_y.to(xc.dtype)
        channels_last = xc.is_contiguous(memory_format=torch.channels_last)
        # The main convolution's share: the gradient outside the frame, back in phase layout.
        grad_phase = unshuffle_phases(grad_y)
        for edge in (0, -1):  # slices, not an index list: that would be a host-to-device copy
            grad_phase[:, :, edge] = 0
            grad_phase[:, :, :, edge] = 0
        grad_x, grad_kernels, grad_bias4 = convolution_backward(grad_phase, xc, kernels)
        exact = torch.promote_types(w_dtype, torch.float32)  # weight gradients sum in >= fp32
        taps = taps_on(grad_kernels.device, exact)
        grad_w = torch.einsum(
            "pya,qxb,pqocab->ocyx", taps, taps, grad_kernels.to(exact).unflatten(0, (2, 2, -1))
        )
        grad_b = grad_bias4.to(exact).unflatten(0, (4, -1)).sum(0)
        # The frame's share, strip by strip, added into the two rows or columns it read.
        for name, (_, transposed) in FRAME.items():
            strip = strip_of(xc, name)
            up = strip_upsampled(strip, channels_last)
            layout = torch.channels_last if channels_last else torch.contiguous_format
            shape = (up.shape[0], w.shape[0], *up.shape[2:])
            grad_frame = up.new_empty(shape).contiguous(memory_format=layout).zero_()
            owned(name, grad_frame).copy_(owned(name, oriented(grad_y, transposed)))
            w_strip = oriented(w, transposed).contiguous()  # a strided weight: a slow path
            grad_up, g_w, g_b = convolution_backward(grad_frame, up, w_strip)
            strip_of(grad_x, name).add_(
                torch.ops.aten.upsample_bilinear2d_backward(
                    grad_up, list(up.shape[2:]), list(strip.shape), False
                )
            )
            grad_w += oriented(g_w, transposed).to(exact)
            grad_b += g_b.to(exact)
        return grad_x.to(x_dtype), grad_w.to(w_dtype), grad_b.to(b_dtype)


def convolution_backward(grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor):
    """(grad x, grad weight, grad bias) of a stride-1, padding-1 conv2d."""
    return torch.ops.aten.convolution_backward(
        grad,
        x,
        weight,
        [weight.shape[0]],
        [1, 1],
        [1, 1],
        [1, 1],
        False,
        [0, 0],
        1,
        [True, True, True],
    )


def unshuffle_phases(y: torch.Tensor) -> torch.Tensor:
    """The inverse of `pixel_shuffle_phases`, in y's memory format."""
    n, c, height, width = y.shape
    h, w = height // 2, width // 2
    if y.is_contiguous(memory_format=torch.channels_last) and not y.is_contiguous():
        nhwc = y.permute(0, 2, 3, 1).reshape(n, h, 2, w, 2, c).permute(0, 1, 3, 2, 4, 5)
        return nhwc.reshape(n, h, w, 4 * c).permute(0, 3, 1, 2)
    nchw = y.reshape(n, c, h, 2, w, 2).permute(0, 3, 5, 1, 2, 4)
    return nchw.reshape(n, 4 * c, h, w)
