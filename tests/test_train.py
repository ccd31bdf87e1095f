"""End-to-end training through `train(cfg)` and the command line."""

from pathlib import Path

import pytest
from omegaconf import open_dict

from tests.conftest import ROOT, compose_config, run_module
from vae_lit.persistence.checkpoint import load_checkpoint
from vae_lit.train import train


def test_fast_dev_run_from_the_command_line(tmp_path: Path):
    result = run_module(
        "vae_lit.train", "trainer.fast_dev_run=true", f"paths.log_dir={tmp_path}", cwd=ROOT
    )
    assert result.returncode == 0, result.stderr[-3000:]


def test_a_run_leaves_a_checkpoint_and_its_config(tiny_cfg, tmp_path: Path):
    metrics = train(tiny_cfg)
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()
    assert {"val/loss", "test/loss", "test/bits_per_dim"} <= metrics.keys()
    module, config = load_checkpoint(tmp_path / "checkpoints" / "last.ckpt")
    assert config.model.net.latent_dim == 4
    assert module.sample(3).shape == (3, 3, 16, 16)


@pytest.mark.slow
def test_training_on_sprites_lowers_validation_loss_by_30_percent(tmp_path: Path):
    cfg = compose_config(
        tmp_path,
        [
            "data.num_images=2000",
            "data.image_size=32",
            "trainer=cpu",
            "trainer.max_epochs=4",
            "logger=csv",
            "test=false",
        ],
    )
    with open_dict(cfg):
        cfg.callbacks = {k: v for k, v in cfg.callbacks.items() if k == "model_checkpoint"}
    train(cfg)
    import csv

    rows = list(csv.DictReader(open(tmp_path / "csv" / "metrics.csv")))
    val = [float(r["val/loss"]) for r in rows if r.get("val/loss")]
    assert len(val) == 4
    assert val[-1] <= 0.7 * val[0], val
