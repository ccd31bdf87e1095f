"""Hydra multirun and the Optuna sweeper, run for real as subprocesses on tiny sprites."""

import csv
import importlib.util
import math
import struct
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT, TINY, run_module

NO_LATENT = [o for o in TINY if not o.startswith("model.net.latent_dim")]
needs_optuna = pytest.mark.skipif(
    importlib.util.find_spec("hydra_plugins.hydra_optuna_sweeper") is None,
    reason="hydra-optuna-sweeper is not installed (pip install -e '.[sweep]')",
)


def wandb_records(run_file: Path):
    """The protobuf records of an offline W&B run file (`run-<id>.wandb`, LevelDB log format)."""
    from wandb.proto import wandb_internal_pb2

    data, block = run_file.read_bytes(), 32768
    assert data[:4] == b":W&B", run_file
    pos, pending = 7, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # block trailer: zero padding
            pos += block - pos % block
            continue
        _checksum, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0:
            pos += block - pos % block
            continue
        pending += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # full record, or the last piece of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            yield record
            pending = b""


def wandb_runs(run_dir: Path) -> list[dict]:
    """Each offline W&B run under `run_dir/wandb`: id, group, and exit code (None: not finished).
    The id is also in the file name: a killed process may leave a file without records."""
    runs = []
    for run_file in sorted(run_dir.glob("wandb/offline-run-*/run-*.wandb")):
        info = {"id": run_file.stem.removeprefix("run-"), "group": None, "exit_code": None}
        for record in wandb_records(run_file):
            kind = record.WhichOneof("record_type")
            if kind == "run":
                info["id"], info["group"] = record.run.run_id, record.run.run_group
            elif kind == "exit":
                info["exit_code"] = record.exit.exit_code
        runs.append(info)
    return runs


def read_summary(sweep_dir: Path) -> list[dict]:
    with open(sweep_dir / "summary.csv") as file:
        return list(csv.DictReader(file))


