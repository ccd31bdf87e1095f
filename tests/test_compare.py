"""The model comparison: a real comparison sweep (two models, tiny sprites, a few steps) whose
summary carries the evaluation columns and which draws the side-by-side figure."""

import csv
import json
import math
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import ROOT, TINY, run_module
from vae_lit.compare import main, results_table
from vae_lit.runs.sweep_summary import write_summary


@pytest.mark.slow
def test_comparison_sweep_scores_every_model_and_draws_them_side_by_side(tmp_path: Path):
    sweep_dir = tmp_path / "sweep"
    result = run_module(
        "vae_lit.train",
        "experiment=compare_sprites32",
        "+experiment@_global_=vae,iwae,vqvae",  # three of the sweep's models
        *[o for o in TINY if not o.startswith("model.net.latent_dim")],  # the VQ-VAE has none
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
        "+experiment@_global_=vqvae",
    ]
    image_dims = 3 * 16 * 16
    for row in rows:
        assert row["status"] == "finished"
        assert float(row["train+test s"]) > 0 and float(row["eval s"]) > 0
        assert row["device"].startswith("cpu")
        assert 0 <= float(row["MIG"]) <= 1  # sprites have factors
        assert "shape" in row["MIG per factor"]
    for row in rows[:2]:
        assert row["IWAE k"] == "4"
        nll = float(row["IWAE NLL"])
        assert math.isfinite(nll) and nll > 0
        assert float(row["IWAE bits/dim"]) == pytest.approx(nll / (image_dims * math.log(2)))
        assert row["likelihood_kind"] == "continuous"  # the Bernoulli likelihood's bits
    assert rows[2]["IWAE NLL"] == ""  # a VQ-VAE has no IWAE bound
    # each job really trained its own model: the variant's, not the seed's three times
    evaluated = [json.loads((Path(row["run dir"]) / "eval.json").read_text()) for row in rows]
    assert [e.get("objective") for e in evaluated] == ["elbo", "iwae", None]
    assert evaluated[2]["grid_size"] == 4  # 16 px, two stride-2 levels

    # one labelled panel per model: 6x6 samples drawn at 32 px (6*32 + 7*2 padding), 8 px apart
    figure = Image.open(sweep_dir / "compare.png")
    panel = 6 * 32 + 7 * 2
    assert figure.width == 3 * panel + 2 * 8
    assert figure.height > panel
    table = (sweep_dir / "compare.md").read_text().splitlines()
    assert [line.split(" | ")[0] for line in table[2:5]] == ["| vae", "| iwae", "| vqvae"]
    assert "(k=4)" in table[2] and "(continuous)" in table[2]
    # the VQ-VAE scored through the PixelCNN prior its job trained (eval_after_train.prior_epochs)
    assert "n/a" in table[4] and "‡" in table[4] and table[-1].startswith("‡ VQ-VAE")
    assert Path(evaluated[2]["checkpoint"]).parent.parent.name == "prior"


def test_a_job_without_eval_json_leaves_the_evaluation_cells_empty(tmp_path: Path):
    job = tmp_path / "0"
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text("- model.net.latent_dim=4\n")
    (job / "eval.json").write_text("{not json")  # damaged: the table goes on without it
    rows = write_summary(tmp_path)
    assert rows[0]["IWAE NLL"] is None and rows[0]["device"] is None
    header = (tmp_path / "summary.md").read_text().splitlines()[0]
    assert "| IWAE NLL |" in header and "| IWAE bits/dim |" in header and "| device |" in header


