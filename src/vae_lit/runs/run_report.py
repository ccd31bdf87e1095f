"""What a run says when it ends: where its pictures are, its test metrics as a table, and how to
look at its W&B run without a network (`wandb leet`) or upload it (`wandb sync`).

The test metrics also go to `test_metrics.json` in the run dir, with the likelihood's kind (what
its bits per dimension mean), for a sweep's summary table (`vae_lit.runs.sweep_summary`).
"""

import json
import math
import re
from pathlib import Path
from typing import Any

from pytorch_lightning import LightningModule, Trainer
from pytorch_lightning.loggers import WandbLogger
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from vae_lit.evaluation.vq import is_vq_model
from vae_lit.persistence.atomic_write import write_text_atomic

TEST_METRICS_FILE = "test_metrics.json"
PICTURE_SUFFIXES = (".png", ".gif")
EPOCH_PICTURE = re.compile(r"^(?P<stem>.+)_(?P<epoch>\d+)$")

# test/<name> -> (row label, format, what it says); other test/* metrics follow by their name.
TEST_ROWS = {
    "loss": ("negative ELBO", "{:.2f} nats", "bound on -log p(x), per image"),
    "recon": ("  reconstruction", "{:.2f} nats", "-log p(x|z), one z ~ q(z|x)"),
    "kl": ("  KL", "{:.2f} nats", "KL(q(z|x) || p(z)); ~0: collapse"),
    "bits_per_dim": ("bits per dim", "{:.4f}", "negative ELBO / (C*H*W*ln 2)"),
    "mse": ("MSE", "{:.5f}", "posterior-mean reconstruction"),
    "psnr": ("PSNR", "{:.2f} dB", "mean over images; higher is better"),
    "foreground_iou": ("foreground IoU", "{:.3f}", "object masks, image vs reconstruction"),
    "active_units": ("active units", "{:.0f}", "latent dimensions in use"),
    "mig": ("MIG", "{:.3f}", "disentanglement, 0 to 1"),
}
# A VQ-VAE's loss is no bound on -log p(x): its prior over codes is trained afterwards.
VQ_LOSS_ROW = ("VQ-VAE loss", "{:.2f} nats", "reconstruction NLL + commitment; not a bound")


def likelihood_kind(model: LightningModule) -> str:
    """`discrete` when the likelihood is a distribution over the 256 pixel levels (its bits per
    dimension are true bits), else `continuous`."""
    return str(model.hparams.get("likelihood_kind", "continuous"))


def test_metrics(metrics: dict[str, float]) -> dict[str, float]:
    return {key: value for key, value in metrics.items() if key.startswith("test/")}


def write_test_metrics(
    output_dir: str | Path, metrics: dict[str, float], kind: str, checkpoint: str | None
) -> Path | None:
    """`test_metrics.json` in the run dir; nothing when the run was not tested."""
    tested = test_metrics(metrics)
    if not tested:
        return None
    path = Path(output_dir) / TEST_METRICS_FILE
    record = {"checkpoint": checkpoint, "likelihood_kind": kind, **tested}
    write_text_atomic(path, json.dumps(record, indent=2) + "\n")
    return path


def read_test_metrics(run_dir: str | Path) -> dict[str, Any] | None:
    """What `write_test_metrics` left in `run_dir`, or None (not tested, crashed before, or the
    file is unreadable: a sweep's summary goes on without it)."""
    try:
        return json.loads((Path(run_dir) / TEST_METRICS_FILE).read_text())
    except (OSError, ValueError):
        return None


def latest_pictures(directory: Path) -> list[Path]:
    """The pictures in `directory`, only the last epoch's of those drawn every epoch
    (`sample_9.png`, not `sample_0.png` ... `sample_8.png`)."""
    latest: dict[str, tuple[int, Path]] = {}
    for path in sorted(directory.iterdir()) if directory.is_dir() else []:
        if path.suffix not in PICTURE_SUFFIXES:
            continue
        match = EPOCH_PICTURE.match(path.stem)
        key, epoch = (match["stem"], int(match["epoch"])) if match else (path.stem, -1)
        if key not in latest or epoch > latest[key][0]:
            latest[key] = (epoch, path)
    return sorted(path for _, path in latest.values())


