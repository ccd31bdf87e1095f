"""The W&B logger the default config builds (`configs/logger/wandb.yaml`).

W&B goes offline by itself on a machine without W&B credentials, so a fresh checkout never stops at
a login prompt; `wandb sync <dir>` uploads such a run later. When it should log online but has no
API key or cannot reach its server within a few seconds, it logs offline too and says why in one
line, instead of hanging for minutes and failing the run. Each run dir keeps its W&B run id, so
resuming a run in its own dir continues the same W&B run instead of starting a new one.
"""

import logging
import netrc
import os
import secrets
import string
import sys
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from pytorch_lightning.loggers import Logger, WandbLogger
from pytorch_lightning.utilities import rank_zero_only

from vae_lit.persistence.atomic_write import write_text_atomic

log = logging.getLogger(__name__)

WANDB_DEFAULT_HOST = "https://api.wandb.ai"
WANDB_PROBE_TIMEOUT_S = 5.0  # W&B's own wait for an unreachable server is ~2 minutes


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
        write_text_atomic(path, new_id + "\n")
    return new_id


def wandb_base_url() -> str:
    return os.environ.get("WANDB_BASE_URL") or WANDB_DEFAULT_HOST


def wandb_server_problem(timeout: float = WANDB_PROBE_TIMEOUT_S) -> str | None:
    """Why the W&B server cannot be reached (through the proxy the environment names), or None.
    Any HTTP answer, even an error status, means it can."""
    url = wandb_base_url()
    try:
        urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout)
    except urllib.error.HTTPError:
        return None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        if isinstance(reason, TimeoutError) or "timed out" in str(reason):
            return f"the W&B server {url} did not answer within {timeout:g} s"
        return f"the W&B server {url} cannot be reached ({reason})"
    return None


def why_not_online() -> str | None:
    """Why an online W&B run would hang or fail here, or None when it can start."""
    if not wandb_credentials_present():
        return "no W&B API key was found (set WANDB_API_KEY or run `wandb login`)"
    return wandb_server_problem()


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
    found, unless WANDB_MODE is set, which W&B then follows. A run that should go online but
    cannot (no API key, no answer from the server) goes offline, with one warning saying why."""
    if offline is None and not os.environ.get("WANDB_MODE"):
        offline = not wandb_credentials_present()
    mode = {None: None, True: "offline", False: "online"}[offline]
    if (mode or os.environ.get("WANDB_MODE") or "online") == "online" and rank_zero_only.rank == 0:
        problem = why_not_online()
        if problem:
            log.warning(f"W&B logs this run offline: {problem}; upload it later with `wandb sync`")
            mode = "offline"
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
