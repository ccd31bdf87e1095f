"""`python -m vae_lit.sample`: grids from a checkpoint alone."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import TINY, compose_config, run_module
from vae_lit.errors import UserError
from vae_lit.sample import sample
from vae_lit.train import train

CELL = 16 + 2  # TINY images are 16 pixels, and grids put 2 pixels between them


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A finished one-epoch run: its checkpoint and its `results/sample_0.png`."""
    output_dir = tmp_path_factory.mktemp("run")
    train(compose_config(output_dir, [*TINY, "test=false"]))
    return output_dir


def picture(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def sample_with(tmp_path: Path, run_dir: Path, *overrides: str) -> Path:
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    return sample(compose_config(tmp_path, [f"ckpt={ckpt}", *overrides], config_name="sample"))


@pytest.mark.slow
def test_sample_needs_nothing_but_the_checkpoint(run_dir: Path, tmp_path: Path):
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    result = run_module("vae_lit.sample", f"ckpt={ckpt}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]

    (written,) = (tmp_path / "logs" / "sample" / "runs").glob("*/sample.png")
    # seed 0 draws the latent batch of the run's sample grid: the same picture, from weights alone
    assert np.array_equal(picture(written), picture(run_dir / "results" / "sample_0.png"))


def test_n_nrow_and_out_shape_the_grid(run_dir: Path, tmp_path: Path):
    out = sample_with(tmp_path, run_dir, "n=6", "nrow=3", f"out={tmp_path / 'six.png'}")
    assert out == tmp_path / "six.png"
    assert picture(out).shape == (2 * CELL + 2, 3 * CELL + 2, 3)


def test_interpolate_draws_one_path_per_row(run_dir: Path, tmp_path: Path):
    out = sample_with(tmp_path, run_dir, "mode=interpolate", "n=12", "nrow=6")
    assert out == tmp_path / "interpolate.png"
    grid = picture(out)
    assert grid.shape == (2 * CELL + 2, 6 * CELL + 2, 3)
    row = grid[2 : 2 + 16]
    first, last = row[:, 2 : 2 + 16], row[:, 5 * CELL + 2 : 5 * CELL + 2 + 16]
    assert not np.array_equal(first, last)  # each row goes from one point to another


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["mode=walk"], "mode=walk is unknown"),
        (["mode=interpolate", "n=10", "nrow=4"], "n=10 must be a multiple of nrow=4"),
        (["n=0"], "n=0 must be a positive integer"),
    ],
)
def test_bad_arguments_are_one_line_errors(run_dir, tmp_path, overrides, message):
    with pytest.raises(UserError, match=message):
        sample_with(tmp_path, run_dir, *overrides)


def test_a_missing_checkpoint_says_what_to_pass(tmp_path: Path):
    cfg = compose_config(tmp_path, [], config_name="sample")
    with pytest.raises(UserError, match="ckpt is missing; pass ckpt="):
        sample(cfg)
    cfg = compose_config(tmp_path, [f"ckpt={tmp_path / 'nope.ckpt'}"], config_name="sample")
    with pytest.raises(UserError, match="nope.ckpt does not exist"):
        sample(cfg)