def test_a_variant_run_later_in_its_own_sweep_joins_the_table(tmp_path: Path, capsys):
    first, later = tmp_path / "first", tmp_path / "later"
    for sweep_dir, variant, nll in ((first, "vae", 400.0), (later, "logistic_vae", 2000.0)):
        job = sweep_dir / "0"
        (job / ".hydra").mkdir(parents=True)
        (job / ".hydra" / "overrides.yaml").write_text(f"- +experiment@_global_={variant}\n")
        (job / "eval.json").write_text(json.dumps({"iwae_nll": nll, "iwae_k": 50}))
    table = results_table([first, later]).splitlines()
    assert [line.split(" | ")[0] for line in table[2:]] == ["| vae", "| logistic_vae"]
    assert "400.0 (k=50)" in table[2] and "2000.0 (k=50)" in table[3]
    main(["--headline", f"sprites={first}", f"sprites={later}"])  # one name, two sweeps
    headline = capsys.readouterr().out.splitlines()
    assert [line.split(" | ")[0] for line in headline[2:4]] == ["| vae", "| logistic_vae"]
    assert headline[-1].startswith("Bits/dim in bold are true bits")


# experiment files that are not a model: the comparisons themselves and setups of other kinds
# first_run: make train's setup; hvae_large: hvae's GPU-sized preset
NOT_MODELS = {"celeba150", "latent_sweep", "first_run", "hvae_large"}


def test_every_comparison_lists_every_named_model_and_composes_each_job():
    from hydra.types import RunMode

    from tests.test_sweep import compose_with_hydra

    experiments = {p.stem for p in (ROOT / "configs" / "experiment").glob("*.yaml")}
    models = {e for e in experiments if not e.startswith("compare_")} - NOT_MODELS
    for name, image_size in (("sprites32", 32), ("celeba64", 64), ("celeba150", 150)):
        sweep = compose_with_hydra([f"experiment=compare_{name}"])
        assert sweep.hydra.mode == RunMode.MULTIRUN
        listed = sweep.hydra.sweeper.params["+experiment@_global_"].split(",")
        assert set(listed) == models, f"compare_{name} misses {models - set(listed)}"
        assert sweep.eval_after_train.enabled
        job = compose_with_hydra([f"experiment=compare_{name}", "+experiment@_global_=iwae"])
        assert job.data.image_size == image_size
        assert job.model.objective._target_ == "vae_lit.model.objectives.IWAE"
        assert job.trainer.max_epochs == sweep.trainer.max_epochs  # one budget for every model


def fake_sweep(sweep_dir: Path, data: str = "vae_lit.data.SpritesDataModule") -> Path:
    job = sweep_dir / "0"
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text("- model.net.latent_dim=4\n")
    (job / ".hydra" / "config.yaml").write_text(f"data:\n  _target_: {data}\n  image_size: 32\n")
    return sweep_dir


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (lambda t: [str(t / "empty")], "holds no sweep jobs"),
        (lambda t: [str(t / "sweep" / "0")], "holds no sweep jobs"),
        (lambda t: [str(t / "sweep"), "--figure", "/nonexistent_19/x.png"], "its folder"),
        (lambda t: [str(t / "sweep"), "--figure", str(t)], "is a folder"),
        (lambda t: ["--headline", str(t / "sweep")], "needs a name: pass NAME=DIR"),
        (lambda t: [str(t / "sweep"), str(t / "celeba")], "trained on different data"),
    ],
)
def test_a_comparison_of_nothing_or_of_unlike_sweeps_is_one_line(tmp_path: Path, args, message):
    """Issue 19.16: an empty or a run dir printed an empty table with rc 0, --figure
    /nonexistent/x.png created a folder at /, --headline DIR read the current dir, and sprites
    and CelebA sweeps merged into one table."""
    (tmp_path / "empty").mkdir()
    fake_sweep(tmp_path / "sweep")
    fake_sweep(tmp_path / "celeba", "vae_lit.data.CelebADataModule")
    with pytest.raises(SystemExit) as exit:
        main(args(tmp_path))
    assert message in str(exit.value.code)
    assert not Path("/nonexistent_19").exists()


@pytest.mark.parametrize("option", ["--samples", "--nrow", "--sample-px", "--panels-per-row"])
def test_a_zero_count_is_a_usage_error(tmp_path: Path, option, capsys):
    """Issue 19.16: these gave tracebacks."""
    with pytest.raises(SystemExit) as exit:
        main([str(fake_sweep(tmp_path / "sweep")), option, "0"])
    assert exit.value.code == 2
    assert f"argument {option}: 0 must be a positive integer" in capsys.readouterr().err
