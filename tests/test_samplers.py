"""Post-hoc samplers: the GMM's EM against a known mixture and an independent density, the
two-stage VAE on a known Gaussian, fitting once next to a checkpoint, and the sample and eval
entry points."""

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from tests.conftest import ROOT, compose_config, run_module
from vae_lit.errors import UserError
from vae_lit.sampling.fits import fitted_sampler, sampler_paths
from vae_lit.sampling.gmm import GaussianMixture
from vae_lit.sampling.two_stage import TwoStageVAE

MEANS = torch.tensor([[-4.0, 0.0], [4.0, 1.0], [0.0, 6.0]])
STDS = torch.tensor([[1.0, 0.5], [0.7, 1.2], [1.5, 1.0]])
WEIGHTS = torch.tensor([0.5, 0.3, 0.2])


def draw_mixture(n: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    component = torch.multinomial(WEIGHTS, n, replacement=True, generator=generator)
    return MEANS[component] + torch.randn(n, 2, generator=generator) * STDS[component]


def by_component(mixture: GaussianMixture) -> torch.Tensor:
    """The fitted components in the order of MEANS (each matched to the nearest true mean)."""
    return torch.cdist(MEANS.double(), mixture.means).argmin(1)


@pytest.mark.parametrize("covariance", ["full", "diag"])
def test_the_gmm_recovers_the_means_and_weights_of_a_known_mixture(covariance):
    mixture = GaussianMixture(num_components=3, covariance=covariance)
    stats = mixture.fit(draw_mixture(4000))
    order = by_component(mixture)
    assert sorted(order.tolist()) == [0, 1, 2]  # one fitted component per true one
    torch.testing.assert_close(mixture.means[order].float(), MEANS, atol=0.1, rtol=0)
    torch.testing.assert_close(
        mixture.log_weights.exp()[order].float(), WEIGHTS, atol=0.03, rtol=0
    )
    assert stats["converged"]


def test_the_gmm_density_is_the_mixture_density():
    """log p(x) against torch.distributions, an independent implementation."""
    mixture = GaussianMixture(num_components=3, covariance="full")
    mixture.fit(draw_mixture(2000))
    x = draw_mixture(50, seed=1)
    covariances = mixture.scale @ mixture.scale.transpose(1, 2)
    reference = torch.distributions.MixtureSameFamily(
        torch.distributions.Categorical(logits=mixture.log_weights),
        torch.distributions.MultivariateNormal(mixture.means, covariance_matrix=covariances),
    )
    torch.testing.assert_close(mixture.log_prob(x), reference.log_prob(x.double()).float())


def test_gmm_samples_follow_the_fitted_mixture():
    mixture = GaussianMixture(num_components=3, covariance="diag")
    mixture.fit(draw_mixture(4000))
    samples = mixture.sample(20000, torch.Generator().manual_seed(3))
    expected_mean = (WEIGHTS.unsqueeze(1) * MEANS).sum(0)
    torch.testing.assert_close(samples.mean(0), expected_mean, atol=0.1, rtol=0)
    assert torch.equal(mixture.sample(20000, torch.Generator().manual_seed(3)), samples)


def test_the_gmm_refuses_more_components_than_points():
    with pytest.raises(UserError, match="num_components=10 is more than the 4 training codes"):
        GaussianMixture(num_components=10).fit(torch.randn(4, 2))


def test_the_two_stage_vae_learns_a_gaussian():
    """Codes from N(m, diag(s^2)): its log-likelihood bound approaches the true log density."""
    generator = torch.Generator().manual_seed(0)
    mean, std = torch.tensor([3.0, -2.0, 0.5]), torch.tensor([2.0, 0.5, 1.0])
    codes = mean + std * torch.randn(3000, 3, generator=generator)
    test = mean + std * torch.randn(500, 3, generator=generator)
    sampler = TwoStageVAE(hidden_dim=32, num_layers=1, steps=600, batch_size=128, lr=3e-3)
    sampler.fit(codes)
    true = torch.distributions.Normal(mean, std).log_prob(test).sum(1).mean()
    learned = sampler.log_prob(test).mean()
    assert learned <= true + 0.1  # a lower bound, up to the estimate's noise
    assert learned > true - 0.5
    samples = sampler.sample(4000, torch.Generator().manual_seed(1))
    torch.testing.assert_close(samples.mean(0), mean, atol=0.2, rtol=0)
    torch.testing.assert_close(samples.std(0), std, atol=0.25, rtol=0)


# -- fitted once next to a checkpoint, reused ----------------------------------------------------
@pytest.fixture
def vae_ckpt(tiny_run, tmp_path) -> Path:
    """A copy of the shared tiny run's checkpoint, so sampler files land in this test's dir."""
    ckpt, _ = tiny_run
    copy = tmp_path / "run" / "vae.ckpt"
    copy.parent.mkdir()
    shutil.copy(ckpt, copy)
    return copy


def test_a_sampler_is_fitted_once_saved_beside_the_checkpoint_and_reused(vae_ckpt, caplog):
    from vae_lit.persistence.checkpoint import load_checkpoint
    from vae_lit.sampling.draws import data_factory

    module, run_cfg = load_checkpoint(vae_ckpt)
    cfg = OmegaConf.create(
        {"_target_": "vae_lit.sampling.gmm.GaussianMixture", "num_components": 2}
    )
    fitted = fitted_sampler("gmm", cfg, module, vae_ckpt, data_factory(run_cfg.data))
    tensors, record = sampler_paths(vae_ckpt, "gmm")
    assert tensors.name == "vae.ckpt.gmm.safetensors" and record.name == "vae.ckpt.gmm.json"
    saved = json.loads(record.read_text())
    assert saved["num_codes"] == 76 and saved["latent_dim"] == 4  # the tiny run's training split
    assert saved["settings"]["num_components"] == 2 and len(saved["checkpoint_sha256"]) == 64
    z = torch.randn(10, 4)
    mtime = tensors.stat().st_mtime_ns

    def no_data():
        raise AssertionError("a saved sampler must not need the data")

    with caplog.at_level("INFO", logger="vae_lit.sampling.fits"):
        reused = fitted_sampler("gmm", cfg, module, vae_ckpt, no_data)
    assert "Reusing the gmm sampler" in caplog.text and tensors.stat().st_mtime_ns == mtime
    assert torch.equal(reused.log_prob(z), fitted.log_prob(z))
    # other settings: fitted again
    cfg.num_components = 3
    refitted = fitted_sampler("gmm", cfg, module, vae_ckpt, data_factory(run_cfg.data))
    assert refitted.means.shape == (3, 4)
    assert json.loads(record.read_text())["settings"]["num_components"] == 3


@pytest.mark.slow
def test_sample_with_a_fitted_sampler_draws_its_grid(vae_ckpt, tmp_path):
    out = tmp_path / "gmm.png"
    result = run_module(
        "vae_lit.sample",
        f"ckpt={vae_ckpt}",
        "sampler=gmm",
        "samplers.gmm.num_components=3",
        "n=16",
        "nrow=4",
        f"out={out}",
        f"hydra.run.dir={tmp_path / 'sample'}",
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert out.is_file() and sampler_paths(vae_ckpt, "gmm")[0].is_file()
    unknown = run_module(
        "vae_lit.sample", f"ckpt={vae_ckpt}", "sampler=flow", f"hydra.run.dir={tmp_path}", cwd=ROOT
    )
    assert unknown.returncode == 2
    assert unknown.stderr.strip().splitlines() == [
        "vae-lit: error: sampler=flow is unknown; use one of: prior, gmm, two_stage"
    ]


def test_eval_scores_the_posterior_means_under_each_sampler(vae_ckpt, tmp_path, capsys):
    from vae_lit.eval import evaluate

    overrides = [
        f"ckpt={vae_ckpt}",
        "eval.k=2",
        "samplers.gmm.num_components=3",
        "samplers.two_stage.steps=200",
        "samplers.two_stage.hidden_dim=32",
        "samplers.two_stage.importance_samples=10",
    ]
    # by default only the cheap gmm is fitted; a two-stage VAE only when asked (or saved)
    assert set(evaluate(compose_config(tmp_path, overrides, "eval"))["latent_log_likelihood"]) == {
        "prior",
        "gmm",
    }
    cfg = compose_config(tmp_path, [*overrides, "eval.samplers=[gmm,two_stage]"], "eval")
    metrics = evaluate(cfg)
    scores = metrics["latent_log_likelihood"]
    assert set(scores) == {"prior", "gmm", "two_stage"}
    assert all(math.isfinite(value) for value in scores.values())
    # a 3-component mixture fitted on the training codes covers them better than N(0, I)
    assert scores["gmm"] > scores["prior"]
    assert "log p(means), gmm" in capsys.readouterr().out
    assert json.loads((vae_ckpt.parent / "eval.json").read_text())["latent_log_likelihood"] == (
        scores
    )


# -- where fits live: never in someone else's folder, never lost to a read-only one -------------
@pytest.fixture
def vae_folder(vae_ckpt, tmp_path) -> Path:
    from vae_lit.export import export

    out = tmp_path / "exp" / "vae"
    export(compose_config(tmp_path, [f"ckpt={vae_ckpt}", f"out={out}"], "export"))
    return out


def gmm_cfg():
    return OmegaConf.create(
        {"_target_": "vae_lit.sampling.gmm.GaussianMixture", "num_components": 2}
    )


def test_a_model_folders_fit_survives_what_eval_and_export_write_into_it(vae_folder, caplog):
    """Issue 19.2: the folder's fingerprint hashed eval.json, README.md and the pictures, so an
    eval into the folder invalidated its fits (and a VQ-VAE prior trained from it)."""
    from vae_lit.persistence.checkpoint import load_checkpoint
    from vae_lit.persistence.fingerprint import fingerprint
    from vae_lit.sampling.draws import data_factory

    module, run_cfg = load_checkpoint(vae_folder)
    before = fingerprint(vae_folder)
    fitted_sampler("gmm", gmm_cfg(), module, vae_folder, data_factory(run_cfg.data))
    (vae_folder / "eval.json").write_text('{"iwae_nll": 1.0}\n')
    (vae_folder / "README.md").write_text("a new card\n")
    (vae_folder / "kl.png").write_bytes(b"png")
    assert fingerprint(vae_folder) == before

    def no_data():
        raise AssertionError("the fit must be reused")

    with caplog.at_level("INFO", logger="vae_lit.sampling.fits"):
        fitted_sampler("gmm", gmm_cfg(), module, vae_folder, no_data)
    assert "Reusing the gmm sampler" in caplog.text
    (vae_folder / "model.safetensors").write_bytes(b"other weights")
    assert fingerprint(vae_folder) != before


def test_a_model_folders_fit_goes_to_the_user_cache_not_beside_the_folder(
    vae_folder, user_cache_dir
):
    """Issue 19.10: fits of exp/vae were written as exp/vae.gmm.* into the folder's parent (for a
    Hub download, its snapshots/ folder)."""
    from vae_lit.persistence.checkpoint import load_checkpoint
    from vae_lit.sampling.draws import data_factory

    module, run_cfg = load_checkpoint(vae_folder)
    before = sorted(vae_folder.parent.rglob("*"))
    fitted_sampler("gmm", gmm_cfg(), module, vae_folder, data_factory(run_cfg.data))
    assert sorted(vae_folder.parent.rglob("*")) == before
    tensors, record = sampler_paths(vae_folder, "gmm")
    assert tensors.is_file() and record.is_file() and user_cache_dir in tensors.parents


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"_target_": "vae_lit.sampling.gmm.GaussianMixture", "tol": math.nan}, "tol=nan"),
        ({"_target_": "vae_lit.sampling.gmm.GaussianMixture", "reg_covar": 0.0}, "reg_covar=0.0"),
        ({"_target_": "vae_lit.sampling.two_stage.TwoStageVAE", "lr": math.nan}, "lr=nan > 0"),
    ],
)
def test_sampler_settings_that_cannot_fit_are_one_line(settings, message):
    """Issue 19.12: tol=nan was accepted; reg_covar=0 and lr=nan gave tracebacks."""
    from hydra.utils import instantiate

    from vae_lit.errors import find_user_error

    with pytest.raises(Exception) as error:  # noqa: PT011  Hydra wraps it; the CLI unwraps it
        instantiate(OmegaConf.create(settings))
    assert message in str(find_user_error(error.value))


def test_a_diverged_fit_is_refused_and_not_saved(vae_ckpt):
    """Issue 19.12: two_stage.lr=1e6 saved a fit with a NaN loss, drew an all-black grid with rc 0
    and made eval print nan nats."""
    from vae_lit.persistence.checkpoint import load_checkpoint
    from vae_lit.sampling.draws import data_factory

    module, run_cfg = load_checkpoint(vae_ckpt)
    cfg = OmegaConf.create(
        {
            "_target_": "vae_lit.sampling.two_stage.TwoStageVAE",
            "lr": 1e6,
            "steps": 300,
            "hidden_dim": 16,
            "importance_samples": 2,
        }
    )
    with pytest.raises(UserError, match="the two_stage sampler's fit diverged .* is not saved"):
        fitted_sampler("two_stage", cfg, module, vae_ckpt, data_factory(run_cfg.data))
    assert not any(path.is_file() for path in sampler_paths(vae_ckpt, "two_stage"))
