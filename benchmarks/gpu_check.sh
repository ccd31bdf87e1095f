#!/usr/bin/env bash
# The GPU measurements of issues 13 and 17 in one go, for a short GPU slot (under 8 minutes on an
# H100, the install included):
#   bash benchmarks/gpu_check.sh [OUT_DIR]
# 0. the install (skipped when $PYTHON already imports vae_lit), 1. the CUDA sync and precision
# tests, 2. the output layer plain vs fused, 3. the throughput benchmark at batch 64/256/1024
# eager, then at 256 with compile default and reduce-overhead (data on the GPU), 4. the design
# card's command for three epochs on generated 150x150 JPEGs with data.on_device=true.
# Every result is printed as one JSON line per configuration as soon as it is measured (a timeout
# loses only the unfinished one) and kept in OUT_DIR; paste the lines into benchmarks/RESULTS.md
# with the date, device and these commands. Timings use the CSV logger (no W&B files to write).
set -uo pipefail
out="${1:-${OUT:-gpu_results}}"
mkdir -p "$out"
py="${PYTHON:-.venv/bin/python}"
TIMEFORMAT="%R s"  # bash's own `time`: no /usr/bin/time needed
started=$SECONDS
step() { echo "== $1 ($((SECONDS - started)) s in)"; }

step install
if ! "$py" -c "import vae_lit" 2>/dev/null; then
    python3 -m venv .venv && py=.venv/bin/python
    "$py" -m pip install -q -c constraints.txt -e ".[dev]" >"$out/install.txt" 2>&1 \
        || tail -5 "$out/install.txt"
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"

step tests
timeout 90 "$py" -m pytest -q -p no:cacheprovider tests/test_host_syncs.py \
    tests/test_precision.py -m "not slow" -k "cuda or sync or deterministic or auto_precision" \
    >"$out/tests.txt" 2>&1
tail -3 "$out/tests.txt"

step output_layer
timeout 60 "$py" benchmarks/output_layer.py 2>"$out/output_layer.err" \
    | tee "$out/output_layer.json"

# Steps are fewer than the script's GPU default (100) so all three sizes fit in the slot; the
# lines carry steps_per_round. Compiling costs ~1 min per mode: compile at 256 only.
bench=(--rounds 2 --steps 30 --warmup 5 --override logger=csv)
step "train_throughput eager"
timeout 170 "$py" benchmarks/train_throughput.py "${bench[@]}" --batch-sizes 64 256 1024 \
    2>"$out/train_throughput.err" | tee "$out/train_throughput.json"
step "train_throughput compile"
timeout 150 "$py" benchmarks/train_throughput.py "${bench[@]}" --batch-sizes 256 \
    --compile default reduce-overhead \
    2>"$out/train_throughput_compile.err" | tee "$out/train_throughput_compile.json"

step "design card"
images="$out/jpegs"
"$py" - "$images" <<'EOF'
import sys
from pathlib import Path

import numpy as np
from PIL import Image

root = Path(sys.argv[1])
root.mkdir(parents=True, exist_ok=True)
rng = np.random.default_rng(0)
for i in range(2048):  # smooth random colour fields, so the model has something to learn
    small = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
    Image.fromarray(small).resize((150, 150), Image.BILINEAR).save(root / f"{i:05d}.jpg")
EOF
time timeout 120 "$py" -m vae_lit.train model=conv data=folder data.root="$images" \
    data.cache_dir="$out/cache" data.on_device=true trainer.gpus=1 trainer.max_epochs=3 \
    logger=csv hydra.run.dir="$out/run" >"$out/design_card.txt" 2>&1
grep -E "precision=auto|Epoch 2|val/loss" "$out/design_card.txt" | tail -6
step "done"
