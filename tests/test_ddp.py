"""Lightning DDP under Hydra: 2 CPU processes (gloo), launched from the command line."""

import csv
import importlib.util
import json
import os
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from pytorch_lightning import Trainer

from tests.conftest import CONFIG_DIR, ROOT, TINY, compose_config, run_module
from tests.test_sweep import wandb_runs
from vae_lit.errors import UserError
from vae_lit.model.vae_module import to_float_images
from vae_lit.persistence.checkpoint import load_checkpoint
from vae_lit.runs.trainer import check_launcher


def full_split_kl(checkpoint: Path) -> float:
    """Mean KL per image over the whole validation split, with the checkpoint's weights."""
    module, config = load_checkpoint(checkpoint)
    datamodule = instantiate(config.data)
    datamodule.setup("fit")
    images = to_float_images(datamodule.splits["val"][list(range(len(datamodule.splits["val"])))])
    with torch.no_grad():
        return float(module(images).kl)  # the plain negative ELBO's terms


@pytest.mark.slow
def test_ddp_with_two_cpu_processes_writes_one_run(tmp_path: Path):
    run_dir = tmp_path / "run"
    result = run_module(
        "vae_lit.train",
        *TINY,
        "trainer=ddp",
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        "logger=[csv,wandb]",
        "test=false",
        f"hydra.run.dir={run_dir}",
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stdout + result.stderr
    assert "Initializing distributed: GLOBAL_RANK: 1, MEMBER: 2/2" in output

    # one run dir: rank 1 wrote into rank 0's dir, and only rank 0 wrote files
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == [
        "epoch_000.ckpt",
        "last.ckpt",
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    if (run_dir / "results").is_dir():  # the picture callbacks (issue 4)
        pictures = sorted(p.name for p in (run_dir / "results").glob("*_0.png"))
        assert pictures == ["reconstruction_0.png", "sample_0.png"]
        from vae_lit.callbacks.generation_gif import read_gif

        assert len(read_gif(run_dir / "results" / "generation.gif")) == 1
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 0
    assert len(wandb_runs(run_dir)) == 1

    # val metrics are synced: the logged KL is the whole split's, not rank 0's half of it
    rows = list(csv.DictReader(open(run_dir / "csv" / "metrics.csv")))
    logged_kl = [float(r["val/kl"]) for r in rows if r.get("val/kl")]
    assert len(logged_kl) == 1
    assert logged_kl[0] == pytest.approx(full_split_kl(run_dir / "checkpoints" / "last.ckpt"))


def test_ddp_that_relaunches_the_command_is_refused_inside_a_multirun():
    trainer = Trainer(strategy="ddp", accelerator="cpu", devices=2, logger=False)
    with pytest.raises(UserError, match="use trainer.strategy=ddp_spawn for sweeps"):
        check_launcher(trainer, in_multirun=True)
    check_launcher(trainer, in_multirun=False)  # a single run relaunches itself fine
    spawn = Trainer(strategy="ddp_spawn", accelerator="cpu", devices=2, logger=False)
    check_launcher(spawn, in_multirun=True)


@pytest.mark.skipif(
    importlib.util.find_spec("hydra_plugins.hydra_submitit_launcher") is None,
    reason="hydra-submitit-launcher is not installed (pip install -e '.[sweep]')",
)
def test_slurm_launcher_asks_one_task_per_gpu_on_every_node(tmp_path: Path, monkeypatch):
    # No cluster here: stand-ins for SLURM's tools let submitit write the real sbatch script,
    # then the submission fails as it would on a machine without SLURM.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 0\n")
    (bin_dir / "sbatch").write_text("#!/bin/sh\necho 'sbatch: no cluster here' >&2\nexit 1\n")
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")

    sweep_dir = tmp_path / "sweep"
    overrides = [
        "hydra/launcher=submitit_slurm",
        "hydra.launcher.partition=gpu",
        "hydra.launcher.timeout_min=90",
        "trainer=ddp",
        "trainer.devices=4",
        "trainer.num_nodes=2",
        f"hydra.sweep.dir={sweep_dir}",
    ]
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides, return_hydra_config=True)
    HydraConfig().set_config(cfg)
    launcher = instantiate(cfg.hydra.launcher)
    launcher.setup(hydra_context=None, task_function=print, config=cfg)
    with pytest.raises(Exception, match="sbatch: no cluster here"):
        launcher.launch([["model.net.latent_dim=16"]], initial_job_idx=0)

    [script] = (sweep_dir / ".submitit").glob(".submission_file_*.sh")
    sbatch = {line for line in script.read_text().splitlines() if line.startswith("#SBATCH")}
    assert {
        "#SBATCH --nodes=2",
        "#SBATCH --ntasks-per-node=4",  # srun starts every rank: Lightning relaunches nothing
        "#SBATCH --gpus-per-node=4",
        "#SBATCH --partition=gpu",
        "#SBATCH --time=90",
        "#SBATCH --signal=USR1@120",  # Lightning's requeue signal, not submitit's USR2
    } <= sbatch


@pytest.mark.slow
@pytest.mark.parametrize(
    "overrides",
    [
        ["trainer.strategy=ddp", "data.on_device=true"],  # rank 0's loader held half the split
        ["trainer.strategy=ddp_spawn"],  # the parent never set its datamodule up
    ],
    ids=["ddp_on_device", "ddp_spawn"],
)
def test_eval_after_train_under_ddp_covers_the_whole_test_split(tmp_path: Path, overrides):
    run_dir = tmp_path / "run"
    result = run_module(
        "vae_lit.train",
        *TINY,
        "trainer=ddp",
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        *overrides,
        "test=false",
        "eval_after_train.enabled=true",
        "eval_after_train.k=2",
        f"hydra.run.dir={run_dir}",
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((run_dir / "eval.json").read_text())
    cfg = compose_config(tmp_path / "compose", TINY)
    datamodule = instantiate(cfg.data)
    datamodule.setup("test")
    assert report["num_images"] == len(datamodule.splits["test"]) > 2