def picture_dirs(trainer: Trainer) -> list[Path]:
    """The directories the picture callbacks draw into."""
    dirs = []
    for callback in trainer.callbacks:
        if getattr(callback, "output_dir", None) is not None:
            dirs.append(Path(callback.output_dir))
        elif Path(str(getattr(callback, "path", ""))).suffix in PICTURE_SUFFIXES:
            dirs.append(Path(callback.path).parent)
    return sorted(set(dirs))


def metrics_table(
    metrics: dict[str, float], latent_dim: int | None, kind: str, vq: bool = False
) -> Table:
    """The test metrics, each row saying what its number means (`vq`: a VQ-VAE's)."""
    tested = {key.removeprefix("test/"): value for key, value in test_metrics(metrics).items()}
    table = Table(title="Test metrics (the best checkpoint on the test split)")
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_column("what it says")
    shown = set()
    rows = {**TEST_ROWS, "loss": VQ_LOSS_ROW} if vq else TEST_ROWS
    for name, (label, fmt, meaning) in rows.items():
        if name not in tested:
            continue
        value = fmt.format(tested[name])
        if name == "active_units" and latent_dim:
            value = f"{value} / {latent_dim}"
        if name == "bits_per_dim":
            meaning += "" if kind == "discrete" else "; not true bits"
        table.add_row(label, value, meaning)
        shown.add(name)
        sub = [key for key in tested if key.startswith(f"{name}/")]  # in logged order
        for key in sub:
            table.add_row(f"  {escape(key.removeprefix(f'{name}/'))}", f"{tested[key]:.3f}", "")
        shown.update(sub)
    for name in sorted(set(tested) - shown):
        value = tested[name]
        table.add_row(escape(name), f"{value:.4g}" if math.isfinite(value) else str(value), "")
    return table


def wandb_commands(trainer: Trainer) -> list[str]:
    """`wandb sync` for each offline W&B run of this run dir, and `wandb leet` to view them."""
    lines = []
    for logger in trainer.loggers:
        if not isinstance(logger, WandbLogger) or not logger.save_dir:
            continue
        wandb_dir = Path(logger.save_dir) / "wandb"
        offline = sorted(wandb_dir.glob(f"offline-run-*-{logger.version}"))
        lines += [f"upload it:           wandb sync {run}" for run in offline]
        if wandb_dir.is_dir():
            lines.append(f"see it in a terminal: wandb leet {wandb_dir}")
    return lines


def report_run(
    trainer: Trainer, model: LightningModule, metrics: dict[str, float], output_dir: str | Path
) -> None:
    """Print the end-of-run report and write `test_metrics.json` (rank 0 only)."""
    if not trainer.is_global_zero:
        return
    kind, vq = likelihood_kind(model), is_vq_model(model)
    callback = trainer.checkpoint_callback
    best = callback.best_model_path if callback and callback.best_model_path else None
    write_test_metrics(output_dir, metrics, kind, best)

    console = Console()
    console.print(f"\n[bold]Run finished[/]: {escape(str(Path(output_dir).resolve()))}")
    pictures = [path for directory in picture_dirs(trainer) for path in latest_pictures(directory)]
    if pictures:
        console.print("[bold]Pictures[/] (the last epoch's):")
        for path in pictures:
            console.print(f"  {escape(str(path))}", soft_wrap=True)
    if test_metrics(metrics):
        latent_dim = getattr(model, "latent_dim", None)
        console.print()
        console.print(metrics_table(metrics, latent_dim, kind, vq=vq))
    if best:
        what = "codebook use" if vq else "IWAE likelihood"
        console.print(
            f"[bold]More metrics[/] ({what}): python -m vae_lit.eval ckpt={escape(best)}",
            soft_wrap=True,
        )
    commands = wandb_commands(trainer)
    if commands:
        console.print("[bold]W&B run[/]:")
        for line in commands:
            console.print(f"  {escape(line)}", soft_wrap=True)
