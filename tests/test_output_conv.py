"""The decoder's fused output layer (models/upsample_conv.py) is the seed's upsample + conv: the
same function and gradients, the same parameters, so old checkpoints load and train on."""

import pytest
import torch
import torch.nn.functional as F

from tests.conftest import ROOT
from vae_lit.networks import ConvVAE
from vae_lit.networks.upsample_conv import fuses, upsample_conv


def plain(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    size = (2 * x.shape[2], 2 * x.shape[3])
    up = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    return F.conv2d(up, weight, bias, padding=1)


@pytest.mark.parametrize("shape", [(2, 2), (3, 5), (8, 8), (7, 6)])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize(("out_channels", "with_bias"), [(3, True), (10, True), (1, False)])
def test_fused_layer_is_the_plain_layer_in_float64(shape, channels_last, out_channels, with_bias):
    torch.manual_seed(0)
    x = torch.randn(2, 5, *shape, dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    weight = torch.randn(out_channels, 5, 3, 3, dtype=torch.float64)
    bias = torch.randn(out_channels, dtype=torch.float64) if with_bias else None
    inputs = [t.requires_grad_() for t in (x, weight, bias) if t is not None]
    ours, theirs = upsample_conv(x, weight, bias), plain(x, weight, bias)
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)
    grad = torch.randn_like(theirs)
    for g_ours, g_theirs in zip(
        torch.autograd.grad(ours, inputs, grad),
        torch.autograd.grad(theirs, inputs, grad),
        strict=True,
    ):
        torch.testing.assert_close(g_ours, g_theirs, rtol=1e-12, atol=1e-12)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    assert ours.is_contiguous(memory_format=layout)  # the network's layout goes on


def decoder_output_and_grads(net: ConvVAE, z: torch.Tensor, fused: bool, dtype):
    """The decoder's logits and weight gradients, through its forward (fused where it applies)
    or through its blocks one by one (the seed's nn.Sequential)."""
    net.zero_grad()
    decoder = net.decoder
    with torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
        if fused:
            out = decoder(z)
        else:
            h = torch.relu(decoder.from_latent(z)).view(z.shape[0], *decoder.start_shape)
            out = decoder.blocks(h.contiguous(memory_format=torch.channels_last))
    out.float().square().mean().backward()
    return out.detach().float(), [p.grad.clone() for p in decoder.parameters()]


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm()) if b.norm() > 0 else float((a - b).norm())


@pytest.mark.parametrize("out_channels", [3, 10])
def test_the_network_in_bf16_is_as_close_to_fp32_as_the_seeds_layer(out_channels):
    """Under bf16 autocast the decoder takes the fused layer; its logits and gradients are as far
    from the fp32 network's as the plain bf16 layer's are (bf16's own rounding)."""
    torch.manual_seed(0)
    net = ConvVAE(image_size=32, latent_dim=8, hidden_channels=(8, 16), out_channels=out_channels)
    net.to(memory_format=torch.channels_last)
    z = torch.randn(16, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        h = torch.randn(1, 8, 16, 16).to(torch.bfloat16)
        assert fuses(h, net.decoder.blocks[-2].size, net.decoder.blocks[-1].weight)
    exact, exact_grads = decoder_output_and_grads(net, z, fused=False, dtype=None)
    fused, fused_grads = decoder_output_and_grads(net, z, fused=True, dtype=torch.bfloat16)
    seed, seed_grads = decoder_output_and_grads(net, z, fused=False, dtype=torch.bfloat16)
    assert relative_error(seed, exact) < 1e-2  # what bf16 costs: the scale of the check
    assert relative_error(fused, exact) <= 1.5 * relative_error(seed, exact) + 1e-4
    for g_fused, g_seed, g_exact in zip(fused_grads, seed_grads, exact_grads, strict=True):
        assert relative_error(g_fused, g_exact) <= 1.5 * relative_error(g_seed, g_exact) + 1e-3


def test_fp32_keeps_the_plain_layer_bit_for_bit():
    """fp32 is the project's exact reference: the forward is the seed's, to the last bit."""
    torch.manual_seed(0)
    net = ConvVAE(image_size=32, latent_dim=8, hidden_channels=(8, 16))
    net.to(memory_format=torch.channels_last)
    z = torch.randn(4, 8)
    ours, _ = decoder_output_and_grads(net, z, fused=True, dtype=None)
    seeds, _ = decoder_output_and_grads(net, z, fused=False, dtype=None)
    assert torch.equal(ours, seeds)


def test_parameters_are_the_seeds_so_its_checkpoint_loads_strictly():
    checkpoint = torch.load(ROOT / "tests" / "data" / "seed_conv_v0.ckpt", weights_only=True)
    seed = {
        k.removeprefix("net."): v for k, v in checkpoint["state_dict"].items() if k[:4] == "net."
    }
    net = ConvVAE(image_size=16, latent_dim=4, hidden_channels=(8, 16))
    net.load_state_dict(seed, strict=True)
    z = torch.randn(4, 4, generator=torch.Generator().manual_seed(0))
    exact, _ = decoder_output_and_grads(net, z, fused=False, dtype=None)
    fused, _ = decoder_output_and_grads(net, z, fused=True, dtype=torch.bfloat16)
    assert relative_error(fused, exact) < 1e-2


def test_the_default_networks_parameters_are_unchanged():
    """The 150 px default: the seed's decoder is Upsample/Conv2d/ReLU blocks, whose convolutions
    sit at blocks 1, 4, 7 and 10."""
    shapes = {k: tuple(v.shape) for k, v in ConvVAE().decoder.state_dict().items()}
    assert shapes == {
        "from_latent.weight": (256 * 10 * 10, 64),
        "from_latent.bias": (256 * 10 * 10,),
        "blocks.1.weight": (128, 256, 3, 3),
        "blocks.1.bias": (128,),
        "blocks.4.weight": (64, 128, 3, 3),
        "blocks.4.bias": (64,),
        "blocks.7.weight": (32, 64, 3, 3),
        "blocks.7.bias": (32,),
        "blocks.10.weight": (3, 32, 3, 3),
        "blocks.10.bias": (3,),
    }
