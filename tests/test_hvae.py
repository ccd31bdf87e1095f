"""The hierarchical VAE (model=hvae): its KL and bounds against Monte Carlo, the top-down
dependency structure, shapes at any image size, and the training safeguards (skipped updates,
the weight average, resume), then the whole pipeline from a run to its pictures."""

import json
from functools import partial
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from conftest import compose_config, run_module
from hydra.utils import instantiate

from vae_lit.model.hvae_module import HierarchicalVAELitModule
from vae_lit.model.likelihoods import DiscretizedLogistic
from vae_lit.networks.hierarchical import (
    Bottleneck,
    HierarchicalVAE,
    gaussian_kl,
    gaussian_log_density,
)
from vae_lit.persistence.checkpoint import load_checkpoint, read_checkpoint
from vae_lit.train import train

TINY_HVAE = [
    "experiment=hvae",
    "data.num_images=96",
    "data.image_size=16",
    "data.batch_size=16",
    "model.net.width=16",
    "model.net.latent_channels=2",
    "model.net.encoder_blocks=[1,1,1]",
    "model.net.latent_layers=[0,1,2]",
    "model.net.decoder_blocks=[1,0,0]",
    "trainer=cpu",
    "trainer.max_epochs=1",
    "trainer.precision=32-true",
    "logger=csv",
]


def tiny_net(size: int = 16, **options) -> HierarchicalVAE:
    layout = dict(encoder_blocks=[1, 1, 1], latent_layers=[0, 1, 2], decoder_blocks=[1, 0, 0])
    layout.update(options)
    return HierarchicalVAE(size, 3, 6, width=16, latent_channels=2, **layout)


def tiny_module(**options) -> HierarchicalVAELitModule:
    torch.manual_seed(0)
    return HierarchicalVAELitModule(
        tiny_net(),
        DiscretizedLogistic(3),
        partial(torch.optim.AdamW, lr=1e-3),
        warmup_steps=1,
        **options,
    )


