"""Training entry point: `python -m vae_lit.train [overrides]`.

Composes the Hydra config, builds datamodule, model, callbacks, loggers and trainer in that order,
fits, tests, and returns the metric a sweeper optimises (`optimized_metric`).
"""

import gc
import logging
import math
import sys
import time
import warnings
from pathlib import Path

import hydra
import pytorch_lightning as pl
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning import Callback
from pytorch_lightning.loggers import Logger
from pytorch_lightning.utilities import rank_zero_only

from vae_lit.callbacks.non_finite_loss import NonFiniteLossError
from vae_lit.callbacks.resumed_optimizer import ConfiguredOptimizerSettings
from vae_lit.callbacks.run_config import RunConfigInCheckpoint
from vae_lit.callbacks.run_summary import RunSummary, record_failure
from vae_lit.errors import UserError, find_user_error
from vae_lit.evaluation.checkpoint_eval import evaluate_after_training
from vae_lit.evaluation.vq import is_vq_model
from vae_lit.loggers.wandb_run import finish_wandb
from vae_lit.persistence.atomic_write import use_atomic_checkpoints
from vae_lit.persistence.checkpoint import first_line
from vae_lit.runs.config_checks import check_config, run_cli
from vae_lit.runs.resume import resume_path
from vae_lit.runs.run_dir import RunStarted, claim, is_main_process, refuse_overwrite, release
from vae_lit.runs.run_report import report_run
from vae_lit.runs.stops import stop_error
from vae_lit.runs.trainer import check_launcher, instantiate_group, map_gpus
from vae_lit.train_prior import train_prior

log = logging.getLogger(__name__)

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"  # as @hydra.main's config_path

# configs/hydra/launcher/ keeps the plugins' names, so `hydra/launcher=submitit_slurm` gets the
# safe settings; Hydra checks such files against the plugin's schema and warns that it does.
warnings.filterwarnings(
    "ignore", message=r"\s*'hydra/launcher/\w+' is validated against ConfigStore schema"
)


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit (and test) a model as the config says; return the final metrics as floats."""
    check_config(cfg)  # values no run can use: one line, before any data is read or file written
    if not is_main_process():  # Lightning's DDP ranks 1..N work in rank 0's dir, under its lock
        try:
            return fit_and_test(cfg)
        finally:
            free_device_memory()
    claim(cfg.paths.output_dir)  # a second run into this dir stops here, with one line
    failed = True
    try:
        metrics = fit_and_test(cfg)
        failed = False
    finally:
        release(cfg.paths.output_dir, failed=failed)  # a failed start leaves the dir as it was
        free_device_memory()
    return metrics


def free_device_memory() -> None:
    """A sweep runs job after job in one process (the basic launcher, a joblib worker): the last
    job's weights, optimizer state and data.on_device copy sit in reference cycles (trainer,
    callbacks, module) until collected. Collect them and hand the cached blocks back, so the next
    job starts with the whole GPU."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def parallel_job_number() -> int | None:
    """This job's number when a sweep runs its jobs at once on this machine (joblib), else None."""
    if not in_multirun():
        return None
    hydra_cfg = HydraConfig.get()
    launcher = str((hydra_cfg.get("launcher") or {}).get("_target_", ""))
    return int(hydra_cfg.job.num) if "joblib" in launcher.lower() else None


