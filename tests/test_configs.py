"""Every option of every config group composes, and `trainer.gpus` maps the Lightning 1.x way."""

from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from tests.conftest import CONFIG_DIR, ROOT, compose_config, run_module
from vae_lit.errors import UserError
from vae_lit.runs.trainer import map_gpus

OBJECT_GROUPS = ["data", "model", "trainer", "logger", "callbacks"]


def group_options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))


@pytest.mark.parametrize(
    ("group", "option"), [(g, o) for g in OBJECT_GROUPS + ["debug"] for o in group_options(g)]
)
def test_every_group_option_composes(tmp_path: Path, group: str, option: str):
    overrides = [f"{group}={option}"]
    if option in ("celeba", "folder"):
        overrides.append(f"data.root={tmp_path}")
    cfg = compose_config(tmp_path, overrides)
    resolved = OmegaConf.to_container(cfg, resolve=True)  # every interpolation resolves
    assert resolved["model"]["net"]["image_size"] == resolved["data"]["image_size"]


def test_data_alone_switches_the_model_resolution(tmp_path: Path):
    cfg = compose_config(tmp_path, ["data.image_size=48", "data.channels=1"])
    assert cfg.model.net.image_size == 48 and cfg.model.net.channels == 1
    module = instantiate(cfg.model)
    assert module.decode(torch.zeros(1, module.latent_dim)).shape == (1, 1, 48, 48)


@pytest.mark.parametrize(
    ("gpus", "accelerator", "devices"),
    [(0, "cpu", 1), (1, "gpu", 1), (2, "gpu", 2), (-1, "gpu", -1)],
)
def test_gpus_maps_to_accelerator_and_devices(monkeypatch, tmp_path, gpus, accelerator, devices):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a pretend GPU machine
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda i=0: (8, 0))  # precision: auto
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=0: "A100")
    trainer_cfg = map_gpus(compose_config(tmp_path, [f"trainer.gpus={gpus}"]).trainer)
    assert "gpus" not in trainer_cfg
    assert (trainer_cfg.accelerator, trainer_cfg.devices) == (accelerator, devices)


@pytest.mark.skipif(
    torch.cuda.is_available(), reason="checks the message on a machine without GPU"
)
def test_gpus_without_a_gpu_is_a_one_line_error(tmp_path):
    with pytest.raises(UserError, match="no CUDA GPU was found; run on CPU with trainer=cpu"):
        map_gpus(compose_config(tmp_path, ["trainer.gpus=1"]).trainer)


def test_cfg_job_resolves_the_mission_command(tmp_path):
    result = run_module(
        "vae_lit.train",
        "model=conv",
        "data=celeba",
        "trainer.gpus=1",
        "--cfg",
        "job",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert "gpus: 1" in result.stdout and "image_size: 150" in result.stdout


@pytest.mark.skipif(
    torch.cuda.is_available(), reason="checks the message on a machine without GPU"
)
def test_train_with_gpus_fails_fast_without_traceback(tmp_path):
    result = run_module("vae_lit.train", "trainer.gpus=1", f"paths.log_dir={tmp_path}", cwd=ROOT)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    error_lines = [line for line in result.stderr.splitlines() if "error" in line.lower()]
    assert error_lines == [
        "vae-lit: error: trainer.gpus=1 asks for a GPU but no CUDA GPU was found; "
        "run on CPU with trainer=cpu"
    ]


def test_help_lists_the_config_groups(tmp_path):
    result = run_module("vae_lit.train", "--help", cwd=tmp_path)
    assert result.returncode == 0
    for group in OBJECT_GROUPS + ["experiment", "paths", "hydra"]:
        assert group in result.stdout
