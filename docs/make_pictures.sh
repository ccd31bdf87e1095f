#!/usr/bin/env bash
# The README's pictures: a short 150x150 run on the 2010-image CelebA sample (1530 training
# images), then half-size, 256-colour copies of its pictures in docs/ (1.4 MB in all).
#   bash docs/make_pictures.sh [celeba root]        # about 40 minutes on 2 CPU cores
set -euo pipefail
DATA=${1:-../shared/data/celeba_sample}
RUN=${RUN:-logs/readme/celeba150}
PYTHON=${PYTHON:-.venv/bin/python}

# batch 16: four times the steps of batch 64 for the same compute, so faces appear in 10 epochs;
# a 2-row GIF keeps it small.
$PYTHON -m vae_lit.train experiment=celeba150 data.root="$DATA" data.batch_size=16 \
  trainer.max_epochs=10 test=false callbacks.generation_gif.num_samples=16 hydra.run.dir="$RUN"

$PYTHON - "$RUN/results" docs <<'PY'
import sys
from pathlib import Path

import imageio.v3 as iio
import numpy as np
from PIL import Image

results, docs = Path(sys.argv[1]), Path(sys.argv[2])


def half(picture: Image.Image) -> Image.Image:
    return picture.resize((picture.width // 2, picture.height // 2), Image.Resampling.LANCZOS)


for name in ["sample_0.png", "sample_4.png", "sample_9.png", "reconstruction_9.png"]:
    small = half(Image.open(results / name).convert("RGB")).quantize(256)  # as a GIF frame
    small.save(docs / f"celeba150_{name}", optimize=True)
frames = iio.imread(results / "generation.gif", index=None, extension=".gif", mode="RGB")
small = [np.asarray(half(Image.fromarray(f)).quantize(256).convert("RGB")) for f in frames]
iio.imwrite(docs / "celeba150_generation.gif", np.stack(small), extension=".gif", duration=500, loop=0)
for path in sorted(docs.glob("celeba150_*")):
    print(f"{path} {path.stat().st_size / 1e3:.0f} kB")
PY
