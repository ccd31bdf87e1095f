"""`python -m vae_lit.eval` on a real tiny checkpoint, and the cheap test metrics of `train`."""

import json
from pathlib import Path

import pytest

from tests.conftest import ROOT, TINY, compose_config, run_module
from vae_lit.errors import UserError
from vae_lit.eval import evaluate
from vae_lit.evaluation.checkpoint_eval import log_to_run_loggers

EVAL_KEYS = {"neg_elbo", "iwae_nll", "bits_per_dim", "mse", "psnr", "active_units", "latent_dim"}


def test_train_ends_with_the_cheap_metrics_on_the_test_split(tiny_run):
    _, metrics = tiny_run
    assert {"test/mse", "test/psnr", "test/active_units"} <= metrics.keys()
    assert 0 < metrics["test/mse"] < 1 and metrics["test/psnr"] > 0
    assert 0 <= metrics["test/active_units"] <= 4


def test_eval_prints_the_table_and_writes_the_json(tiny_run, tmp_path: Path, capsys):
    ckpt, _ = tiny_run
    out = tmp_path / "eval.json"
    cfg = compose_config(
        tmp_path, [f"ckpt={ckpt}", "eval.k=20", f"eval.json={out}"], config_name="eval"
    )
    metrics = evaluate(cfg)
    saved = json.loads(out.read_text())
    assert EVAL_KEYS | {"mig"} <= saved.keys()
    assert saved == json.loads(json.dumps(metrics))
    assert saved["latent_dim"] == 4 and 0 <= saved["active_units"] <= 4
    assert saved["iwae_nll"] <= saved["neg_elbo"] + 1.0  # the IWAE bound is the tighter one
    assert 0 <= saved["mig"] <= 1 and set(saved["mig_per_factor"]) <= {
        "shape",
        "colour",
        "scale",
        "rotation",
        "x",
        "y",
    }
    assert saved["num_images"] == 10 and saved["split"] == "test"  # 10% of TINY's 96 images
    table = capsys.readouterr().out
    assert "IWAE NLL (k=20)" in table and "active units" in table and "MIG" in table


@pytest.mark.slow
def test_eval_from_the_command_line_writes_next_to_the_checkpoint(tiny_run, tmp_path: Path):
    ckpt, _ = tiny_run
    result = run_module(
        "vae_lit.eval",
        f"ckpt={ckpt}",
        "eval.k=2",
        "eval.fid=true",
        f"paths.log_dir={tmp_path}",
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "bits per dim" in result.stdout
    saved = json.loads((ckpt.parent / "eval.json").read_text())
    assert EVAL_KEYS <= saved.keys() and saved["iwae_k"] == 2
    # no Inception weights here: one clear line, no download, no FID in the results
    skipped = [line for line in (result.stdout + result.stderr).splitlines() if "FID" in line]
    assert len(skipped) == 1 and "FID skipped" in skipped[0], skipped
    assert "fid" not in saved
    # the run's CSV log is left alone (eval.json is the record)
    assert "eval/" not in (ckpt.parents[1] / "csv" / "metrics.csv").read_text()


@pytest.mark.slow
def test_a_missing_checkpoint_is_a_one_line_error(tmp_path: Path):
    result = run_module("vae_lit.eval", f"ckpt={tmp_path}/nope.ckpt", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"vae-lit: error: checkpoint {tmp_path}/nope.ckpt does not exist; "
        "pass ckpt=<run dir>/checkpoints/last.ckpt"
    ]


def test_eval_without_a_checkpoint_says_how_to_pass_one(tmp_path: Path):
    with pytest.raises(UserError, match="ckpt is not set; pass ckpt="):
        evaluate(compose_config(tmp_path, [], config_name="eval"))


def test_data_of_another_size_is_refused(tiny_run, tmp_path: Path):
    ckpt, _ = tiny_run
    cfg = compose_config(
        tmp_path,
        [f"ckpt={ckpt}", "data=sprites", "data.num_images=10", "data.image_size=20"],
        config_name="eval",
    )
    with pytest.raises(UserError, match="data.image_size=20 .* do not match the model"):
        evaluate(cfg)


def test_eval_metrics_reach_the_runs_tensorboard(tmp_path: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_cfg = compose_config(tmp_path, [*TINY, "logger=tensorboard"])
    (tmp_path / "tensorboard").mkdir()  # as the training run left it
    log_to_run_loggers(run_cfg, {"iwae_nll": 123.5, "split": "test", "active_units": 3}, step=7)
    events = EventAccumulator(str(tmp_path / "tensorboard")).Reload()
    assert {"eval/iwae_nll", "eval/active_units"} <= set(events.Tags()["scalars"])
    (point,) = events.Scalars("eval/iwae_nll")
    assert (point.step, point.value) == (7, 123.5)


def test_max_decodes_auto_gives_the_iwae_passes_half_the_free_gpu_memory(
    tiny_cfg, tmp_path, monkeypatch
):
    """eval max_decodes=auto (the default): 512 images decoded at once on a CPU; on a CUDA GPU a
    probe pass measures what one decode takes and the passes get half of what is free, cached
    blocks included. A number is taken as it is; 0 is refused in one line. (torch.cuda's
    memory queries answer as a GPU where the probe's 16 decodes peak at 48 MB and 9 GiB are free
    plus 1 GiB cached; the probe itself runs on the CPU.)"""
    import torch
    from hydra.utils import instantiate

    from vae_lit.evaluation.vae import decodes_per_pass
    from vae_lit.runs.config_checks import check_eval_options

    module = instantiate(tiny_cfg.model)
    images = torch.rand(4, 3, 16, 16)
    cpu, cuda = torch.device("cpu"), torch.device("cuda", 0)
    assert decodes_per_pass(64, module, images, 100, cpu) == 64
    assert decodes_per_pass("auto", module, images, 100, cpu) == 512

    allocated, probe_peak = 100 * 2**20, 100 * 2**20 + 16 * 3 * 2**20
    for name, answer in {
        "synchronize": None,
        "reset_peak_memory_stats": None,
        "memory_allocated": allocated,
        "max_memory_allocated": probe_peak,
        "memory_reserved": allocated + 2**30,
        "mem_get_info": (9 * 2**30, 80 * 2**30),
    }.items():
        monkeypatch.setattr(torch.cuda, name, lambda device=None, answer=answer: answer)
    assert decodes_per_pass("auto", module, images, 100, cuda) == int(0.5 * 10 * 2**30 / 2**20 / 3)

    for value, fine in (("auto", True), (256, True), (0, False)):
        cfg = compose_config(tmp_path, ["ckpt=x", f"eval.max_decodes={value}"], "eval")
        if fine:
            check_eval_options(cfg)
        else:
            with pytest.raises(
                UserError, match=r"^eval.max_decodes=0 must be a positive integer, or auto$"
            ):
                check_eval_options(cfg)
