"""A comparison scores a VQ-VAE through a PixelCNN prior it trains after the VQ-VAE
(`eval_after_train.prior_epochs`), and draws the prior's samples, not uniform codes."""

import json
import math
from pathlib import Path

import pytest
from conftest import compose_config
from test_vqvae import VQ_TINY

from vae_lit.compare import best_checkpoint, headline_table, sample_panel
from vae_lit.train import train


def test_eval_after_train_scores_a_vqvae_through_the_prior_it_trains(tmp_path: Path):
    sweep, tmp_path = tmp_path, tmp_path / "0"  # job 0 of a one-job sweep, as a later addition
    overrides = [
        *VQ_TINY,
        "eval_after_train.enabled=true",
        "eval_after_train.k=2",
        "eval_after_train.prior_epochs=1",
    ]
    train(compose_config(tmp_path, overrides))
    evaluated = json.loads((tmp_path / "eval.json").read_text())
    assert Path(evaluated["checkpoint"]).parent == tmp_path / "prior" / "checkpoints"
    # no per-epoch sample grid of the prior: 64 code grids drawn one code at a time cost minutes
    # an epoch at 150 px (38x38 codes, hours before the row-by-row sampler); the comparison draws
    # its own few samples
    assert not list((tmp_path / "prior").rglob("*.png"))
    # -log p(x) <= reconstruction NLL - log p(codes), in nats and in bits per subpixel
    assert evaluated["nll"] == pytest.approx(evaluated["recon"] + evaluated["prior_nll"])
    dims = 3 * 16 * 16
    assert evaluated["bits_per_dim"] == pytest.approx(evaluated["nll"] / (dims * math.log(2)))
    ckpt = best_checkpoint(tmp_path)
    assert ckpt == Path(evaluated["checkpoint"])
    panel, label = sample_panel(ckpt, samples=4, nrow=2, sample_px=16, seed=0)
    assert label == "" and panel.size > 0  # prior samples, not "(uniform codes)"

    # the README's summary gives the bound through the prior (‡), not the uniform one (†), and
    # names a one-job sweep's model by its variant, not by the sweep's command line
    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "overrides.yaml").write_text(
        "- +experiment@_global_=vqvae\n- experiment=compare_sprites32\n- data.root=/data\n"
        "- eval_after_train.prior_epochs=1\n- ckpt_path=/runs/0/checkpoints/last.ckpt\n"
    )
    row = headline_table({"sprites": sweep}).splitlines()[2]
    assert row.startswith(f"| vqvae | {evaluated['bits_per_dim']:.3f} ‡ / ")
