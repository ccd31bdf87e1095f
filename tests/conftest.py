"""Shared fixtures: the real Hydra config, composed with overrides that make runs tiny."""

import os
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

import vae_lit  # noqa: F401  (registers the config resolvers, as every entry point does)

ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = ROOT / "configs"
SHARED_DATA = ROOT.parent / "shared" / "data"
CELEBA_SAMPLE = SHARED_DATA / "celeba_sample"

# Tiny sprites and few steps: each run takes seconds on 2 cores.
TINY = [
    "data.num_images=96",
    "data.image_size=16",
    "data.batch_size=16",
    "model.net.latent_dim=4",
    "model.net.hidden_channels=[8,16]",
    "trainer=cpu",
    "trainer.max_epochs=1",
    "trainer.precision=32-true",  # tests compare logged numbers with fp32 recomputations
    "logger=csv",
]


def compose_config(
    output_dir: Path, overrides: list[str] | None = None, config_name: str = "train"
) -> DictConfig:
    """Compose the real config as `python -m vae_lit.<name>` would, output in `output_dir`."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name=config_name, overrides=overrides or [], return_hydra_config=True)
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
        cfg.paths.log_dir = str(output_dir / "logs")
        cfg.hydra.runtime.output_dir = str(output_dir)
    HydraConfig().set_config(cfg)
    with open_dict(cfg):
        del cfg.hydra  # as in a real run: the task function gets the config without it
    return cfg


@pytest.fixture(scope="session", autouse=True)
def user_cache_dir(tmp_path_factory) -> Path:
    """Sampler fits and code caches of model folders go to the user's cache dir: a temporary one
    in tests (subprocesses inherit it), never the real ~/.cache."""
    path = tmp_path_factory.mktemp("user_cache")
    os.environ["VAE_LIT_CACHE"] = str(path)
    return path


@pytest.fixture
def tiny_cfg(tmp_path: Path) -> DictConfig:
    return compose_config(tmp_path, TINY)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> tuple[Path, dict[str, float]]:
    """One real tiny training run shared by the tests that only read it: (last.ckpt, metrics)."""
    from vae_lit.train import train

    run_dir = tmp_path_factory.mktemp("tiny_run")
    metrics = train(compose_config(run_dir, TINY))
    return run_dir / "checkpoints" / "last.ckpt", metrics


def console_noise(result) -> list[str]:
    """The lines of a finished command's console that a normal run must not print: warnings
    (`file.py:N: ...` included) and Lightning's advertisement for its hosted logger."""
    import re

    lines = (result.stdout + result.stderr).splitlines()
    return [line for line in lines if re.search(r"warn|\.py:\d+: |litlogger", line, re.I)]


def run_module(module: str, *args: str, cwd: Path, env: dict | None = None, timeout: int = 300):
    """Run `python -m <module> args` as a user would, in `cwd`; returns the CompletedProcess."""
    import subprocess

    full_env = {**os.environ, "WANDB_MODE": "offline", "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
