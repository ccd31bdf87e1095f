"""Resume after a crash, and runs that repeat exactly."""

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import ROOT, TINY, compose_config, run_module
from tests.test_sweep import wandb_runs
from vae_lit.errors import UserError
from vae_lit.persistence.file_layout import CONFIG_KEY
from vae_lit.runs.resume import newest_readable
from vae_lit.train import sweeper_value, train

EPOCHS = 5
STEPS_PER_EPOCH = 4  # 96 images: 76 for training, batches of 16, the last partial one dropped


def newest_checkpoint(run_dir: Path) -> dict:
    """What resume=auto resumes from: a kill may have cut the newest file short."""
    return newest_readable(list((run_dir / "checkpoints").glob("*.ckpt")))[1]


def start_training(command: list[str]) -> subprocess.Popen:
    env = {**os.environ, "WANDB_MODE": "offline", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "vae_lit.train", *command],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


@pytest.mark.slow
def test_a_killed_run_started_again_resumes_from_its_last_checkpoint(tmp_path: Path):
    run_dir = tmp_path / "run"
    command = [
        *TINY,
        f"trainer.max_epochs={EPOCHS}",
        "logger=[csv,wandb]",
        "test=false",
        "resume=auto",
        f"hydra.run.dir={run_dir}",
        # a scheduler, so its state has to come back too
        "model.scheduler={_target_:torch.optim.lr_scheduler.StepLR,_partial_:true,step_size:1,"
        "gamma:0.9}",
    ]
    last = run_dir / "checkpoints" / "last.ckpt"
    process = start_training(command)
    try:
        deadline = time.monotonic() + 120
        while not last.is_file() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert process.poll() is None, "training ended before it could be killed"
        time.sleep(0.2)  # into the next epoch
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    killed_at = newest_checkpoint(run_dir)["epoch"]
    assert killed_at < EPOCHS - 1

    result = run_module("vae_lit.train", *command, cwd=ROOT)  # the very same command
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"Restoring states from the checkpoint path at {run_dir}/checkpoints" in (
        result.stdout + result.stderr
    )

    final = newest_checkpoint(run_dir)
    assert final["epoch"] == EPOCHS - 1
    assert final["global_step"] == EPOCHS * STEPS_PER_EPOCH
    adam_steps = {float(s["step"]) for s in final["optimizer_states"][0]["state"].values()}
    assert adam_steps == {EPOCHS * STEPS_PER_EPOCH}  # the optimizer went on, not restarted
    assert final["lr_schedulers"][0]["last_epoch"] == EPOCHS
    assert final["optimizer_states"][0]["param_groups"][0]["lr"] == pytest.approx(
        1e-3 * 0.9**EPOCHS
    )

    # the second run trained only the epochs the first one did not finish, and appended its rows to
    # the first run's, which all stay: those of the checkpointed epochs and, when the kill came
    # between an epoch's validation and its checkpoint, that unfinished epoch's (retrained after)
    rows = list(csv.DictReader(open(run_dir / "csv" / "metrics.csv")))
    epochs = [int(r["epoch"]) for r in rows if r.get("val/loss")]
    resumed = epochs[len(epochs) - (EPOCHS - 1 - killed_at) :]
    before_kill = epochs[: len(epochs) - len(resumed)]
    assert resumed == list(range(killed_at + 1, EPOCHS)), epochs
    assert before_kill in (list(range(killed_at + 1)), list(range(killed_at + 2))), epochs
    if (run_dir / "results" / "generation.gif").is_file():  # the GIF callback (issue 4)
        from vae_lit.callbacks.generation_gif import read_gif

        assert len(read_gif(run_dir / "results" / "generation.gif")) == EPOCHS

    runs = wandb_runs(run_dir)  # the killed run and the resumed one: one W&B run, continued
    assert len(runs) == 2 and runs[0]["id"] == runs[1]["id"], runs
    assert (run_dir / "wandb_run_id").read_text().strip() == runs[0]["id"]
    assert runs[1]["exit_code"] == 0


def test_resume_auto_skips_a_last_checkpoint_cut_short_by_a_kill(tmp_path: Path):
    train(compose_config(tmp_path, [*TINY, "test=false"]))
    last = tmp_path / "checkpoints" / "last.ckpt"
    last.write_bytes(last.read_bytes()[:1000])  # killed while writing it
    cfg = compose_config(tmp_path, [*TINY, "test=false", "resume=auto", "trainer.max_epochs=2"])
    train(cfg)  # falls back to epoch_000.ckpt, the newest checkpoint that still loads
    final = torch.load(last, weights_only=True)  # the cut-short file replaced, no last-v1.ckpt
    assert (final["epoch"], final["global_step"]) == (1, 2 * STEPS_PER_EPOCH)