def images(n: int = 8, size: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_the_analytic_kl_equals_a_monte_carlo_estimate():
    """KL(q || p) = E_q[log q(z) - log p(z)] (the identity behind Kingma & Welling 2014's
    analytic term), checked on random Gaussians with 400k draws each."""
    g = torch.Generator().manual_seed(0)
    mu_q, mu_p = torch.randn(6, generator=g), torch.randn(6, generator=g)
    logstd_q, logstd_p = 0.5 * torch.randn(6, generator=g), 0.5 * torch.randn(6, generator=g)
    z = mu_q + torch.exp(logstd_q) * torch.randn(400_000, 6, generator=g, dtype=torch.float64)
    log_q = gaussian_log_density(z, mu_q.double(), logstd_q.double())
    log_p = gaussian_log_density(z, mu_p.double(), logstd_p.double())
    monte_carlo = (log_q - log_p).mean(0)
    analytic = gaussian_kl(mu_q, logstd_q, mu_p, logstd_p).double()
    assert torch.allclose(monte_carlo, analytic, atol=0.02, rtol=0.01)
    assert gaussian_kl(mu_q, logstd_q, mu_q, logstd_q).abs().max() < 1e-6  # KL(q || q) = 0


def test_each_layers_kl_equals_the_monte_carlo_estimate_of_the_network():
    """A layer's analytic KL against log q - log p of the z the pass drew, averaged over draws."""
    net = tiny_net().eval()
    x = images(2).repeat(4000, 1, 1, 1)
    with torch.no_grad():
        torch.manual_seed(1)
        _, stats = net(x)
    top = stats[0]  # the top layer: its p and q do not depend on earlier draws
    analytic = top.kl().flatten(1).sum(1)
    monte_carlo = top.log_q_minus_log_p()
    for i in range(2):
        rows = slice(i, None, 2)
        assert monte_carlo[rows].mean().item() == pytest.approx(
            analytic[rows].mean().item(), rel=0.05, abs=0.05
        )


def test_the_posterior_at_a_layer_depends_on_x_and_the_layers_above_only():
    net = tiny_net()
    x = images(2).requires_grad_(True)
    _, stats = net(x)
    zs = [s.z for s in stats]
    for i, layer in enumerate(stats):
        grads = torch.autograd.grad(
            layer.mu_q.sum(), [x, *zs], allow_unused=True, retain_graph=True
        )
        assert grads[0] is not None and grads[0].abs().sum() > 0  # x
        for j, grad in enumerate(grads[1:]):
            if j < i:
                assert grad is not None and grad.abs().sum() > 0, (i, j)  # z above
            else:
                assert grad is None or grad.abs().sum() == 0, (i, j)  # itself and below


@pytest.mark.parametrize("size", [150, 64, 37])
def test_any_image_size_gives_images_of_that_size(size: int):
    net = HierarchicalVAE(size, 3, 6, width=8, latent_channels=2)  # the default layout
    assert net.sizes == {150: [150, 75, 38, 19, 10], 64: [64, 32, 16, 8, 4]}.get(size, net.sizes)
    x = images(2, size)
    params, stats = net(x)
    assert params.shape == (2, 6, size, size)
    assert [tuple(s.z.shape[1:]) for s in stats] == net.latent_shapes
    mu, logvar = net.encode(x)
    assert mu.shape == logvar.shape == (2, net.latent_dim)
    assert net.decode(mu).shape == (2, 6, size, size)


def test_decoding_the_encoded_means_is_the_posterior_mean_path():
    net = tiny_net().eval()
    x = images(3)
    with torch.no_grad():
        direct, _ = net.top_down(net.bottom_up(x), posterior_mean=True)
        assert torch.allclose(net.decode(net.encode(x)[0]), direct, atol=1e-5)


def test_a_bad_layout_is_one_line():
    with pytest.raises(Exception, match="one entry per resolution"):
        tiny_net(latent_layers=[0, 1])
    with pytest.raises(Exception, match="at least one latent layer"):
        tiny_net(latent_layers=[0, 0, 0])


def test_the_iwae_bound_with_one_sample_is_the_elbo_in_expectation():
    """Burda et al. 2016: with k = 1 the importance-weighted bound is the ELBO (one draw)."""
    module = tiny_module().eval()
    x = images(2).repeat(1500, 1, 1, 1)
    torch.manual_seed(3)
    terms, _ = module.pass_terms(x)
    iwae = module.importance_weighted_log_likelihood(x, k=1, max_decodes=4096)
    assert -iwae.mean().item() == pytest.approx(terms.neg_elbo.item(), rel=2e-3)
    iwae_8 = module.importance_weighted_log_likelihood(images(2).repeat(200, 1, 1, 1), k=8)
    assert iwae_8.mean().item() > iwae.mean().item()  # tighter with more samples


def test_temperature_zero_sampling_is_deterministic():
    module = tiny_module().eval()
    a = module.sample(4, torch.Generator().manual_seed(0), temperature=0.0)
    b = module.sample(4, torch.Generator().manual_seed(1), temperature=0.0)
    assert torch.equal(a, b) and torch.equal(a[0], a[1])
    c = module.sample(4, torch.Generator().manual_seed(0), temperature=1.0)
    assert not torch.equal(a, c)


class Steps(pl.Callback):
    """The network's weights after every training batch."""

    def __init__(self):
        self.weights: list[list[torch.Tensor]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.weights.append([p.detach().clone() for p in pl_module.net.parameters()])


def fit(module, steps: int, callbacks=(), **trainer_args) -> pl.Trainer:
    data = torch.utils.data.DataLoader((images(32) * 255).to(torch.uint8), batch_size=8)
    settings = dict(
        accelerator="cpu",
        max_steps=steps,
        max_epochs=-1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=list(callbacks),
    )
    trainer = pl.Trainer(**{**settings, **trainer_args})
    trainer.fit(module, data)
    return trainer


def test_an_update_with_a_huge_gradient_is_skipped_and_counted():
    """Every gradient is 'huge' against a threshold of 1e-9: no weight and no average moves."""
    module = tiny_module(grad_clip=1e-9, skip_threshold=1e-9)
    before = [p.detach().clone() for p in module.net.parameters()]
    ema_before = [p.detach().clone() for p in module.ema.parameters()]
    fit(module, steps=-1, max_epochs=1, limit_train_batches=3)  # no update: steps stay 0
    assert int(module.skipped_updates) == 3
    assert all(torch.equal(a, b) for a, b in zip(before, module.net.parameters(), strict=True))
    assert all(torch.equal(a, b) for a, b in zip(ema_before, module.ema.parameters(), strict=True))


def test_the_average_is_the_hand_computed_one():
    module = tiny_module(ema_decay=0.5)
    expected = [p.detach().clone() for p in module.net.parameters()]
    steps = Steps()
    fit(module, steps=4, callbacks=[steps])
    assert int(module.skipped_updates) == 0
    for t, weights in enumerate(steps.weights):  # after update t + 1
        share = 1 - min(0.5, (1 + t) / (10 + t))
        expected = [e + share * (w - e) for e, w in zip(expected, weights, strict=True)]
    for e, a in zip(expected, module.ema.parameters(), strict=True):
        assert torch.allclose(e, a, atol=1e-6)
    assert not all(
        torch.equal(e, w) for e, w in zip(expected, steps.weights[-1], strict=True)
    )  # an average, not the last weights


def test_a_resumed_run_continues_its_average(tmp_path: Path):
    """The average is saved in the checkpoint and is where training resumes from, exactly."""
    cfg = compose_config(tmp_path / "run", TINY_HVAE)
    train(cfg)
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    saved = read_checkpoint(ckpt)
    ema = {k: v for k, v in saved["state_dict"].items() if k.startswith("ema.")}
    assert ema and saved["global_step"] > 0

    class AtResume(pl.Callback):
        def on_train_start(self, trainer, pl_module):
            state = pl_module.state_dict()
            self.same = all(torch.equal(state[k], v) for k, v in ema.items())
            self.step = trainer.global_step

    check = AtResume()
    module = instantiate(cfg.model)
    trainer = pl.Trainer(
        accelerator="cpu",
        max_epochs=2,
        logger=False,
        callbacks=[check],
        enable_progress_bar=False,
        enable_checkpointing=False,
        default_root_dir=tmp_path,
    )
    datamodule = instantiate(cfg.data)
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt, weights_only=True)
    assert check.same and check.step == saved["global_step"]
    assert trainer.global_step > saved["global_step"]


def test_activation_checkpointing_recomputes_blocks_in_the_backward_pass():
    """The switch does something: with it, each block's forward runs again during backward."""
    calls = {}
    for flag in (False, True):
        net = tiny_net(checkpoint_blocks=flag).train()
        runs: list[str] = []
        for module in net.modules():
            if isinstance(module, Bottleneck):
                module.register_forward_hook(lambda *_, runs=runs: runs.append("forward"))
        params, stats = net(images(2))
        forward_only = len(runs)
        (params.sum() + sum(s.kl().sum() for s in stats)).backward()
        calls[flag] = (forward_only, len(runs))
    assert calls[False][0] == calls[False][1]  # no recomputation
    assert calls[True][1] > calls[True][0]


def test_a_run_leaves_layer_kls_their_picture_and_samples_from_checkpoint_and_folder(
    tmp_path: Path,
):
    run = tmp_path / "run"
    metrics = train(compose_config(run, [*TINY_HVAE, "trainer.log_every_n_steps=1"]))
    assert metrics["test/bits_per_dim"] > 0
    assert (run / "results" / "kl_per_layer_0.png").stat().st_size > 0
    header = (run / "csv" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"val/kl_layer/00", "val/kl_layer/02", "val/active_units_layer/01"} <= set(header)
    assert "train/skipped_updates" in header
    ckpt = run / "checkpoints" / "last.ckpt"
    folder = tmp_path / "exported"
    done = run_module("vae_lit.export", f"ckpt={ckpt}", f"out={folder}", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    for source in (ckpt, folder):
        for args in (["temperature=0.8"], ["mode=partial"]):
            out = tmp_path / f"{source.name}-{args[0].split('=')[0]}.png"
            done = run_module("vae_lit.sample", f"ckpt={source}", f"out={out}", *args, cwd=run)
            assert done.returncode == 0, done.stderr[-2000:]
            assert out.stat().st_size > 0
        done = run_module(
            "vae_lit.eval",
            f"ckpt={source}",
            "eval.k=4",
            f"eval.json={tmp_path / source.name}-eval.json",
            cwd=run,
        )
        assert done.returncode == 0, done.stderr[-2000:]
        evaluated = json.loads((tmp_path / f"{source.name}-eval.json").read_text())
        assert len(evaluated["kl_per_layer"]) == 3 and evaluated["likelihood_kind"] == "discrete"
        assert (tmp_path / f"{source.name}-eval_kl_per_layer.png").stat().st_size > 0
    # the export holds the averaged weights, and they are what loads
    module, _ = load_checkpoint(folder)
    saved = read_checkpoint(ckpt)["state_dict"]
    assert torch.equal(module.ema.output.weight, saved["ema.output.weight"])


@pytest.mark.slow
def test_on_sprites_hvae_ends_below_logistic_vae_in_bits_per_dim(tmp_path: Path):
    """The same steps and batches: latents at every resolution leave less to the pixels."""
    common = [
        "data.num_images=3200",
        "data.image_size=32",
        "data.batch_size=32",
        "trainer=cpu",
        "trainer.max_epochs=-1",
        "trainer.max_steps=240",
        "trainer.precision=32-true",
        "logger=csv",
        "callbacks=none",
    ]
    hvae = train(compose_config(tmp_path / "hvae", [*common, "experiment=hvae"]))
    logistic = train(compose_config(tmp_path / "logistic", [*common, "experiment=logistic_vae"]))
    assert hvae["test/bits_per_dim"] < logistic["test/bits_per_dim"]


def test_the_gpu_preset_composes_and_builds(tmp_path: Path):
    cfg = compose_config(tmp_path, ["experiment=hvae_large", "data.image_size=64"])
    module = instantiate(cfg.model)
    assert module.net.num_layers == 21 and module.net.sizes == [64, 32, 16, 8, 4]
    assert sum(p.numel() for p in module.net.parameters()) > 4_000_000