def fit_and_test(cfg: DictConfig) -> dict[str, float]:
    started = time.perf_counter()  # the wall time eval_after_train records
    # fails fast on a missing GPU, before any data is touched
    trainer_cfg = map_gpus(cfg.trainer, parallel_job=parallel_job_number())
    if cfg.get("seed") is not None:
        pl.seed_everything(cfg.seed, workers=True)

    log.info(f"Instantiating datamodule <{cfg.data._target_}>")
    datamodule: pl.LightningDataModule = instantiate(cfg.data)
    log.info(f"Instantiating model <{cfg.model._target_}>")
    model: pl.LightningModule = instantiate(cfg.model)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    callbacks: list[Callback] = instantiate_group(cfg.get("callbacks"))
    callbacks.append(RunConfigInCheckpoint(resolved))
    callbacks.append(RunSummary(cfg.paths.output_dir))  # what a sweep's summary table reads
    # the config to the loggers once training starts: a start that fails changes nothing on disk
    callbacks.append(RunStarted(cfg.paths.output_dir, resolved))
    callbacks.append(ConfiguredOptimizerSettings(resolved["model"].get("optimizer")))
    loggers: list[Logger] = instantiate_group(cfg.get("logger"))
    log.info(f"Instantiating trainer <{trainer_cfg._target_}>")
    trainer: pl.Trainer = instantiate(trainer_cfg, callbacks=callbacks, logger=loggers or False)
    use_atomic_checkpoints(trainer)  # a full disk or a kill never leaves half a checkpoint
    check_launcher(trainer, in_multirun())
    ckpt_path = resume_path(cfg, trainer)  # resume=auto: this run dir's last checkpoint, if any
    if cfg.get("train"):
        refuse_overwrite(cfg.paths.output_dir, resuming=ckpt_path is not None)

    try:
        if cfg.get("train"):
            # weights_only: a checkpoint's pickle may hold tensors and plain values, never code
            trainer.fit(model=model, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
        callback = trainer.checkpoint_callback
        if callback and callback.monitor not in metrics and callback.best_model_score is not None:
            # a finished run started again resumes at its end and validates nothing: its best
            metrics[callback.monitor] = float(callback.best_model_score)
        if cfg.get("test"):
            best = callback.best_model_path if callback else ""
            # verbose=False: the run report below prints the test metrics with their meaning
            trainer.test(
                model=model,
                datamodule=datamodule,
                ckpt_path=best or None,
                verbose=False,
                weights_only=True,
            )
            metrics.update({k: float(v) for k, v in trainer.callback_metrics.items()})
    except BaseException as exc:  # SIGTERM, a full disk: one line naming the last checkpoint
        error = stop_error(exc, trainer)
        if error is None:
            raise
        raise error from exc
    finally:
        finish_wandb(loggers)  # each job its own W&B run, also in a multirun and on failure
    report_run(trainer, model, metrics, cfg.paths.output_dir)  # pictures, test table, W&B
    if (cfg.get("eval_after_train") or {}).get("enabled") and trainer.is_global_zero:
        evaluate_best(cfg, trainer, datamodule, time.perf_counter() - started)
    callback = trainer.checkpoint_callback
    if trainer.is_global_zero and callback and callback.best_model_path:
        log.info(f"Best checkpoint: {callback.best_model_path}")
    return metrics


def evaluate_best(
    cfg: DictConfig, trainer: pl.Trainer, datamodule: pl.LightningDataModule, train_s: float
) -> None:
    """eval_after_train: vae_lit.eval's numbers of the best checkpoint in <run dir>/eval.json."""
    callback = trainer.checkpoint_callback
    best = callback.best_model_path if callback else ""
    if not best:
        log.warning("eval_after_train: the run saved no best checkpoint, so no eval.json")
        return
    options = cfg.eval_after_train
    prior_epochs = int(options.get("prior_epochs") or 0)
    if prior_epochs > 0 and is_vq_model(trainer.lightning_module):
        best = train_prior_for_eval(best, cfg.paths.output_dir, prior_epochs, cfg.get("seed"))
    evaluate_after_training(
        best,
        whole_test_split(cfg, trainer, datamodule),
        cfg.paths.output_dir,
        trainer.strategy.root_device,
        k=int(options.k),
        max_decodes=options.max_decodes,
        seed=cfg.seed if cfg.get("seed") is not None else 0,
        extra={"train_wall_s": train_s, "precision": str(trainer.precision)},
    )


def train_prior_for_eval(vqvae_ckpt: str, run_dir: str, epochs: int, seed) -> str:
    """A VQ-VAE's PixelCNN prior, trained as `python -m vae_lit.train_prior` would into
    <run dir>/prior (CSV logs, no pictures), so the comparison scores the VQ-VAE through its prior
    and draws the prior's samples; returns the prior's best checkpoint."""
    overrides = [
        f"ckpt={vqvae_ckpt}",
        f"paths.output_dir={Path(run_dir) / 'prior'}",
        f"trainer.max_epochs={epochs}",
        "callbacks=[model_checkpoint]",
        # train_prior.yaml's own per-epoch grid of 64 samples: minutes an epoch at 38x38 codes
        "~callbacks.prior_sample_grid",
        "logger=csv",
        *([f"seed={seed}"] if seed is not None else []),
    ]
    if GlobalHydra.instance().is_initialized():  # inside `python -m vae_lit.train`
        prior_cfg = compose(config_name="train_prior", overrides=overrides)
    else:  # train(cfg) called from Python
        with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
            prior_cfg = compose(config_name="train_prior", overrides=overrides)
    log.info(f"eval_after_train: training the VQ-VAE's prior for {epochs} epochs")
    train_prior(prior_cfg)
    best = sorted((Path(run_dir) / "prior" / "checkpoints").glob("epoch_*.ckpt"))
    if not best:
        raise UserError(f"eval_after_train: the prior in {run_dir}/prior saved no checkpoint")
    return str(best[-1])


def whole_test_split(
    cfg: DictConfig, trainer: pl.Trainer, datamodule: pl.LightningDataModule
) -> pl.LightningDataModule:
    """A datamodule whose test loader serves the whole test split. Under DDP rank 0's own serves
    its share (data.on_device cuts batches by rank), and under ddp_spawn this process never set
    its own up: a fresh one, outside the trainer, in host memory (the evaluation moves batches)."""
    if trainer.world_size == 1:
        return datamodule
    fresh = instantiate(cfg.data, **({"on_device": False} if "on_device" in cfg.data else {}))
    fresh.setup("test")
    return fresh


def in_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def sweeper_value(cfg: DictConfig, metrics: dict[str, float]) -> float | None:
    """The metric a sweeper optimises; None when it is not finite, which the optuna sweeper
    records as a failed trial instead of stopping the sweep on NaN (hydra #2237)."""
    name = cfg.get("optimized_metric")
    if not name or not cfg.get("train") or cfg.trainer.get("fast_dev_run"):
        return None
    if name not in metrics:
        message = (
            f"optimized_metric={name} was not logged; use one of: {', '.join(sorted(metrics))}"
        )
        if in_multirun():  # a sweep would go on blind
            raise UserError(message)
        log.warning(message)
        return None
    value = metrics[name]
    if not math.isfinite(value):
        log.warning(f"{name} is {value}: the sweeper gets no value for this job")
        return None
    return value


@hydra.main(version_base="1.3", config_path="../../configs", config_name="train.yaml")
def main(cfg: DictConfig) -> float | None:
    try:
        return sweeper_value(cfg, train(cfg))
    except Exception as exc:  # a user's mistake is one line; a bug keeps its traceback
        error = find_user_error(exc)
        if in_multirun() and rank_zero_only.rank == 0:  # a failed job fails alone
            record_failed_job(cfg, exc, error)
            return None
        if error is None:
            raise
        if rank_zero_only.rank == 0:  # DDP ranks all fail alike; one line is enough
            print(f"vae-lit: error: {error}", file=sys.stderr)
        sys.exit(getattr(error, "exit_code", 2))  # 143 after a SIGTERM


def record_failed_job(cfg: DictConfig, exc: Exception, error: UserError | None) -> None:
    """A multirun job that failed (a bad value, out of memory, a bug): its row in the sweep
    summary says so, its log keeps the traceback, the console gets one line, and the sweep goes
    on with the next job."""
    job = HydraConfig.get().job
    run_dir = cfg.paths.output_dir
    log_file = f"{run_dir}/{cfg.task_name}.log"
    reason = str(error) if error is not None else first_line(exc)
    if error is None or isinstance(error, NonFiniteLossError):
        log.error(f"Job {job.num} failed", exc_info=exc)  # the traceback, in the job's log only
    else:
        log.error(f"Job {job.num} failed: {reason}")
    record_failure(run_dir, reason)
    print(
        f"vae-lit: error: job {job.num} failed: {reason}; its log: {log_file}",
        file=sys.stderr,
        flush=True,
    )


if __name__ == "__main__":
    run_cli(main)  # a typo in a key or a config name is one line too