def test_resume_auto_refuses_a_checkpoint_of_another_network(tmp_path: Path):
    train(compose_config(tmp_path, [*TINY, "test=false"]))
    cfg = compose_config(tmp_path, [*TINY, "model.net.latent_dim=8", "resume=auto"])
    with pytest.raises(UserError, match=r"model.net: latent_dim 4 -> 8"):
        train(cfg)


def test_a_checkpoint_from_before_a_network_option_existed_resumes(tmp_path: Path):
    """Checkpoints written before `model.net.fp32_output` existed hold no such key: they resume."""
    train(compose_config(tmp_path, [*TINY, "test=false"]))
    last = tmp_path / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(last, weights_only=True)
    del checkpoint[CONFIG_KEY]["model"]["net"]["fp32_output"]
    torch.save(checkpoint, last)
    train(compose_config(tmp_path, [*TINY, "test=false", "resume=auto", "trainer.max_epochs=2"]))
    final = torch.load(last, weights_only=True)
    assert (final["epoch"], final["global_step"]) == (1, 2 * STEPS_PER_EPOCH)


def test_a_finished_run_started_again_still_gives_the_sweeper_its_metric(tmp_path: Path):
    """Run again after a kill during eval_after_train, a finished run resumes at its end and
    validates nothing; the sweeper still gets val/loss: the best one its checkpoint kept."""
    train(compose_config(tmp_path, [*TINY, "test=false"]))
    checkpoint = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    (best,) = [
        state["best_model_score"]
        for name, state in checkpoint["callbacks"].items()
        if name.startswith("ModelCheckpoint") and state["monitor"] == "val/loss"
    ]
    cfg = compose_config(tmp_path, [*TINY, "test=false", "resume=auto"])
    assert sweeper_value(cfg, train(cfg)) == pytest.approx(float(best))


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("ckpt_path=last", "ckpt_path=last but this run dir holds no readable checkpoint"),
        ("ckpt_path=/nowhere/last.ckpt", "ckpt_path=/nowhere/last.ckpt does not exist"),
        ("resume=always", "resume='always' is unknown; use one of: auto, never"),
    ],
)
def test_a_bad_resume_request_is_refused_before_training(tmp_path: Path, override, message):
    with pytest.raises(UserError, match=message):
        train(compose_config(tmp_path, [*TINY, override]))
    assert not (tmp_path / "checkpoints").exists()


def step_losses(run_dir: Path) -> list[float]:
    rows = list(csv.DictReader(open(run_dir / "csv" / "metrics.csv")))
    return [float(r["train/loss_step"]) for r in rows if r.get("train/loss_step")]


def test_two_seeded_deterministic_runs_give_identical_losses(tmp_path: Path):
    overrides = [
        *TINY,
        "trainer.deterministic=true",
        "trainer.log_every_n_steps=1",
        "callbacks=none",
        "test=false",
    ]
    losses = []
    for name, seed in (("a", 7), ("b", 7), ("c", 8)):
        train(compose_config(tmp_path / name, [*overrides, f"seed={seed}"]))
        losses.append(step_losses(tmp_path / name))
    assert len(losses[0]) == STEPS_PER_EPOCH
    assert losses[0] == losses[1]  # bit for bit
    assert losses[0] != losses[2]  # and the seed is what fixes them


def test_last_ckpt_is_the_newest_epoch_even_when_it_is_not_the_best(tmp_path: Path):
    """Lightning 2.6's save_last rewrites last.ckpt only with a new best; ours after every epoch,
    so resume=auto never goes back to an older epoch. mode=max makes epoch 0 the 'best'."""
    overrides = [*TINY, "trainer.max_epochs=3", "callbacks.model_checkpoint.mode=max"]
    train(compose_config(tmp_path, overrides))
    load = lambda name: torch.load(tmp_path / "checkpoints" / name, weights_only=True)  # noqa: E731
    assert load("epoch_000.ckpt")["epoch"] == 0
    assert load("last.ckpt")["epoch"] == 2 and load("last.ckpt")["global_step"] == 12
    train(compose_config(tmp_path, [*overrides, "trainer.max_epochs=4", "resume=auto"]))
    assert load("last.ckpt")["epoch"] == 3
    assert sorted(p.name for p in (tmp_path / "checkpoints").glob("*.ckpt")) == [
        "epoch_000.ckpt",
        "last.ckpt",
    ]
