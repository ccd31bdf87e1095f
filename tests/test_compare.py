"""The model comparison: a real comparison sweep (two models, tiny sprites, a few steps) whose
summary carries the evaluation columns and which draws the side-by-side figure."""

import csv
import json
import math
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import ROOT, TINY, run_module
from vae_lit.sweep_summary import write_summary


@pytest.mark.slow
def test_comparison_sweep_scores_every_model_and_draws_them_side_by_side(tmp_path: Path):
    sweep_dir = tmp_path / "sweep"
    result = run_module(
        "vae_lit.train",
        "experiment=compare_sprites32",
        "+experiment@_global_=vae,iwae",  # two of the sweep's models
        *TINY,
        "eval_after_train.k=4",
        f"hydra.sweep.dir={sweep_dir}",
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr[-3000:]

    with open(sweep_dir / "summary.csv") as file:
        rows = list(csv.DictReader(file))
    assert [row["overrides"] for row in rows] == [
        "+experiment@_global_=vae",
        "+experiment@_global_=iwae",
    ]
    image_dims = 3 * 16 * 16
    for row in rows:
        assert row["status"] == "finished"
        assert row["IWAE k"] == "4"
        nll = float(row["IWAE NLL"])
        assert math.isfinite(nll) and nll > 0
        assert float(row["IWAE bits/dim"]) == pytest.approx(nll / (image_dims * math.log(2)))
        assert row["likelihood_kind"] == "continuous"  # the Bernoulli likelihood's bits
        assert float(row["train+test s"]) > 0 and float(row["eval s"]) > 0
        assert row["device"].startswith("cpu")
        assert 0 <= float(row["MIG"]) <= 1  # sprites have factors
        assert "shape" in row["MIG per factor"]
    # each job really trained its own model: the variant's objective, not the seed's twice
    objectives = [
        json.loads((Path(row["run dir"]) / "eval.json").read_text())["objective"] for row in rows
    ]
    assert objectives == ["elbo", "iwae"]

    # one labelled panel per model: 6x6 samples drawn at 32 px (6*32 + 7*2 padding), 8 px apart
    figure = Image.open(sweep_dir / "compare.png")
    panel = 6 * 32 + 7 * 2
    assert figure.width == 2 * panel + 8
    assert figure.height > panel
    table = (sweep_dir / "compare.md").read_text().splitlines()
    assert [line.split(" | ")[0] for line in table[2:]] == ["| vae", "| iwae"]
    assert "(k=4)" in table[2] and "(continuous)" in table[2]


def test_a_job_without_eval_json_leaves_the_evaluation_cells_empty(tmp_path: Path):
    job = tmp_path / "0"
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text("- model.net.latent_dim=4\n")
    (job / "eval.json").write_text("{not json")  # damaged: the table goes on without it
    rows = write_summary(tmp_path)
    assert rows[0]["IWAE NLL"] is None and rows[0]["device"] is None
    header = (tmp_path / "summary.md").read_text().splitlines()[0]
    assert "| IWAE NLL |" in header and "| IWAE bits/dim |" in header and "| device |" in header
