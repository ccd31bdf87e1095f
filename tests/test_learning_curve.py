"""The learning curve of docs/RESULTS.md: the timed_checkpoint callback keeps checkpoints as a run
trains, vae_lit.eval scores them, docs/learning_curve.py draws bits/dim against wall time."""

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import ROOT, TINY, run_module
from vae_lit.callbacks.timed_checkpoint import TimedCheckpoint
from vae_lit.errors import UserError

CURVE_SCRIPT = ROOT / "docs" / "learning_curve.py"


def train_tiny(run_dir: Path, *extra: str) -> None:
    done = run_module(
        "vae_lit.train", *TINY, "data.num_images=160", f"hydra.run.dir={run_dir}", *extra, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr[-3000:]


def run_started(run: Path) -> float:
    return (run / ".hydra" / "config.yaml").stat().st_mtime


def score(checkpoint: Path) -> None:
    scored = run_module(
        "vae_lit.eval",
        f"ckpt={checkpoint}",
        f"eval.json={checkpoint}.eval.json",
        "eval.k=2",
        "eval.samplers=[]",
        "eval.log_to_run=false",
        cwd=ROOT,
    )
    assert scored.returncode == 0, scored.stderr[-3000:]


def curve_rows(stdout: str, name: str) -> list[tuple[float, int]]:
    """(minutes, step) of each of the printed table's rows of line `name`."""
    rows = re.findall(rf"^\| {re.escape(name)} \| ([\d.]+) \| (\d+) \|", stdout, re.M)
    return [(float(minutes), int(step)) for minutes, step in rows]


def test_timed_checkpoints_are_kept_only_with_the_callback_and_draw_a_curve(tmp_path: Path):
    timed = ["callbacks=[default,timed_checkpoint]"]
    timed += ["callbacks.timed_checkpoint.minutes=0.00001"]  # every step
    first, second = tmp_path / "first", tmp_path / "second"
    train_tiny(first, *timed)
    train_tiny(tmp_path / "plain")
    train_tiny(second, *timed)
    assert not (tmp_path / "plain" / "checkpoints" / "timed").exists()  # the switch is off
    kept = sorted((second / "checkpoints" / "timed").glob("step_*.ckpt"))
    assert len(kept) >= 4, kept  # 128 training images in batches of 16: a checkpoint per step
    for checkpoint in [*kept[:2], *sorted((first / "checkpoints" / "timed").glob("*.ckpt"))[:1]]:
        score(checkpoint)  # scored ones become points, the others are left out

    figure = tmp_path / "curve.png"
    lines = [f"alone={second}", f"chained={first},{second}"]
    drawn = subprocess.run(
        [sys.executable, str(CURVE_SCRIPT), str(figure), *lines],
        capture_output=True,
        text=True,
    )
    assert drawn.returncode == 0, drawn.stderr
    alone, chained = curve_rows(drawn.stdout, "alone"), curve_rows(drawn.stdout, "chained")
    assert [step for _, step in alone] == [int(p.stem.split("_")[1]) for p in kept[:2]]
    assert [minutes for minutes, _ in alone] == sorted(minutes for minutes, _ in alone)
    # a chain's times count from its first run's start: the second run's points come later by
    # the time between the two starts
    between = (run_started(second) - run_started(first)) / 60
    assert len(chained) == 3 and between > 0
    for (alone_minutes, _), (chained_minutes, _) in zip(alone, chained[1:], strict=True):
        assert abs(chained_minutes - (alone_minutes + between)) < 0.06  # printed to 0.1 minute
    picture = np.asarray(Image.open(figure).convert("RGB"))
    assert (picture != 255).any(axis=2).mean() > 0.01  # axes, lines and labels drawn


def test_the_curve_script_names_what_is_wrong_in_one_line(tmp_path: Path):
    def draw(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, str(CURVE_SCRIPT), str(tmp_path / "c.png"), *args],
            capture_output=True,
            text=True,
        )

    no_name = draw(str(tmp_path))
    assert no_name.returncode != 0 and "needs a name: pass NAME=RUN_DIR" in no_name.stderr
    not_a_run = draw(f"x={tmp_path}")
    assert not_a_run.returncode != 0
    assert f"{tmp_path} is not a run dir" in not_a_run.stderr
    assert "Traceback" not in no_name.stderr + not_a_run.stderr


def test_a_timed_checkpoint_interval_that_is_not_positive_is_refused_in_one_line(tmp_path: Path):
    with pytest.raises(UserError, match=r"^callbacks.timed_checkpoint.minutes=0 must be a posi"):
        TimedCheckpoint(str(tmp_path), minutes=0)
