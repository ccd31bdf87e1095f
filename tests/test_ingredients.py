"""The four ingredient groups compose, train, sample and evaluate in every pairing; the default
composition is the seed's model, bit for bit; checkpoints of the seed's layout still load."""

import itertools
import json
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from conftest import ROOT, TINY, compose_config
from hydra.utils import instantiate
from pytorch_lightning import Callback
from seed_loss import SeedLossModule

from vae_lit.eval import evaluate
from vae_lit.persistence.checkpoint import load_checkpoint
from vae_lit.sample import sample
from vae_lit.train import train

GROUPS = {
    "net": ["conv", "resnet"],
    "likelihood": [
        "bernoulli",
        "gaussian",
        "discretized_logistic",
        "discretized_logistic_mixture",
    ],
    "objective": ["elbo", "beta_tcvae", "dip_vae", "info_vae", "iwae"],
    "prior": ["normal", "mog", "vamp"],
}
# 20 runs holding every pair of options of two groups (a covering array; checked below)
COVERING = [
    ("resnet", "bernoulli", "elbo", "mog"),
    ("conv", "bernoulli", "beta_tcvae", "normal"),
    ("resnet", "bernoulli", "dip_vae", "vamp"),
    ("resnet", "bernoulli", "info_vae", "normal"),
    ("conv", "bernoulli", "iwae", "mog"),
    ("conv", "gaussian", "elbo", "vamp"),
    ("resnet", "gaussian", "beta_tcvae", "mog"),
    ("conv", "gaussian", "dip_vae", "normal"),
    ("conv", "gaussian", "info_vae", "vamp"),
    ("resnet", "gaussian", "iwae", "normal"),
    ("conv", "discretized_logistic", "elbo", "normal"),
    ("resnet", "discretized_logistic", "beta_tcvae", "vamp"),
    ("conv", "discretized_logistic", "dip_vae", "mog"),
    ("conv", "discretized_logistic", "info_vae", "mog"),
    ("resnet", "discretized_logistic", "iwae", "vamp"),
    ("resnet", "discretized_logistic_mixture", "elbo", "normal"),
    ("conv", "discretized_logistic_mixture", "beta_tcvae", "mog"),
    ("conv", "discretized_logistic_mixture", "dip_vae", "vamp"),
    ("conv", "discretized_logistic_mixture", "info_vae", "normal"),
    ("conv", "discretized_logistic_mixture", "iwae", "normal"),
]
SHORT_RUN = [
    "++trainer.limit_train_batches=2",
    "++trainer.limit_val_batches=1",
    "++trainer.limit_test_batches=1",
    "model.net.hidden_channels=[4,8]",
    "model.likelihood.num_components=2",  # unused keys are refused, so set only where it exists
]


def ingredient_overrides(combination: tuple[str, ...]) -> list[str]:
    overrides = [
        f"model/{group}={option}" for group, option in zip(GROUPS, combination, strict=True)
    ]
    short = [o for o in SHORT_RUN if "num_components" not in o]
    if combination[1] == "discretized_logistic_mixture":
        short.append("model.likelihood.num_components=2")
    return [*TINY, *overrides, *short]


def test_the_covering_set_holds_every_pair_of_options():
    names = list(GROUPS)
    for a, b in itertools.combinations(range(len(names)), 2):
        wanted = set(itertools.product(GROUPS[names[a]], GROUPS[names[b]]))
        assert {(row[a], row[b]) for row in COVERING} == wanted, (names[a], names[b])


@pytest.mark.parametrize("combination", COVERING, ids="-".join)
def test_every_pair_of_ingredients_trains_samples_and_evaluates(tmp_path: Path, combination):
    metrics = train(compose_config(tmp_path / "run", ingredient_overrides(combination)))
    assert torch.isfinite(torch.tensor(metrics["test/loss"]))
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    # the sample grid callback draws from the prior
    assert (tmp_path / "run" / "results" / "sample_0.png").is_file()

    grid = sample(
        compose_config(
            tmp_path / "sample", [f"ckpt={ckpt}", "n=4", "nrow=2", "device=cpu"], "sample"
        )
    )
    assert grid.is_file()
    result = evaluate(
        compose_config(
            tmp_path / "eval",
            [f"ckpt={ckpt}", "eval.k=3", "eval.log_to_run=false", "device=cpu"],
            "eval",
        )
    )
    kind = "discrete" if combination[1].startswith("discretized") else "continuous"
    assert result["likelihood_kind"] == kind
    assert (result["likelihood"], result["objective"], result["prior"]) == combination[1:]
    assert result["iwae_nll"] == pytest.approx(result["iwae_nll"])  # finite, not NaN
    if kind == "discrete":  # a true code length: at most 8 bits a subpixel for a sane model...
        assert 0 < result["bits_per_dim"] < 64  # ...untrained models may exceed it, but not wildly


