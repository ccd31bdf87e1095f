"""The pictures a training run leaves in `results/`: grids per epoch, the GIF, latent views."""

from pathlib import Path

import imageio.v3 as iio
import numpy as np
from PIL import Image

from tests.conftest import TINY, compose_config
from vae_lit.train import train

CELL = 16 + 2  # TINY images are 16 pixels, and grids put 2 pixels between them


def grid_size(rows: int, cols: int) -> tuple[int, int]:
    """(height, width) of a grid of TINY images, as numpy shapes read."""
    return rows * CELL + 2, cols * CELL + 2


def picture(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def gif_frames(path: Path) -> np.ndarray:
    return iio.imread(path, index=None, extension=".gif", mode="RGB")


def run(output_dir: Path, *overrides: str) -> Path:
    train(compose_config(output_dir, [*TINY, "test=false", *overrides]))
    return output_dir / "results"


def test_three_epochs_leave_grids_a_gif_and_latent_views(tmp_path: Path):
    results = run(tmp_path, "trainer.max_epochs=3")

    for epoch in range(3):
        assert picture(results / f"reconstruction_{epoch}.png").shape == (*grid_size(2, 8), 3)
        assert picture(results / f"sample_{epoch}.png").shape == (*grid_size(8, 8), 3)
    # The validation batch is fixed: the originals row is the same picture every epoch.
    top_row = slice(0, CELL + 2)
    first, last = (
        picture(results / "reconstruction_0.png"),
        picture(results / "reconstruction_2.png"),
    )
    assert np.array_equal(first[top_row], last[top_row])
    assert not np.array_equal(first, last)  # ... and the reconstructions below it change

    frames = gif_frames(results / "generation.gif")
    assert frames.shape == (3, *grid_size(8, 8), 3)
    for epoch, frame in enumerate(frames):  # each frame is that epoch's sample grid, labelled
        below_label = slice(grid_size(8, 8)[0] // 2, None)
        sample = picture(results / f"sample_{epoch}.png")
        assert np.abs(frame[below_label].astype(int) - sample[below_label]).mean() < 2
    assert not np.array_equal(frames[0], frames[2])

    # 4 pairs: image, 8 decoded steps, image; latent_dim=4 caps the traversal at 4 dims x 9 values
    assert picture(results / "interpolation.png").shape == (*grid_size(4, 10), 3)
    assert picture(results / "traversal.png").shape == (*grid_size(4, 9), 3)


def test_resuming_from_a_checkpoint_extends_the_gif(tmp_path: Path):
    first = run(
        tmp_path / "first", "trainer.max_epochs=2", "callbacks.model_checkpoint.save_top_k=-1"
    )
    before = gif_frames(first / "generation.gif")
    assert len(before) == 2
    checkpoints = tmp_path / "first" / "checkpoints"

    resumed = run(
        tmp_path / "resumed", "trainer.max_epochs=3", f"ckpt_path={checkpoints / 'last.ckpt'}"
    )
    after = gif_frames(resumed / "generation.gif")
    assert len(after) == 3
    assert np.array_equal(after[:2], before)  # the frames before the interruption, kept as-is
    assert not (resumed / "sample_0.png").exists()  # epochs 0 and 1 were not trained again

    # From an earlier checkpoint, the GIF keeps only the frames up to that checkpoint's epoch.
    rewound = run(
        tmp_path / "rewound", "trainer.max_epochs=2", f"ckpt_path={checkpoints / 'epoch_000.ckpt'}"
    )
    frames = gif_frames(rewound / "generation.gif")
    assert len(frames) == 2
    assert np.array_equal(frames[0], before[0])


def test_tensorboard_receives_every_picture(tmp_path: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run(tmp_path, "trainer.max_epochs=2", "logger=tensorboard")
    events = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"images": 0})
    events.Reload()
    tags = events.Tags()["images"]
    assert {"reconstruction", "sample", "interpolation", "traversal"} <= set(tags)
    samples = events.Images("sample")
    assert len(samples) == 2
    assert (samples[0].height, samples[0].width) == grid_size(8, 8)
