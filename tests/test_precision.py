"""The fast path changes speed, not results: bf16-mixed trains as well as fp32 (the evidence behind
`trainer.precision: auto` choosing it), and channels_last and the fused loss compute the same
numbers. `auto` picks the precision the hardware computes natively and says why; the other
switches of the fast path (cudnn.benchmark, model.compile) take their documented values."""

import logging
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import TINY, compose_config
from hydra.utils import instantiate

from vae_lit.errors import find_user_error
from vae_lit.model.likelihoods import BernoulliNLL
from vae_lit.runs.trainer import map_gpus
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


def pretend_gpus(monkeypatch, capabilities: list[tuple[int, int]]) -> None:
    """torch's CUDA queries answer as a machine with these GPUs would."""
    names = {
        (6, 0): "Tesla P100",
        (6, 1): "GeForce GTX 1080",
        (7, 0): "Tesla V100",
        (7, 5): "Tesla T4",
        (8, 0): "A100",
        (9, 0): "H100",
    }
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: len(capabilities))
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda i=0: capabilities[i])
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=0: names[capabilities[i]])
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)  # emulated


def pretend_cpu(monkeypatch, avx512_bf16: bool, amx: bool) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)


def resolved(tmp_path: Path, caplog, *overrides: str) -> tuple[str, str]:
    """(precision, log text) of the default trainer config with `overrides`, as train.py has it."""
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="vae_lit.runs.trainer"):
        trainer_cfg = map_gpus(compose_config(tmp_path, list(overrides)).trainer)
    return trainer_cfg.precision, caplog.text


@pytest.mark.parametrize(
    ("capability", "expected", "reason"),
    [
        ((6, 0), "32-true", "Tesla P100 (compute capability 6.0) has no fp16 tensor cores"),
        ((6, 1), "32-true", "GeForce GTX 1080 (compute capability 6.1) has no fp16 tensor"),
        ((7, 0), "16-mixed", "Tesla V100 (compute capability 7.0) has no native bf16"),
        ((7, 5), "16-mixed", "Tesla T4 (compute capability 7.5) has no native bf16"),
        ((8, 0), "bf16-mixed", "A100 (compute capability 8.0) has bf16 tensor cores"),
        ((9, 0), "bf16-mixed", "H100 (compute capability 9.0) has bf16 tensor cores"),
    ],
)
def test_auto_precision_on_a_gpu_follows_its_compute_capability(
    monkeypatch, tmp_path, caplog, capability, expected, reason
):
    pretend_gpus(monkeypatch, [capability])
    for overrides in ([], ["trainer.gpus=1"], ["trainer=gpu"]):
        precision, text = resolved(tmp_path, caplog, *overrides)
        assert precision == expected
        assert f"trainer.precision=auto chose {expected}: {reason}" in text


def test_auto_precision_takes_the_oldest_of_several_gpus(monkeypatch, tmp_path, caplog):
    pretend_gpus(monkeypatch, [(9, 0), (7, 5)])
    assert resolved(tmp_path, caplog, "trainer.gpus=2")[0] == "16-mixed"
    assert resolved(tmp_path, caplog, "trainer.gpus=[0]")[0] == "bf16-mixed"


@pytest.mark.parametrize(
    ("avx512_bf16", "amx", "expected", "reason"),
    [
        (True, False, "bf16-mixed", "the CPU computes bf16 natively (AVX512-BF16)"),
        (True, True, "bf16-mixed", "the CPU computes bf16 natively (AVX512-BF16, AMX)"),
        (False, True, "bf16-mixed", "the CPU computes bf16 natively (AMX)"),
        (False, False, "32-true", "the CPU has neither AVX512-BF16 nor AMX"),
    ],
)
def test_auto_precision_on_a_cpu_needs_native_bf16(
    monkeypatch, tmp_path, caplog, avx512_bf16, amx, expected, reason
):
    pretend_cpu(monkeypatch, avx512_bf16, amx)
    for overrides in ([], ["trainer=cpu"], ["trainer.gpus=0"]):
        precision, text = resolved(tmp_path, caplog, *overrides)
        assert precision == expected
        assert f"trainer.precision=auto chose {expected}: {reason}" in text


def test_a_cpu_run_on_a_gpu_machine_asks_the_cpu(monkeypatch, tmp_path, caplog):
    pretend_gpus(monkeypatch, [(7, 5)])
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)
    assert resolved(tmp_path, caplog, "trainer=cpu")[0] == "bf16-mixed"


@pytest.mark.parametrize("explicit", ["32-true", "bf16-mixed", "16-mixed"])
def test_an_explicit_precision_wins_over_auto(monkeypatch, tmp_path, caplog, explicit):
    pretend_gpus(monkeypatch, [(9, 0)])
    assert resolved(tmp_path, caplog, f"trainer.precision={explicit}")[0] == explicit
    pretend_cpu(monkeypatch, avx512_bf16=False, amx=False)
    precision, text = resolved(tmp_path, caplog, f"trainer.precision={explicit}")
    assert precision == explicit and "auto chose" not in text


