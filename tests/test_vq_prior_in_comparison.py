"""A comparison scores a VQ-VAE through a PixelCNN prior it trains after the VQ-VAE
(`eval_after_train.prior_epochs`), and draws the prior's samples, not uniform codes."""

import json
import math
from pathlib import Path

import pytest
from conftest import compose_config
from test_vqvae import VQ_TINY

from vae_lit.compare import best_checkpoint, sample_panel
from vae_lit.train import train


def test_eval_after_train_scores_a_vqvae_through_the_prior_it_trains(tmp_path: Path):
    overrides = [
        *VQ_TINY,
        "eval_after_train.enabled=true",
        "eval_after_train.k=2",
        "eval_after_train.prior_epochs=1",
    ]
    train(compose_config(tmp_path, overrides))
    evaluated = json.loads((tmp_path / "eval.json").read_text())
    assert Path(evaluated["checkpoint"]).parent == tmp_path / "prior" / "checkpoints"
    # -log p(x) <= reconstruction NLL - log p(codes), in nats and in bits per subpixel
    assert evaluated["nll"] == pytest.approx(evaluated["recon"] + evaluated["prior_nll"])
    dims = 3 * 16 * 16
    assert evaluated["bits_per_dim"] == pytest.approx(evaluated["nll"] / (dims * math.log(2)))
    ckpt = best_checkpoint(tmp_path)
    assert ckpt == Path(evaluated["checkpoint"])
    panel, label = sample_panel(ckpt, samples=4, nrow=2, sample_px=16, seed=0)
    assert label == "" and panel.size > 0  # prior samples, not "(uniform codes)"
