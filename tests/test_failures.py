"""What a user sees when training diverges or a config value is impossible: one line."""

import json
import re
import sys

import pytest
import torch
from hydra.core.global_hydra import GlobalHydra

from tests.conftest import CONFIG_DIR, ROOT, TINY, compose_config, run_module
from vae_lit.callbacks.non_finite_loss import NonFiniteLossError
from vae_lit.runs.run_dir import LOCK_FILE
from vae_lit.train import main, train


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("vae-lit: error:")]


@pytest.mark.slow
def test_a_nan_loss_stops_training_with_one_line_naming_the_step_and_checkpoint(tmp_path):
    run_dir = tmp_path / "run"
    result = run_module(
        "vae_lit.train",
        *TINY,
        "trainer.max_epochs=3",
        "test=false",
        # the learning rate jumps 1e9-fold after the first epoch: the next steps blow up
        "model.scheduler={_target_:torch.optim.lr_scheduler.ExponentialLR,_partial_:true,"
        "gamma:1e9}",
        f"hydra.run.dir={run_dir}",
        cwd=ROOT,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    [line] = error_lines(result.stderr)
    checkpoint = run_dir / "checkpoints" / "last.ckpt"
    match = re.fullmatch(
        r"vae-lit: error: training loss is (nan|inf) at step (\d+) \(epoch 1, batch \d+\); "
        rf"training stopped\. Last good checkpoint: {re.escape(str(checkpoint))}\. .*",
        line,
    )
    assert match, line
    saved = torch.load(checkpoint, weights_only=True)  # the checkpoint named is a good one
    assert saved["epoch"] == 0 and saved["global_step"] <= int(match[2])
    assert all(torch.isfinite(w).all() for w in saved["state_dict"].values())
    summary = json.loads((run_dir / "run_summary.json").read_text())
    assert summary["status"] == "failed: " + line.removeprefix("vae-lit: error: ")


def test_skip_drops_the_update_of_a_non_finite_batch_then_stops_after_max_skips(tmp_path):
    # beta=inf: every training loss is infinite (validation reports the true bound, beta=1)
    overrides = [
        *TINY,
        "model.objective.kl_schedule.beta=inf",
        "callbacks.non_finite_loss.action=skip",
    ]
    train(compose_config(tmp_path / "a", [*overrides, "callbacks.non_finite_loss.max_skips=4"]))
    saved = torch.load(tmp_path / "a" / "checkpoints" / "last.ckpt", weights_only=True)
    assert saved["global_step"] == 4  # all 4 batches went through the loop...
    assert saved["optimizer_states"][0]["state"] == {}  # ...and none moved a weight

    with pytest.raises(NonFiniteLossError, match=r"at step 2 .* after skipping 2 batches") as e:
        train(
            compose_config(tmp_path / "b", [*overrides, "callbacks.non_finite_loss.max_skips=2"])
        )
    # issue 19.14: the advice was to lower the learning rate, which cannot help here
    assert str(e.value).endswith(
        "model.objective.kl_schedule.beta=inf makes every training loss infinite; give beta a "
        "finite value"
    )


def run_cli_in_process(args: list[str]) -> int:
    """`python -m vae_lit.train args` in this process (no fresh interpreter: 5 s less per call)."""
    GlobalHydra.instance().clear()
    argv = sys.argv
    sys.argv = ["vae_lit.train", f"--config-path={CONFIG_DIR}", *args]
    try:
        main()
    except SystemExit as exit:
        return exit.code
    finally:
        sys.argv = argv
        GlobalHydra.instance().clear()
    return 0


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.net.latent_dim=0", "model.net.latent_dim=0 must be a positive integer"),
        ("data.image_size=8", "data.image_size=8 is too small: the conv VAE needs at least 16"),
        (
            "model.objective.kl_schedule.kind=banana",
            "model.objective.kl_schedule.kind='banana' is unknown",
        ),
        ("data.batch_size=0", "data.batch_size=0 must be a positive integer"),
    ],
)
def test_an_impossible_config_value_is_one_line_naming_the_key(
    tmp_path, capsys, override, message
):
    run_dir = tmp_path / "run"
    assert run_cli_in_process([*TINY, override, f"hydra.run.dir={run_dir}"]) == 2
    stderr = capsys.readouterr().err
    assert "Traceback" not in stderr
    [line] = error_lines(stderr)
    assert line.startswith(f"vae-lit: error: {message}"), line
    # refused at start: nothing was trained, logged or drawn (the lock is the run dir's own)
    written = sorted(p.name for p in run_dir.iterdir() if p.name != LOCK_FILE)
    assert written == [".hydra", "train.log"]


def fp16_fit(tmp_path, overrides: list[str], steps: int = 3, **trainer_args):
    """A few steps under fp16 with its gradient scaler, what precision=auto picks on a V100 or T4
    (on this CPU through Lightning's plugin: `16-mixed` alone is refused on a CPU)."""
    from hydra.utils import instantiate
    from pytorch_lightning import Trainer
    from pytorch_lightning.plugins.precision import MixedPrecision

    cfg = compose_config(tmp_path, [*TINY, *overrides])
    torch.manual_seed(0)
    model, datamodule = instantiate(cfg.model), instantiate(cfg.data)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = Trainer(
        accelerator="cpu",
        plugins=[MixedPrecision("16-mixed", "cpu")],
        max_steps=steps,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        **trainer_args,
    )
    trainer.fit(model, datamodule)
    return trainer, model, before


def test_skip_under_fp16_leaves_the_weights_alone_and_the_scaler_skips(tmp_path):
    from vae_lit.callbacks.non_finite_loss import NonFiniteLoss

    trainer, model, before = fp16_fit(
        tmp_path,
        ["model.objective.kl_schedule.beta=inf"],
        callbacks=[NonFiniteLoss("skip", max_skips=4)],
    )
    assert trainer.global_step == 3
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert trainer.precision_plugin.scaler.get_scale() == 2.0**16 / 2**3  # halved per skip


def test_gradient_clipping_under_fp16_trains(tmp_path):
    """The non-finite-loss message recommends trainer.gradient_clip_val; Lightning cannot clip
    what a fused optimizer unscales itself, so clipping under fp16 runs the unfused Adam."""
    # the first steps overflow while the scaler finds its scale, then the weights move
    trainer, model, before = fp16_fit(tmp_path, [], steps=24, gradient_clip_val=0.01)
    assert trainer.global_step == 24
    assert trainer.optimizers[0].defaults["fused"] is False
    weights = model.state_dict()
    assert all(torch.isfinite(v).all() for v in weights.values() if v.is_floating_point())
    assert any(not torch.equal(before[k], v) for k, v in weights.items())
