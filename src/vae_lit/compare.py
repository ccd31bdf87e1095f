"""A comparison of models from one sweep: the sample grids of every job side by side, each panel
labelled with its model, and the results table that docs/RESULTS.md shows.

Runs by itself at the end of the `experiment=compare_*` sweeps (a Hydra callback next to the
sweep summary), and by hand on any finished sweep dir:

    python -m vae_lit.compare logs/compare_sprites32/multiruns/<time> --figure docs/x.png

It reads what the jobs left on disk: the summary rows (`vae_lit.runs.sweep_summary`), each job's
`eval.json` (`eval_after_train`) and its best checkpoint, from which it draws the samples.
"""

import argparse
import json
import logging
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.experimental.callback import Callback
from omegaconf import DictConfig
from PIL import Image, ImageDraw, ImageFont

from vae_lit.callbacks.image_grids import image_grid
from vae_lit.errors import UserError
from vae_lit.evaluation.vq import is_vq_model
from vae_lit.model.code_prior import CodePriorLitModule
from vae_lit.persistence.atomic_write import atomic_path, check_output_file, write_text_atomic
from vae_lit.persistence.checkpoint import load_checkpoint
from vae_lit.runs.sweep_summary import EVAL_FILE, job_dirs, summary_rows

log = logging.getLogger(__name__)

VARIANT_OVERRIDE = "+experiment@_global_="  # how the compare sweeps add a named variant
FIGURE_FILE = "compare.png"
TABLE_FILE = "compare.md"
VQ_PRIOR_NOTE = (
    "‡ VQ-VAE through its PixelCNN prior (eval_after_train.prior_epochs): -log p(x) <= "
    "reconstruction NLL - log p(codes), the code length of the image under that prior; no IWAE "
    "bound (the encoder is deterministic); its samples are the prior's."
)
VQ_NOTE = (
    "† VQ-VAE: the negative ELBO under a uniform prior over its codes (van den Oord et al. 2017): "
    "the reconstruction NLL plus (code grid cells) x ln K; its encoder is deterministic, so no "
    "IWAE bound, and its samples decode uniformly random codes until a prior is trained."
)
HEADLINE_NOTE = (
    "Bits/dim in bold are true bits per 8-bit subpixel (a discrete likelihood); the others are of "
    "continuous densities or cross-entropies, comparable only with each other. ‡ VQ-VAE: through "
    "its PixelCNN prior; † under a uniform prior over its codes."
)
MAX_FIGURE_BYTES = 300_000  # figures for docs/: above it the PNG gets a 256-colour palette


# The sweep and its data, on the command line of every job: a one-job sweep (a model added to a
# comparison later) shows all its overrides, and these name no model; nor do how it was evaluated
# and where it resumed from.
SWEEP_OVERRIDES = ("experiment=", "data.root=", "eval_after_train.", "ckpt_path=", "resume=")


def model_name(row: dict[str, Any]) -> str:
    """A job's label: its variant's name, else the overrides that set it apart, else its number."""
    words = str(row.get("overrides") or "").split()
    label = " ".join(w for w in words if not w.startswith(SWEEP_OVERRIDES))
    return label.replace(VARIANT_OVERRIDE, "") or f"job {row['job']}"