def test_explicit_bf16_on_hardware_that_emulates_it_warns(monkeypatch, tmp_path, caplog):
    pretend_gpus(monkeypatch, [(7, 0)])
    text = resolved(tmp_path, caplog, "trainer.precision=bf16-mixed")[1]
    assert "trainer.precision=bf16-mixed will be emulated and slow" in text
    assert "trainer.precision=auto would choose 16-mixed" in text


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ([], True),  # fixed training shapes: cuDNN may pick the fastest algorithm per shape
        (["trainer.deterministic=true"], False),  # repeatable runs: no timing-dependent choice
        (["trainer.benchmark=false"], False),
        (["trainer.deterministic=true", "trainer.benchmark=true"], True),  # explicit wins
    ],
)
def test_cudnn_benchmark_is_on_unless_runs_must_repeat(tmp_path, caplog, overrides, expected):
    trainer_cfg = map_gpus(compose_config(tmp_path, overrides).trainer)
    assert trainer_cfg.benchmark is expected


def test_model_compile_takes_a_mode_and_refuses_others_in_one_line(tmp_path):
    cfg = compose_config(tmp_path, TINY)
    for value, mode in ((False, None), (True, "default"), ("reduce-overhead", "reduce-overhead")):
        assert instantiate(cfg.model, compile=value).compile_net == mode
    with pytest.raises(Exception) as failure:  # Hydra wraps it; the entry points unwrap it
        instantiate(cfg.model, compile="fast")
    assert str(find_user_error(failure.value)).startswith(
        "model.compile='fast' is unknown; use false, true or one of: default, reduce-overhead"
    )


@pytest.mark.slow
@pytest.mark.parametrize("model", ["conv", "vqvae"])
def test_model_compile_compiles_what_a_training_step_runs(tmp_path, model):
    """`nn.Module.compile()` wraps `forward` only; the steps call the encoder and decoder, so a
    compile of the wrong thing shows as no compiled frame after a training step."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    overrides = [*TINY, "model.net.hidden_channels=[8,16]", "model.compile=true"]
    if model == "vqvae":
        overrides += ["model=vqvae", "model.net.quantizer.num_codes=16"]
        overrides = [o for o in overrides if not o.startswith("model.net.latent_dim")]
    overrides += ["trainer.max_steps=2", "trainer.limit_val_batches=0", "test=false"]
    train(compose_config(tmp_path, [*overrides, "callbacks=none", "logger=none"]))
    assert counters["stats"]["unique_graphs"] >= 2, dict(counters["stats"])  # encoder, decoder
    assert not counters["graph_break"], dict(counters["graph_break"])


def test_deterministic_on_cuda_runs_as_warn_and_says_why(monkeypatch, tmp_path, caplog):
    """Bilinear upsampling, in every network, has no deterministic CUDA backward: `true` would
    fail at the first backward of a GPU run."""
    pretend_gpus(monkeypatch, [(9, 0)])
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="vae_lit.runs.trainer"):
        gpu = map_gpus(
            compose_config(tmp_path, ["trainer.gpus=1", "trainer.deterministic=true"]).trainer
        )
    assert gpu.deterministic == "warn" and gpu.benchmark is False
    assert "trainer.deterministic=true on CUDA runs as 'warn': bilinear upsampling" in caplog.text
    cpu = map_gpus(compose_config(tmp_path, ["trainer=cpu", "trainer.deterministic=true"]).trainer)
    assert cpu.deterministic is True


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_bilinear_upsampling_has_no_deterministic_cuda_backward():
    """Why the rule above exists; if a torch release adds the kernel, the rule can go."""
    x = torch.randn(1, 1, 4, 4, device="cuda", requires_grad=True)
    torch.use_deterministic_algorithms(True)
    try:
        with pytest.raises(RuntimeError, match="does not have a deterministic implementation"):
            F.interpolate(x, size=(7, 7), mode="bilinear").sum().backward()
    finally:
        torch.use_deterministic_algorithms(False)


def test_parallel_sweep_jobs_spread_over_the_gpus(monkeypatch, tmp_path):
    """joblib runs sweep jobs at once: each one-GPU job on its own GPU, not all on GPU 0."""
    pretend_gpus(monkeypatch, [(9, 0), (9, 0)])
    trainer_cfg = compose_config(tmp_path, ["trainer.gpus=1"]).trainer
    assert [map_gpus(trainer_cfg, parallel_job=j).devices for j in range(3)] == [[0], [1], [0]]
    assert map_gpus(trainer_cfg).devices == 1  # a single run, or jobs one after another
    two = compose_config(tmp_path, ["trainer.gpus=2"]).trainer
    assert map_gpus(two, parallel_job=1).devices == 2  # a job that asks for several: as asked
