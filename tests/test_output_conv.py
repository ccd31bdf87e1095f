"""The decoder's output layer. Its fused form (networks/upsample_conv.py) is the seed's upsample +
conv: the same function and gradients, the same parameters, so old checkpoints load and train on.
With `fp32_output` (networks/output_conv.py) it runs in fp32 under bf16 autocast, in every network,
for the discrete likelihoods' true bits."""

import pytest
import torch
import torch.nn.functional as F

from tests.conftest import ROOT, compose_config
from vae_lit.networks import ConvVAE, ResNetVAE
from vae_lit.networks.hierarchical import HierarchicalVAE
from vae_lit.networks.upsample_conv import fuses, upsample_conv
from vae_lit.networks.vqvae import VQVAE, VectorQuantizer


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


def test_fp32_takes_the_fused_layer_and_gives_the_plain_layers_numbers():
    """In fp32 too the CPU decoder takes the fused layer (2.6x faster on one AVX2 core): its
    logits and gradients are the seed layer's to fp32 rounding."""
    torch.manual_seed(0)
    net = ConvVAE(image_size=32, latent_dim=8, hidden_channels=(8, 16))
    net.to(memory_format=torch.channels_last)
    h = torch.randn(1, 8, 16, 16).contiguous(memory_format=torch.channels_last)
    assert fuses(h, net.decoder.blocks[-2].size, net.decoder.blocks[-1].weight)
    z = torch.randn(4, 8)
    ours, our_grads = decoder_output_and_grads(net, z, fused=True, dtype=None)
    seeds, seed_grads = decoder_output_and_grads(net, z, fused=False, dtype=None)
    assert not torch.equal(ours, seeds)  # two computations (were it the same, this test is moot)
    assert relative_error(ours, seeds) < 1e-6
    for g_ours, g_seed in zip(our_grads, seed_grads, strict=True):
        assert relative_error(g_ours, g_seed) < 1e-5


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


# Each network at 16-32 px with its decode input: (net with the switch set, what `decode` takes).
NETS = {
    "conv": lambda fp32: (
        ConvVAE(32, latent_dim=8, hidden_channels=(8, 16), out_channels=6, fp32_output=fp32),
        torch.randn(2, 8),
    ),
    "resnet": lambda fp32: (
        ResNetVAE(16, latent_dim=4, hidden_channels=(8, 16), out_channels=6, fp32_output=fp32),
        torch.randn(2, 4),
    ),
    "hvae": lambda fp32: (
        HierarchicalVAE(
            16,
            3,
            6,
            width=8,
            latent_channels=2,
            encoder_blocks=[0, 1, 1],
            latent_layers=[0, 1, 1],
            decoder_blocks=[0, 0, 0],
            fp32_output=fp32,
        ),
        torch.randn(2, 2 * 8 * 8 + 2 * 4 * 4),
    ),
    "vqvae": lambda fp32: (
        VQVAE(
            VectorQuantizer(8, 4), 16, hidden_channels=(8, 16), out_channels=6, fp32_output=fp32
        ),
        torch.randn(2, 4, 4, 4),
    ),
}


@pytest.mark.parametrize("name", sorted(NETS))
def test_fp32_output_switches_the_output_layer_to_fp32_under_bf16(name):
    """With the switch the likelihood's parameters come out in fp32, off bf16's 8-bit grid (a
    bf16 mean lands on a grid of up to half an 8-bit bin); without it, in bf16."""
    for fp32 in (False, True):
        torch.manual_seed(0)
        net, z = NETS[name](fp32)
        net.to(memory_format=torch.channels_last)
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            params = net.decode(z)
        assert params.shape[:2] == (2, 6)
        assert params.dtype == (torch.float32 if fp32 else torch.bfloat16)
        if fp32:
            off_grid = params != params.to(torch.bfloat16).float()
            assert off_grid.float().mean() > 0.9
        with torch.no_grad():
            assert net.decode(z).dtype == torch.float32  # no autocast: fp32 either way


def test_the_fp32_output_layer_is_the_plain_fp32_layer_on_the_bf16_features():
    """The conv decoder's fused layer runs in fp32: the output is the plain upsample + conv in
    fp32 of the features the bf16 layers before it computed, to fp32 rounding (bf16's is ~1e-2)."""
    torch.manual_seed(0)
    net = ConvVAE(32, latent_dim=8, hidden_channels=(8, 16), out_channels=3, fp32_output=True)
    net.to(memory_format=torch.channels_last)
    decoder, z = net.decoder, torch.randn(4, 8)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        params = decoder(z)
        h = torch.relu(decoder.from_latent(z)).view(4, *decoder.start_shape)
        *body, upsample, conv = decoder.blocks
        for block in body:
            h = block(h.contiguous(memory_format=torch.channels_last))
    assert h.dtype == torch.bfloat16
    with torch.no_grad():
        expected = plain(h.float(), conv.weight, conv.bias)
    torch.testing.assert_close(params, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("model", ["conv", "resnet", "hvae", "vqvae"])
def test_discrete_likelihoods_get_the_fp32_output_layer_by_default(tmp_path, model):
    choose = {"resnet": ["model/net=resnet"], "conv": []}.get(model, [f"model={model}"])
    for likelihood, discrete in (
        ("bernoulli", False),
        ("gaussian", False),
        ("discretized_logistic", True),
        ("discretized_logistic_mixture", True),
    ):
        cfg = compose_config(tmp_path, [*choose, f"model/likelihood={likelihood}"])
        assert cfg.model.net.fp32_output is discrete, likelihood