@pytest.mark.slow
def test_two_job_multirun_gives_two_runs_one_wandb_group_and_a_summary(tmp_path: Path):
    sweep_dir = tmp_path / "sweep"
    result = run_module(
        "vae_lit.train",
        "-m",
        *NO_LATENT,
        "model.net.latent_dim=4,8",
        "logger=[csv,wandb]",
        "test=false",
        f"hydra.sweep.dir={sweep_dir}",
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr[-3000:]

    for job in ("0", "1"):
        assert (sweep_dir / job / "checkpoints" / "last.ckpt").is_file()
    rows = read_summary(sweep_dir)
    assert [r["overrides"] for r in rows] == ["model.net.latent_dim=4", "model.net.latent_dim=8"]
    for row, job in zip(rows, ("0", "1"), strict=True):
        assert math.isfinite(float(row["best val/loss"])) and float(row["best val/loss"]) > 0
        assert float(row["final val/kl"]) >= 0
        assert (row["epochs"], row["status"]) == ("1", "finished")
        assert Path(row["run dir"]) == sweep_dir / job
    table = (sweep_dir / "summary.md").read_text()
    assert "| model.net.latent_dim=8 |" in table
    assert table in result.stdout  # the same table is printed at the end

    runs = [run for job in ("0", "1") for run in wandb_runs(sweep_dir / job)]
    assert len(runs) == 2, runs  # one W&B run per job, not one shared run (Lightning #5212)
    assert runs[0]["id"] != runs[1]["id"]
    assert runs[0]["group"] == runs[1]["group"] == sweep_dir.name
    assert [run["exit_code"] for run in runs] == [0, 0]  # each finished before the next began


@pytest.mark.slow
@needs_optuna
def test_optuna_runs_three_trials_and_a_diverged_trial_does_not_stop_it(tmp_path: Path):
    sweep_dir = tmp_path / "optuna"
    result = run_module(
        "vae_lit.train",
        "hparams_search=optuna",
        *NO_LATENT,
        "test=false",
        "hydra.sweeper.n_trials=3",
        # beta=inf makes the loss infinite at the first step: that trial fails, the others go on
        "model.objective.kl_schedule.beta=choice(1.0,inf)",
        f"hydra.sweep.dir={sweep_dir}",
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr[-3000:]

    rows = read_summary(sweep_dir)
    assert len(rows) == 3
    failed = [r for r in rows if r["status"].startswith("failed: training loss is inf")]
    finished = [r for r in rows if r["status"] == "finished"]
    assert failed and finished, rows
    assert all("model.objective.kl_schedule.beta=inf" in r["overrides"] for r in failed)
    for row in rows:  # every trial drew its own latent size and learning rate
        assert "model.net.latent_dim=" in row["overrides"]
        assert "model.optimizer.lr=" in row["overrides"]

    results = yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())
    best = min(float(r["best val/loss"]) for r in finished)
    assert results["best_value"] == pytest.approx(best, rel=1e-6)
    assert set(results["best_params"]) == {
        "model.net.latent_dim",
        "model.optimizer.lr",
        "model.objective.kl_schedule.beta",
    }


def compose_with_hydra(overrides: list[str]):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from tests.conftest import CONFIG_DIR

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(config_name="train", overrides=overrides, return_hydra_config=True)


def test_experiments_compose_as_documented():
    from hydra.types import RunMode

    celeba = compose_with_hydra(["experiment=celeba150"])
    assert celeba.data._target_ == "vae_lit.data.CelebADataModule"
    assert (celeba.data.image_size, celeba.model.net.image_size) == (150, 150)
    assert (celeba.trainer.max_epochs, celeba.model._target_) == (
        28,
        "vae_lit.model.vae_module.VAELitModule",
    )

    sweep = compose_with_hydra(["experiment=latent_sweep"])
    assert sweep.hydra.mode == RunMode.MULTIRUN
    assert sweep.hydra.sweeper.params["model.net.latent_dim"] == "16,32,64,128"


@needs_optuna
def test_the_optuna_search_composes_as_documented():
    search = compose_with_hydra(["hparams_search=optuna"])
    assert search.hydra.sweeper.direction == "minimize" and search.optimized_metric == "val/loss"
    assert set(search.hydra.sweeper.params) == {
        "model.net.latent_dim",
        "model.optimizer.lr",
        "model.objective.kl_schedule.beta",
    }


@pytest.mark.slow
def test_a_failing_job_is_a_failed_row_and_the_sweep_goes_on_to_its_summary(tmp_path: Path):
    """Issue 19.1: job 0's config error (k=0) used to end the sweep with rc 2 before job 1 ran,
    and no summary was written."""
    sweep_dir = tmp_path / "sweep"
    result = run_module(
        "vae_lit.train",
        "-m",
        *TINY,
        "trainer.limit_train_batches=2",
        "trainer.limit_val_batches=1",
        "trainer.limit_test_batches=1",
        "model/objective=iwae",
        "model.objective.k=0,2",
        f"hydra.sweep.dir={sweep_dir}",
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "job 0 of 2 will fail: model.objective.k=0" in result.stderr  # before any job ran
    assert "job 0 failed: model.objective.k=0" in result.stderr
    assert f"its log: {sweep_dir / '0' / 'train.log'}" in result.stderr
    assert "Traceback" not in result.stderr
    rows = read_summary(sweep_dir)
    assert [row["status"].split(":")[0] for row in rows] == ["failed", "finished"]
    assert "model.objective.k=0" in rows[0]["status"]
    assert (sweep_dir / "summary.md").is_file()
    assert "1 of 2 jobs did not finish: job 0" in result.stdout


@pytest.mark.slow
def test_a_job_that_crashes_is_a_failed_row_with_its_traceback_in_its_log(tmp_path: Path):
    """Issue 19.1: an ordinary exception in one job (`model/prior=vamp model.prior.image_size=
    32,64`, a config check since; here a TypeError from a constructor, which may be a bug) ended
    the sweep in a traceback, with no summary."""
    sweep_dir = tmp_path / "sweep"
    result = run_module(
        "vae_lit.train",
        "-m",
        *TINY,
        "trainer.limit_train_batches=2",
        "trainer.limit_val_batches=1",
        "test=false",
        "model.prior.latent_dim=4,[4]",
        f"hydra.sweep.dir={sweep_dir}",
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "job 1 failed: " in result.stderr
    rows = read_summary(sweep_dir)
    assert [row["status"].split(":")[0] for row in rows] == ["finished", "failed"]
    assert "Traceback" in (sweep_dir / "1" / "train.log").read_text()
