"""The fast path changes speed, not results: bf16-mixed trains as well as fp32 (the evidence behind
the default `trainer.precision`), and channels_last and the fused loss compute the same numbers."""

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import TINY, compose_config
from hydra.utils import instantiate

from vae_lit.losses import BernoulliNLL
from vae_lit.train import train

# ~960 optimizer steps on 16x16 sprites. Two precisions from one seed still drift apart like two
# seeds do (about +-1% here), so each side is the mean of two seeded runs.
SEEDS = (1, 2)
BUDGET = [
    *TINY,
    "data.num_images=1200",
    "trainer.max_epochs=16",
    "trainer.check_val_every_n_epoch=16",
    "callbacks=none",
    "logger=none",
    "test=false",
]


@pytest.fixture
def one_thread():
    """One intra-op thread: the numbers do not depend on the core count, and a tiny net loses
    nothing (on a busy machine it gains: no thread waits at every op's barrier)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def mean_val_loss(output_dir: Path, precision: str) -> float:
    losses = []
    for seed in SEEDS:
        overrides = [*BUDGET, f"seed={seed}", f"trainer.precision={precision}"]
        losses.append(
            train(compose_config(output_dir / f"{precision}_{seed}", overrides))["val/loss"]
        )
    return sum(losses) / len(losses)


@pytest.mark.slow
def test_bf16_mixed_does_not_hurt_the_validation_loss(tmp_path: Path, one_thread):
    fp32 = mean_val_loss(tmp_path, "32-true")
    bf16 = mean_val_loss(tmp_path, "bf16-mixed")
    numbers = f"val/loss bf16-mixed {bf16:.3f} vs fp32 {fp32:.3f}"
    assert bf16 <= 1.01 * fp32, f"bf16-mixed trains worse: {numbers}"
    assert abs(bf16 - fp32) <= 0.03 * fp32, f"bf16-mixed trains another model: {numbers}"


def test_bernoulli_nll_matches_binary_cross_entropy_with_logits():
    logits = torch.cat([torch.randn(4000) * 8, torch.tensor([-200.0, -30.0, 0.0, 30.0, 200.0])])
    x = torch.rand(len(logits))
    x[:10] = torch.tensor([0.0, 1.0] * 5)
    ours_logits, ours_x = logits.clone().requires_grad_(), x.clone().requires_grad_()
    ref_logits, ref_x = logits.clone().requires_grad_(), x.clone().requires_grad_()
    ours = BernoulliNLL.apply(ours_logits, ours_x)
    ref = F.binary_cross_entropy_with_logits(ref_logits, ref_x, reduction="none")
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)
    weights = torch.rand(len(logits))
    (ours * weights).sum().backward()
    (ref * weights).sum().backward()
    torch.testing.assert_close(ours_logits.grad, ref_logits.grad)
    torch.testing.assert_close(ours_x.grad, ref_x.grad)


@pytest.mark.filterwarnings("ignore:You are trying to `self.log")  # model_step outside a Trainer
def test_channels_last_module_gives_the_nchw_numbers_and_nchw_images(tmp_path: Path):
    cfg = compose_config(tmp_path, TINY)
    nchw = instantiate(cfg.model, channels_last=False)
    fast = instantiate(cfg.model)  # the default: channels_last
    fast.load_state_dict(nchw.state_dict())
    assert fast.net.encoder.features[0].weight.is_contiguous(memory_format=torch.channels_last)
    images = torch.randint(0, 256, (8, 3, 16, 16), dtype=torch.uint8)
    losses = []
    for module in (nchw, fast):
        torch.manual_seed(0)  # the same reparameterisation noise
        losses.append(module.model_step(images, "val").loss)
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-5, atol=1e-4)
    samples = fast.sample(4, generator=torch.Generator().manual_seed(0))
    assert samples.shape == (4, 3, 16, 16) and samples.is_contiguous()
    assert fast.reconstruct(images.float() / 255).is_contiguous()
