"""What a new user sees first: quick-test overrides without `+`, a console without warnings, a run
that ends by saying where its pictures and numbers are, the foreground IoU that says whether the
shapes were learned, and a sweep summary with each job's test metrics."""

import csv
import json
import re
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

from tests.conftest import ROOT, TINY, compose_config, console_noise, run_module
from vae_lit.eval import evaluate
from vae_lit.metrics.foreground_iou import foreground_iou_per_image
from vae_lit.persistence.checkpoint import load_checkpoint
from vae_lit.runs.sweep_summary import TEST_COLUMNS
from vae_lit.train import train

NO_LIKELIHOOD = [o for o in TINY if not o.startswith("model/likelihood")]


def test_foreground_iou_matches_a_hand_computation():
    images = torch.zeros(3, 3, 2, 3)
    reconstructions = torch.zeros(3, 3, 2, 3)
    # image 0: foreground where any one channel exceeds 0.3; exactly 0.3 is background
    images[0, 0, 0, 0] = 0.9  # red
    images[0, 1, 0, 1] = 0.5  # green
    images[0, 2, 1, 2] = 0.31  # blue, just above
    images[0, :, 1, 0] = 0.3  # grey at the threshold: background
    reconstructions[0, 2, 0, 0] = 0.8  # another colour, same place: still foreground
    reconstructions[0, :, 1, 1] = 0.6
    reconstructions[0, 0, 1, 2] = 0.29  # just below: background
    # image 1: both empty, a perfect match; image 2: the reconstruction invents one pixel
    reconstructions[2, 1, 0, 0] = 1.0

    iou = foreground_iou_per_image(images, reconstructions)

    # image 0: masks {(0,0), (0,1), (1,2)} and {(0,0), (1,1)}: 1 shared pixel of 4
    assert iou.tolist() == pytest.approx([1 / 4, 1.0, 0.0])


def test_limit_train_batches_needs_no_plus(tmp_path: Path):
    cfg = compose_config(
        tmp_path, [*TINY, "trainer.limit_train_batches=3", "trainer.max_epochs=2", "test=false"]
    )
    train(cfg)
    summary = json.loads((tmp_path / "run_summary.json").read_text())
    assert summary["global_step"] == 6  # 3 of the 4 training batches, twice


def test_test_metrics_score_the_shapes_and_match_a_recomputation(tiny_run, tmp_path: Path):
    ckpt, metrics = tiny_run
    module, run_cfg = load_checkpoint(ckpt)
    datamodule = instantiate(run_cfg.data)
    datamodule.setup("test")
    images = torch.cat(list(datamodule.test_dataloader())).float() / 255
    expected = foreground_iou_per_image(images, module.reconstruct(images)).mean().item()

    assert metrics["test/foreground_iou"] == pytest.approx(expected, abs=2e-3)
    assert 0 <= metrics["test/mig"] <= 1  # sprites have factors

    out = tmp_path / "eval.json"
    cfg = compose_config(
        tmp_path, [f"ckpt={ckpt}", "eval.k=2", f"eval.json={out}"], config_name="eval"
    )
    assert evaluate(cfg)["foreground_iou"] == pytest.approx(expected, abs=2e-3)


def test_eval_shows_a_progress_bar_with_the_time_left(tiny_run, tmp_path: Path, capsys):
    ckpt, _ = tiny_run
    cfg = compose_config(
        tmp_path,
        [f"ckpt={ckpt}", "eval.k=2", f"eval.json={tmp_path / 'eval.json'}"],
        config_name="eval",
    )
    evaluate(cfg)
    out = capsys.readouterr().out
    # rich's track(): description, bar, percentage, then the time left (h:mm:ss)
    assert re.search(r"Evaluating \(IWAE k=2\) .* 100% \d+:\d\d:\d\d", out), out
    assert "foreground IoU" in out


def report_section(lines: list[str], title: str) -> list[str]:
    """The indented lines under a heading of the run report."""
    start = next(i for i, line in enumerate(lines) if line.startswith(title))
    section = []
    for line in lines[start + 1 :]:
        if not line.startswith("  "):
            break
        section.append(line.strip())
    return section


@pytest.mark.slow
def test_a_default_run_prints_no_warning_and_ends_with_its_report(tmp_path: Path):
    run_dir = tmp_path / "run"
    result = run_module(
        "vae_lit.train",  # make train's composition (W&B offline, callbacks), less data
        "experiment=first_run",
        "data.num_images=400",  # 320 training images: 5 batches of the default 64
        "data.image_size=16",
        "trainer.limit_train_batches=3",
        "trainer.max_epochs=2",
        "trainer.log_every_n_steps=1",
        f"hydra.run.dir={run_dir}",
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert console_noise(result) == []
    assert "FLOPs" not in result.stdout and "Parameters:" in result.stdout

    out = result.stdout.splitlines()
    pictures = [Path(p) for p in report_section(out, "Pictures")]
    assert all(p.is_file() for p in pictures), pictures
    assert {p.name for p in pictures} == {
        "reconstruction_1.png",  # the last epoch's, not every epoch's
        "sample_1.png",
        "generation.gif",
        "interpolation.png",
        "traversal.png",
    }
    for row in ("negative ELBO", "bits per dim", "PSNR", "foreground IoU", "active units", "MIG"):
        assert any(line.startswith(f"│ {row}") for line in out), row
    wandb = report_section(out, "W&B run")
    sync = [line.split("wandb sync ")[1] for line in wandb if "wandb sync " in line]
    assert len(sync) == 1 and Path(sync[0]).parent == run_dir / "wandb"
    assert any(Path(sync[0]).glob("run-*.wandb"))  # what wandb sync uploads
    assert f"wandb leet {run_dir / 'wandb'}" in wandb[-1]

    tested = json.loads((run_dir / "test_metrics.json").read_text())
    # experiment=first_run's discretized logistic: its bits per dimension are true bits
    assert tested["likelihood_kind"] == "discrete" and 0 <= tested["test/foreground_iou"] <= 1
    assert json.loads((run_dir / "run_summary.json").read_text())["global_step"] == 6


@pytest.mark.slow
def test_sweep_summary_gains_each_jobs_test_metrics(tmp_path: Path):
    sweep_dir = tmp_path / "sweep"
    result = run_module(
        "vae_lit.train",
        "-m",
        *NO_LIKELIHOOD,
        "model/likelihood=bernoulli,discretized_logistic",
        f"hydra.sweep.dir={sweep_dir}",
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr[-3000:]

    with open(sweep_dir / "summary.csv") as file:
        rows = list(csv.DictReader(file))
    assert [row["likelihood_kind"] for row in rows] == ["continuous", "discrete"]
    for row, job in zip(rows, ("0", "1"), strict=True):
        tested = json.loads((sweep_dir / job / "test_metrics.json").read_text())
        assert float(row["test neg ELBO"]) == pytest.approx(tested["test/loss"])
        assert float(row["test bits/dim"]) == pytest.approx(tested["test/bits_per_dim"])
        assert float(row["test MSE"]) == pytest.approx(tested["test/mse"])
        assert float(row["test PSNR"]) == pytest.approx(tested["test/psnr"])
        assert 0 <= int(row["active units"]) <= 4  # TINY's latent_dim
        assert 0 <= float(row["foreground IoU"]) <= 1
        assert 0 <= float(row["MIG"]) <= 1
    header = (sweep_dir / "summary.md").read_text().splitlines()[0]
    assert all(f"| {column} |" in header for column in TEST_COLUMNS)
