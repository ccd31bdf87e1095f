"""Before a multirun's first job starts, every job's config is composed and checked, so a bad value
in job 5 is named at once rather than after jobs 1-4 have trained. Such a job still runs (and fails
in seconds, as a failed row of the sweep summary); the others are not held up by it.

Only Hydra's basic sweeper lists its jobs in advance; other sweepers (Optuna) choose them as
they go.
"""

import logging
import sys
from typing import Any

from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from vae_lit.errors import find_user_error
from vae_lit.persistence.trusted_config import check_targets
from vae_lit.runs.config_checks import check_config, config_error

log = logging.getLogger(__name__)

INGREDIENTS = ("likelihood", "objective", "prior", "kl_schedule")


def sweep_jobs(config: DictConfig) -> list[list[str]] | None:
    """Each job's overrides as the basic sweeper will run them; None for another sweeper."""
    sweeper = str(OmegaConf.select(config, "hydra.sweeper._target_") or "")
    if not sweeper.endswith(".BasicSweeper"):
        return None
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    params = OmegaConf.select(config, "hydra.sweeper.params") or {}
    args = [f"{key}={value}" for key, value in params.items()]
    args += [str(o) for o in config.hydra.overrides.task]
    parsed = OverridesParser.create().parse_overrides(args)
    return [list(job) for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]


def job_problem(config: DictConfig, overrides: list[str]) -> str | None:
    """What stops this job's config, in one line; None when it passes (or cannot be checked)."""
    loader = GlobalHydra.instance().config_loader()
    try:
        job_cfg = loader.load_sweep_config(config, overrides)
    except Exception as exc:  # noqa: BLE001  a key typo is one line; the rest shows in the job
        error = config_error(exc)
        return str(error) if error is not None else None
    with open_dict(job_cfg):  # what the launcher sets before the job runs, for ${hydra:...}
        job_cfg.hydra.runtime.output_dir = str(config.hydra.sweep.dir)
        job_cfg.hydra.job.num = 0
        job_cfg.hydra.job.id = "check"
    HydraConfig.instance().set_config(job_cfg)
    try:
        check_config(job_cfg)
        for ingredient in INGREDIENTS:  # small objects that check their own values when built
            node = OmegaConf.select(job_cfg, f"model.{ingredient}")
            if isinstance(node, DictConfig) and "_target_" in node:
                check_targets(node, "the sweep", f"model.{ingredient}", "model")
                instantiate(node)
    except Exception as exc:  # noqa: BLE001  what cannot be checked here is checked in the job
        error = find_user_error(exc)
        if error is not None:
            return str(error)
        log.debug(f"Job config not checked in advance: {exc}")
    finally:
        HydraConfig.instance().set_config(config)
    return None


class SweepChecks(Callback):
    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            jobs = sweep_jobs(config)
        except Exception as exc:  # noqa: BLE001  the sweeper itself will report a bad sweep
            log.debug(f"Sweep not checked in advance: {exc}")
            return
        if not jobs or len(jobs) < 2:
            return
        bad = [(num, job_problem(config, job)) for num, job in enumerate(jobs)]
        bad = [(num, problem) for num, problem in bad if problem]
        for num, problem in bad:
            print(
                f"vae-lit: error: job {num} of {len(jobs)} will fail: {problem}",
                file=sys.stderr,
                flush=True,
            )
        if bad:
            print(
                f"vae-lit: the sweep goes on: {len(jobs) - len(bad)} of {len(jobs)} jobs can "
                "run; the sweep summary lists the failed ones",
                file=sys.stderr,
                flush=True,
            )