@pytest.mark.slow
@pytest.mark.parametrize("combination", itertools.product(*GROUPS.values()), ids="-".join)
def test_all_120_combinations_train_and_sample(tmp_path: Path, combination):
    """One real training, validation and test batch of each combination, then prior samples."""
    cfg = compose_config(tmp_path, ingredient_overrides(combination))
    datamodule, module = instantiate(cfg.data), instantiate(cfg.model)
    trainer = pl.Trainer(
        accelerator="cpu",
        fast_dev_run=True,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        precision="32-true",
    )
    trainer.fit(module, datamodule=datamodule)
    trainer.test(module, datamodule=datamodule, verbose=False)
    assert torch.isfinite(torch.tensor(trainer.callback_metrics["test/loss"].item()))
    samples = module.sample(4, torch.Generator().manual_seed(0))
    assert samples.shape == (4, 3, 16, 16) and 0 <= samples.min() <= samples.max() <= 1


class RecordLosses(Callback):
    def __init__(self):
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(float(outputs["loss"]))


def seed_procedure_losses(cfg, module=None) -> list[float]:
    """The training losses of seed 7, eight steps, fp32 on CPU, deterministic: the procedure
    tests/data/seed_model_golden.json was recorded with."""
    pl.seed_everything(7, workers=True)
    datamodule = instantiate(cfg.data)
    model = instantiate(cfg.model) if module is None else module(cfg)
    record = RecordLosses()
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=8,
        logger=False,
        enable_checkpointing=False,
        callbacks=[record],
        precision="32-true",
        deterministic=True,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
    )
    trainer.fit(model, datamodule=datamodule)
    return record.losses


def test_the_default_composition_gives_the_seed_models_losses_bit_for_bit(tmp_path: Path):
    """The default composition trains exactly as a frozen copy of the seed's loss
    (`tests/seed_loss.py`) in this process, bit for bit, on whatever CPU runs it."""
    cfg = compose_config(tmp_path, TINY)
    ours = seed_procedure_losses(cfg)
    seed_cfg = cfg.model.copy()
    seed_cfg._target_ = f"{SeedLossModule.__module__}.{SeedLossModule.__name__}"
    seed = seed_procedure_losses(cfg, lambda _: instantiate(seed_cfg))
    assert len(ours) == 8 and ours == seed


def test_the_default_composition_matches_the_losses_recorded_from_the_seed(tmp_path: Path):
    """The losses recorded from the seed's code (its network included) on an AMD EPYC, to a
    tolerance: another CPU's kernels round fp32 differently (1e-7 relative seen on an Intel Xeon
    with AMX), a changed network or loss moves them by far more than 1e-5."""
    golden = json.loads((ROOT / "tests" / "data" / "seed_model_golden.json").read_text())
    losses = seed_procedure_losses(compose_config(tmp_path, TINY))
    assert losses == pytest.approx(golden["train_losses_seed7_8steps"], rel=1e-5, abs=0)


def test_a_checkpoint_of_the_seed_layout_loads_and_reconstructs_as_before():
    """tests/data/seed_conv_v0.ckpt was written by the seed model (model.loss, kl_schedule); its
    reconstructions were recorded then (to fp32 rounding, which differs between CPUs)."""
    golden = json.loads((ROOT / "tests" / "data" / "seed_model_golden.json").read_text())
    module, config = load_checkpoint(ROOT / "tests" / "data" / "seed_conv_v0.ckpt")
    assert "loss" not in config.model and config.model.likelihood._target_.endswith("Bernoulli")
    x = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    reconstructions = module.reconstruct(x)
    first = golden["checkpoint_reconstruction_first"]
    assert reconstructions.flatten()[:8].tolist() == pytest.approx(first, abs=1e-5)
    total = reconstructions.double().sum().item()
    assert total == pytest.approx(golden["checkpoint_reconstruction_sum"], rel=1e-6)


@pytest.mark.parametrize(
    ("experiment", "expected"),
    [
        ("beta_vae", {"objective": "elbo", "beta": 4.0}),
        ("beta_tcvae", {"objective": "beta_tcvae"}),
        ("info_vae", {"objective": "info_vae"}),
        ("vamp_vae", {"prior": "vamp"}),
        ("iwae", {"objective": "iwae"}),
        ("sigma_vae", {"likelihood": "gaussian", "learned_scale": True}),
    ],
)
def test_each_named_variant_is_one_experiment(tmp_path: Path, experiment, expected):
    module = instantiate(compose_config(tmp_path, [*TINY, f"experiment={experiment}"]).model)
    for ingredient in ("objective", "prior", "likelihood"):
        if ingredient in expected:
            assert getattr(module, ingredient).name == expected[ingredient]
    if "beta" in expected:
        assert module.objective.kl_schedule.beta == expected["beta"]
    if expected.get("learned_scale"):
        assert [n for n, _ in module.likelihood.named_parameters()] == ["log_scale"]
