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
