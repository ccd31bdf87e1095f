"""Loggers: the W&B logger the default config builds, and pictures sent to every attached logger.

W&B goes offline by itself on a machine without W&B credentials, so a fresh checkout never stops at
a login prompt; `wandb sync <dir>` uploads such a run later. Each run dir keeps its W&B run id, so
resuming a run in its own dir continues the same W&B run instead of starting a new one.
"""

import logging
import netrc
import os
import secrets
import string
import sys
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from pytorch_lightning import Trainer
from pytorch_lightning.loggers import Logger, TensorBoardLogger, WandbLogger
from pytorch_lightning.utilities import rank_zero_only

log = logging.getLogger(__name__)

WANDB_DEFAULT_HOST = "https://api.wandb.ai"


def netrc_path() -> Path:
    """Where `wandb login` keeps the API key: $NETRC, else ~/.netrc (or ~/_netrc on Windows)."""
    if os.environ.get("NETRC"):
        return Path(os.environ["NETRC"]).expanduser()
    for candidate in ("~/.netrc", "~/_netrc"):
        if Path(candidate).expanduser().exists():
            return Path(candidate).expanduser()
    return Path("~/.netrc").expanduser()


def wandb_credentials_present() -> bool:
    """True when W&B could log in without asking: an API key in the environment or in netrc."""
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    host = urlsplit(os.environ.get("WANDB_BASE_URL") or WANDB_DEFAULT_HOST).netloc
    try:
        entry = netrc.netrc(netrc_path()).authenticators(host)
    except (OSError, netrc.NetrcParseError):
        return False
    return bool(entry and entry[2])


def sweep_group() -> str | None:
    """In a Hydra multirun, the sweep dir's name: every job of one sweep shares a W&B group."""
    if not HydraConfig.initialized():
        return None
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode != RunMode.MULTIRUN:
        return None
    return Path(hydra_cfg.sweep.dir).name


def run_id(run_id_file: str | Path) -> str:
    """The W&B run id kept in the run dir; a new one (written there) for a new run dir."""
    path = Path(run_id_file)
    if path.is_file() and path.read_text().strip():
        return path.read_text().strip()
    new_id = "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))
    if rank_zero_only.rank == 0:  # DDP children construct loggers too; one writer is enough
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(new_id + "\n")
    return new_id


def wandb_logger(
    save_dir: str,
    run_id_file: str,
    project: str = "vae-lit",
    entity: str | None = None,
    group: str | None = None,
    tags: list[str] | None = None,
    name: str | None = None,
    offline: bool | None = None,
    job_type: str = "train",
) -> WandbLogger:
    """A WandbLogger writing under `save_dir/wandb`. `offline=None` decides by the credentials
    found, unless WANDB_MODE is set, which W&B then follows."""
    if offline is None and not os.environ.get("WANDB_MODE"):
        offline = not wandb_credentials_present()
    mode = {None: None, True: "offline", False: "online"}[offline]
    if mode == "offline" and rank_zero_only.rank == 0:
        import wandb

        # Process-wide too, not only for this run: W&B's own usage telemetry follows the global
        # settings and would otherwise try to reach the server.
        wandb.setup(settings=wandb.Settings(mode="offline"))
    Path(save_dir).mkdir(parents=True, exist_ok=True)
    logger = WandbLogger(
        save_dir=save_dir,
        project=project,
        entity=entity,
        group=group or sweep_group(),
        tags=list(tags) if tags else None,
        name=name or Path(save_dir).name,  # no overrides: the run dir's timestamp
        id=run_id(run_id_file),
        resume="allow",  # same id, same run: a resumed run appends to it
        job_type=job_type,
        mode=mode,
    )
    # Lightning 2.6 passes `anonymous` to wandb.init on every run, and wandb 0.31 warns that the
    # setting has no effect; leave it out.
    logger._wandb_init.pop("anonymous", None)
    return logger


def finish_wandb(loggers: list[Logger]) -> None:
    """End this job's W&B run, so the next job of a multirun starts its own (Lightning #5212);
    say how to upload it when it ran offline."""
    if (
        not any(isinstance(logger, WandbLogger) for logger in loggers)
        or "wandb" not in sys.modules
    ):
        return
    import wandb

    run = wandb.run
    offline, sync_dir = (run.offline, run.sync_dir) if run is not None else (False, "")
    if run is not None:
        wandb.finish()
    wandb.teardown()  # finish() can return before the run's files are complete; this waits
    if offline:
        log.info(f"W&B ran offline; upload this run with: wandb sync {sync_dir}")


def log_image(trainer: Trainer, key: str, image: np.ndarray, caption: str) -> None:
    """Send one (H, W, 3) uint8 picture to every attached logger that shows images."""
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            logger.log_image(key=key, images=[image], step=trainer.global_step, caption=[caption])
        elif isinstance(logger, TensorBoardLogger):
            logger.experiment.add_image(key, image, trainer.global_step, dataformats="HWC")


def log_gif(trainer: Trainer, key: str, path: Path, caption: str) -> None:
    """Send a GIF file to W&B as a video (TensorBoard shows the same frames as its image steps)."""
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            logger.log_video(
                key=key,
                videos=[str(path)],
                step=trainer.global_step,
                caption=[caption],
                format=["gif"],
            )
