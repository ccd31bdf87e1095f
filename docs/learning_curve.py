"""Test bits/dim against training wall time, one line per model: the learning curve of
docs/RESULTS.md, from the runs of docs/make_learning_curve.sh.

Each point is a checkpoint kept by the `timed_checkpoint` callback and scored by `vae_lit.eval`
(the `<checkpoint>.eval.json` beside it). Its time is the checkpoint file's age since its run
started (the run dir's `.hydra/config.yaml`), so data loading and validation count. A line may
chain runs trained one after the other, `vqvae+prior=<vqvae run>,<prior run>`: all its times
count from the first run's start, so the VQ-VAE's whole run is part of every point of the prior.

    python docs/learning_curve.py docs/celeba64_learning_curve.png \
        hvae=<run> logistic_vae=<run> vqvae+prior=<vqvae run>,<prior run>

Prints the points as a markdown table. Needs only Pillow (a dependency of vae-lit)."""

import argparse
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

WIDTH, HEIGHT, LEFT, RIGHT, TOP, BOTTOM = 720, 440, 70, 170, 40, 50
COLOURS = [(60, 110, 190), (200, 60, 60), (40, 150, 80), (150, 90, 180), (220, 140, 30)]


@dataclass
class Point:
    minutes: float
    step: int
    bits_per_dim: float
    psnr: float


def run_start(run: Path) -> float:
    """When the run began: Hydra writes .hydra/config.yaml before the job loads anything."""
    config = run / ".hydra" / "config.yaml"
    if not config.is_file():
        raise SystemExit(f"{run} is not a run dir (no .hydra/config.yaml); pass a run's dir")
    return config.stat().st_mtime


def scored_points(run: Path, start: float) -> list[Point]:
    """The run's timed checkpoints that vae_lit.eval scored with a bits/dim, with their minutes
    since `start` (a time stamp), oldest first."""
    points = []
    for checkpoint in sorted((run / "checkpoints" / "timed").glob("step_*.ckpt")):
        scores = checkpoint.with_name(checkpoint.name + ".eval.json")
        if not scores.is_file():
            continue
        metrics = json.loads(scores.read_text())
        if "bits_per_dim" not in metrics:  # a VQ-VAE without its prior has no bound
            continue
        minutes = (checkpoint.stat().st_mtime - start) / 60
        step = int(re.search(r"step_(\d+)", checkpoint.name).group(1))
        points.append(Point(minutes, step, metrics["bits_per_dim"], metrics["psnr"]))
    return sorted(points, key=lambda p: p.minutes)


def line_points(runs: list[Path]) -> list[Point]:
    """The points of one line, timed from the start of its first run: a run trained after it
    (a prior after its VQ-VAE) carries the first one's whole run in its times."""
    start = min(run_start(run) for run in runs)  # each one checked to be a run dir
    return [point for run in runs for point in scored_points(run, start)]


def curve_chart(lines: dict[str, list[Point]], title: str) -> Image.Image:
    """Bits/dim (y) against minutes (x), one coloured polyline with dots per model."""
    font = ImageFont.load_default()
    picture = Image.new("RGB", (WIDTH, HEIGHT), "white")
    draw = ImageDraw.Draw(picture)
    every = [p for points in lines.values() for p in points]
    latest = max(p.minutes for p in every)
    step = next((s for s in (1, 2, 5, 10, 15, 30, 60, 120) if latest / s <= 8), 240)
    ticks = math.ceil(latest * 1.02 / step)  # whole minutes on the x axis
    x_max = ticks * step
    y_min, y_max = min(p.bits_per_dim for p in every), max(p.bits_per_dim for p in every)
    pad = max(0.1, 0.05 * (y_max - y_min))
    y_min, y_max = y_min - pad, y_max + pad
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def xy(point: Point) -> tuple[float, float]:
        x = LEFT + plot_w * point.minutes / x_max
        y = TOP + plot_h * (y_max - point.bits_per_dim) / (y_max - y_min)
        return x, y

    draw.text((LEFT, 12), title, fill="black", font=font)
    draw.rectangle([LEFT, TOP, LEFT + plot_w, TOP + plot_h], outline="black")
    for i in range(ticks + 1):  # vertical grid lines and minutes
        x = LEFT + plot_w * i / ticks
        draw.line([x, TOP, x, TOP + plot_h], fill=(225, 225, 225))
        draw.text((x - 6, TOP + plot_h + 6), f"{i * step}", fill="black", font=font)
    for i in range(6):  # horizontal grid lines and bits/dim
        bits = y_max - (y_max - y_min) * i / 5
        y = TOP + plot_h * i / 5
        draw.line([LEFT, y, LEFT + plot_w, y], fill=(225, 225, 225))
        draw.text((LEFT - 40, y - 5), f"{bits:.2f}", fill="black", font=font)
    draw.text((LEFT + plot_w // 2 - 90, HEIGHT - 22), "training wall time, minutes", fill="black")
    draw.text((8, TOP - 16), "test bits/dim", fill="black", font=font)
    for i, (name, points) in enumerate(lines.items()):
        colour = COLOURS[i % len(COLOURS)]
        coords = [xy(p) for p in points]
        if len(coords) > 1:
            draw.line(coords, fill=colour, width=2)
        for x, y in coords:
            draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=colour)
        legend_y = TOP + 10 + 18 * i
        draw.line([WIDTH - RIGHT + 15, legend_y + 5, WIDTH - RIGHT + 35, legend_y + 5], colour, 2)
        last = f" {points[-1].bits_per_dim:.2f}" if points else " (no points)"
        draw.text((WIDTH - RIGHT + 40, legend_y), name + last, fill="black", font=font)
    return picture


def markdown_table(lines: dict[str, list[Point]]) -> str:
    rows = ["| model | minutes | step | test bits/dim | PSNR dB |", "|---|---:|---:|---:|---:|"]
    for name, points in lines.items():
        rows += [
            f"| {name} | {p.minutes:.1f} | {p.step} | {p.bits_per_dim:.3f} | {p.psnr:.2f} |"
            for p in points
        ]
    return "\n".join(rows)


def named_runs(text: str) -> tuple[str, list[Path]]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"{text} needs a name: pass NAME=RUN_DIR[,RUN_DIR]")
    name, runs = text.split("=", 1)
    return name, [Path(run) for run in runs.split(",")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("figure", type=Path, help="the PNG to write")
    parser.add_argument("lines", nargs="+", type=named_runs, help="NAME=RUN_DIR[,RUN_DIR]")
    parser.add_argument("--title", default="Test bits/dim (IWAE) against training wall time")
    args = parser.parse_args()
    lines = {name: line_points(runs) for name, runs in args.lines}
    if not any(lines.values()):
        raise SystemExit("no scored checkpoints: run vae_lit.eval on <run>/checkpoints/timed/*")
    if not args.figure.parent.is_dir():
        raise SystemExit(f"{args.figure}: its folder {args.figure.parent} does not exist")
    temporary = args.figure.with_name(args.figure.name + ".tmp.png")
    curve_chart(lines, args.title).save(temporary)
    temporary.replace(args.figure)  # never a half-written figure
    print(markdown_table(lines))


if __name__ == "__main__":
    main()