def read_eval(run_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((run_dir / EVAL_FILE).read_text())
    except (OSError, ValueError):
        return {}


def best_checkpoint(run_dir: Path) -> Path | None:
    """The checkpoint the job's numbers come from (eval.json names it), else its last one."""
    named = read_eval(run_dir).get("checkpoint")
    for path in (Path(named) if named else None, run_dir / "checkpoints" / "last.ckpt"):
        if path is not None and path.is_file():
            return path
    return None


@torch.no_grad()
def sample_panel(
    ckpt: Path, samples: int, nrow: int, sample_px: int, seed: int
) -> tuple[np.ndarray, str]:
    """`samples` images drawn from the checkpoint's prior with a fixed seed, as one grid picture
    (each image resized to `sample_px`), and a note for its label."""
    module, _ = load_checkpoint(ckpt)
    images = module.sample(samples, generator=torch.Generator().manual_seed(seed)).float()
    if images.shape[-1] != sample_px:
        images = torch.nn.functional.interpolate(
            images, size=(sample_px, sample_px), mode="bilinear", antialias=True
        )
    # a VQ-VAE without a prior decodes uniform codes; through its prior (eval_after_train.
    # prior_epochs) the checkpoint is the prior's, and these are its samples
    uniform = is_vq_model(module) and not isinstance(module, CodePriorLitModule)
    label = " (uniform codes)" if uniform else ""
    return image_grid(images, nrow), label


def labelled(panel: np.ndarray, text: str, font: ImageFont.ImageFont) -> Image.Image:
    """`panel` under a white strip with `text` in black."""
    height = font.size + 8 if hasattr(font, "size") else 18
    image = Image.new("RGB", (panel.shape[1], panel.shape[0] + height), (255, 255, 255))
    image.paste(Image.fromarray(panel), (0, height))
    ImageDraw.Draw(image).text((3, 3), text, fill=(0, 0, 0), font=font)
    return image


def rows_of(sweep_dirs: str | Path | list[str | Path]) -> list[dict[str, Any]]:
    """The summary rows of one sweep dir, or of several in order: a variant added later runs as a
    sweep of its own and joins the table and the figure of the first."""
    dirs = [sweep_dirs] if isinstance(sweep_dirs, (str, Path)) else sweep_dirs
    return [row for sweep_dir in dirs for row in summary_rows(Path(sweep_dir))]


def compare_figure(
    sweep_dirs: str | Path | list[str | Path],
    out: str | Path,
    samples: int = 16,
    nrow: int = 4,
    sample_px: int = 64,
    panels_per_row: int = 4,
    seed: int = 0,
) -> Path:
    """One panel of prior samples per job of `sweep_dirs`, labelled with its model, in rows of
    `panels_per_row`; written to `out` (a PNG). Jobs without a checkpoint are left out."""
    panels = []
    for row in rows_of(sweep_dirs):
        ckpt = best_checkpoint(Path(row["run dir"]))
        if ckpt is None:
            log.warning(f"Compare figure: job {row['job']} has no checkpoint, left out")
            continue
        picture, note = sample_panel(ckpt, samples, nrow, sample_px, seed)
        panels.append((model_name(row) + note, picture))
    if not panels:
        raise ValueError(f"{sweep_dirs} holds no job with a checkpoint to draw samples from")
    width = max(p.shape[1] for _, p in panels)
    font = ImageFont.load_default(size=max(12, min(20, width // 14)))
    tiles = [labelled(picture, name, font) for name, picture in panels]
    gap = 8
    rows = [tiles[i : i + panels_per_row] for i in range(0, len(tiles), panels_per_row)]
    tile_w, tile_h = max(t.width for t in tiles), max(t.height for t in tiles)
    cols = min(len(tiles), panels_per_row)
    figure = Image.new(
        "RGB",
        (cols * tile_w + (cols - 1) * gap, len(rows) * tile_h + (len(rows) - 1) * gap),
        "white",
    )
    for r, row_tiles in enumerate(rows):
        for c, tile in enumerate(row_tiles):
            figure.paste(tile, (c * (tile_w + gap), r * (tile_h + gap)))
    return save_small_png(figure, Path(out))


def save_small_png(figure: Image.Image, out: Path) -> Path:
    """Lossless when that stays under MAX_FIGURE_BYTES, else with a 256-colour palette."""
    with atomic_path(out) as partial:
        figure.save(partial, format="PNG", optimize=True)
        if partial.stat().st_size > MAX_FIGURE_BYTES:
            figure.quantize(256, dither=Image.Dither.FLOYDSTEINBERG).save(
                partial, format="PNG", optimize=True
            )
    return out


def fmt(value: Any, spec: str) -> str:
    if value is None or value == "":
        return ""
    return format(float(value), spec)


def vq_uniform_bound(evaluated: dict[str, Any]) -> tuple[float, float] | None:
    """A VQ-VAE's negative ELBO under a uniform prior over its codes and its bits/dim; None for
    other models. The encoder is deterministic, so the KL is the code grid's size times ln K."""
    if not {"recon", "recon_bits_per_dim", "grid_size", "num_codes"} <= set(evaluated):
        return None
    bound = evaluated["recon"] + evaluated["grid_size"] ** 2 * math.log(evaluated["num_codes"])
    nats_per_bit_dim = evaluated["recon"] / evaluated["recon_bits_per_dim"]  # C*H*W * ln 2
    return bound, bound / nats_per_bit_dim


def results_table(sweep_dirs: str | Path | list[str | Path]) -> str:
    """The comparison table of docs/RESULTS.md, one row per job, from the files the jobs wrote."""
    rows = rows_of(sweep_dirs)
    with_mig = any(row.get("MIG") is not None for row in rows)
    with_iou = any(row.get("foreground IoU") is not None for row in rows)  # sprites
    header = [
        "model",
        "test neg ELBO",
        "IWAE NLL",
        "bits/dim (kind)",
        "MSE",
        "PSNR dB",
        *(["foreground IoU"] if with_iou else []),
        "active units",
        *(["MIG", "MIG per factor"] if with_mig else []),
        "train+test / eval",
        "device",
        "status",
    ]
    text_columns = {"model", "MIG per factor", "device", "status"}
    align = ["---" if name in text_columns else "---:" for name in header]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    notes: set[str] = set()
    for row in rows:
        evaluated = read_eval(Path(row["run dir"]))
        bits = fmt(row["IWAE bits/dim"], ".4f")
        kind = evaluated.get("likelihood_kind") or row["likelihood_kind"]
        latent = evaluated.get("latent_dim")
        active = "" if row["active units"] is None else str(row["active units"])
        if active and latent:
            active += f" / {latent}"
        wall = ""
        if row["train+test s"] is not None:
            wall = f"{float(row['train+test s']):.0f} s / {fmt(row['eval s'], '.0f')} s"
        device = str(row["device"] or "")
        if evaluated.get("precision"):
            device += f", {evaluated['precision']}"
        iwae = fmt(row["IWAE NLL"], ".1f")
        iwae = f"{iwae} (k={row['IWAE k']})" if iwae else ""
        neg_elbo = fmt(row["test neg ELBO"], ".1f")
        bits = f"{bits} ({kind})" if bits else ""
        uniform = vq_uniform_bound(evaluated)
        if uniform is not None and evaluated.get("nll") is not None:  # through its prior
            neg_elbo, iwae = f"{evaluated['nll']:.1f} ‡", "n/a"
            bits = f"{evaluated['bits_per_dim']:.4f} ({kind}) ‡"
            notes.add(VQ_PRIOR_NOTE)
        elif uniform is not None:  # a VQ-VAE: its loss is no ELBO, and it has no IWAE bound
            neg_elbo, iwae = f"{uniform[0]:.1f} †", "n/a"
            bits = f"{uniform[1]:.4f} ({kind}) †"
            notes.add(VQ_NOTE)
        cells = [
            model_name(row),
            neg_elbo,
            iwae,
            bits,
            fmt(row["test MSE"], ".4f"),
            fmt(row["test PSNR"], ".2f"),
            *([fmt(row["foreground IoU"], ".3f")] if with_iou else []),
            active,
            *([fmt(row["MIG"], ".3f"), row["MIG per factor"] or ""] if with_mig else []),
            wall,
            device,
            str(row["status"]),
        ]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join([*lines, *(["", *sorted(notes)] if notes else [])]) + "\n"


class CompareFigure(Callback):
    """At the end of a multirun: `compare.png` (the figure) and `compare.md` (the table) in the
    sweep dir. A failure here costs the sweep only its figure."""

    def __init__(self, samples: int = 16, nrow: int = 4, sample_px: int = 64, **kwargs: Any):
        self.options = dict(samples=samples, nrow=nrow, sample_px=sample_px, **kwargs)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if not sweep_dir.is_dir():
            return
        try:  # the table first: a figure that cannot be drawn must not cost it
            write_text_atomic(sweep_dir / TABLE_FILE, results_table(sweep_dir))
            figure = compare_figure(sweep_dir, sweep_dir / FIGURE_FILE, **self.options)
        except Exception as exc:  # noqa: BLE001  the sweep's own results are already on disk
            log.warning(f"Compare figure not drawn: {exc}")
            return
        print(f"Comparison: {figure} and {sweep_dir / TABLE_FILE}", flush=True)


def headline_table(sweeps: dict[str, Path | list[Path]]) -> str:
    """Each model's IWAE bits/dim and PSNR on each data set (name -> its sweep dir or dirs), one
    row per model: the README's summary of docs/RESULTS.md."""
    cells: dict[str, dict[str, str]] = {}
    for name, sweep_dirs in sweeps.items():
        for row in rows_of(sweep_dirs):
            evaluated = read_eval(Path(row["run dir"]))
            uniform = vq_uniform_bound(evaluated)
            through_prior = uniform is not None and evaluated.get("nll") is not None
            if through_prior:  # a VQ-VAE scored through the prior its job trained
                bits, mark = fmt(evaluated["bits_per_dim"], ".3f"), " ‡"
            elif uniform is not None:
                bits, mark = fmt(uniform[1], ".3f"), " †"
            else:
                bits, mark = fmt(row["IWAE bits/dim"], ".3f"), ""
            kind = evaluated.get("likelihood_kind") or row["likelihood_kind"]
            if kind == "discrete" and bits:  # true bits stand out from the continuous ones
                bits = f"**{bits}**"
            text = f"{bits}{mark} / {fmt(row['test PSNR'], '.1f')} dB"
            cells.setdefault(model_name(row), {})[name] = text
    header = ["model", *(f"{name}: bits/dim / PSNR" for name in sweeps)]
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * len(sweeps)]
    for model, by_data in cells.items():
        lines.append("| " + " | ".join([model, *(by_data.get(n, "") for n in sweeps)]) + " |")
    lines += ["", HEADLINE_NOTE]
    return "\n".join(lines) + "\n"


def positive(text: str) -> int:
    """argparse type: a positive integer, else argparse's one-line usage error."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} must be a positive integer")
    return value


def data_set_of(sweep_dir: Path) -> str | None:
    """`<data target> <size> px` of a sweep's first job, from its `.hydra/config.yaml`."""
    from omegaconf import OmegaConf

    for job in job_dirs(sweep_dir):
        try:
            data = OmegaConf.load(job / ".hydra" / "config.yaml").get("data") or {}
        except Exception:  # noqa: BLE001  an unreadable job config: the next job
            continue
        return f"{str(data.get('_target_', '?')).rsplit('.', 1)[-1]} {data.get('image_size')} px"
    return None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m vae_lit.compare",
        description="Print a comparison sweep's results table (and redraw its figure); several "
        "sweep dirs of one data set make one table; with --headline NAME=DIR ... one row per "
        "model across data sets.",
    )
    parser.add_argument("sweeps", nargs="+", help="sweep dirs; NAME=DIR ... with --headline")
    parser.add_argument("--headline", action="store_true", help="the README's summary table")
    parser.add_argument("--figure", type=Path, help="also draw the side-by-side samples here")
    parser.add_argument("--samples", type=positive, default=16)
    parser.add_argument("--nrow", type=positive, default=4, help="samples per row of a panel")
    parser.add_argument("--sample-px", type=positive, default=64, help="size of each sample")
    parser.add_argument("--panels-per-row", type=positive, default=4)
    args = parser.parse_args(argv)
    named = [item.partition("=")[::2] if args.headline else ("", item) for item in args.sweeps]
    for name, sweep_dir in named:
        if args.headline and not (name and sweep_dir):  # `--headline DIR` is not the cwd
            sys.exit(f"vae-lit: error: {name or sweep_dir} needs a name: pass NAME=DIR")
        if not Path(sweep_dir).is_dir():
            sys.exit(f"vae-lit: error: {sweep_dir} is not a folder; pass a multirun's sweep dir")
        if not job_dirs(Path(sweep_dir)):
            where = "<job>/.hydra/overrides.yaml"
            sys.exit(
                f"vae-lit: error: {sweep_dir} holds no sweep jobs (no {where}); pass a "
                "multirun's sweep dir (logs/train/multiruns/<time>), not a run dir"
            )
    if args.figure:
        try:
            check_output_file(args.figure, "--figure")
        except UserError as error:
            sys.exit(f"vae-lit: error: {error}")
    kinds = {d: data_set_of(Path(d)) for _, d in named}
    if not args.headline and len(set(kinds.values())) > 1:
        shown = ", ".join(f"{d}: {kind}" for d, kind in kinds.items())
        sys.exit(
            f"vae-lit: error: these sweeps trained on different data ({shown}); one table "
            "compares one data set: use --headline NAME=DIR ... for several"
        )
    if args.headline:  # a name given twice joins its sweeps, as without --headline
        by_name: dict[str, list[Path]] = {}
        for name, sweep_dir in named:
            by_name.setdefault(name, []).append(Path(sweep_dir))
        print(headline_table(by_name), end="")
        return
    sweep_dirs = [Path(sweep_dir) for _, sweep_dir in named]
    print(results_table(sweep_dirs), end="")
    if args.figure:
        out = compare_figure(
            sweep_dirs,
            args.figure,
            samples=args.samples,
            nrow=args.nrow,
            sample_px=args.sample_px,
            panels_per_row=args.panels_per_row,
        )
        print(f"Wrote {out} ({out.stat().st_size // 1000} KB)", file=sys.stderr)


if __name__ == "__main__":
    main()
