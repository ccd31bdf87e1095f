#!/usr/bin/env bash
# The GPU measurements of issue 13 in one go, for a short GPU slot (about 12 minutes on an H100):
#   bash benchmarks/gpu_check.sh [OUT_DIR]
# 1. the CUDA sync test, 2. the output layer plain vs fused, 3. the throughput benchmark at batch
# 64/256/1024 with and without compile (data on the GPU), 4. the design card's command for three
# epochs on generated 150x150 JPEGs with data.on_device=true. Each result is one file in OUT_DIR;
# paste the JSON lines into benchmarks/RESULTS.md with the date, device and these commands.
set -uo pipefail
out="${1:-${OUT:-gpu_results}}"
mkdir -p "$out"
py="${PYTHON:-.venv/bin/python}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"

"$py" -m pytest -q tests/test_host_syncs.py tests/test_precision.py -m "not slow" \
    >"$out/tests.txt" 2>&1
tail -3 "$out/tests.txt"

"$py" benchmarks/output_layer.py >"$out/output_layer.json" 2>"$out/output_layer.err"
cat "$out/output_layer.json"

# Compiling costs ~1 min per mode and batch size: eager at every batch size, compile at 256 only.
timeout 300 "$py" benchmarks/train_throughput.py \
    >"$out/train_throughput.json" 2>"$out/train_throughput.err"
cat "$out/train_throughput.json"
timeout 300 "$py" benchmarks/train_throughput.py --batch-sizes 256 --compile default reduce-overhead \
    >"$out/train_throughput_compile.json" 2>"$out/train_throughput_compile.err"
cat "$out/train_throughput_compile.json"

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
/usr/bin/time -v "$py" -m vae_lit.train model=conv data=folder data.root="$images" \
    data.cache_dir="$out/cache" data.on_device=true trainer.gpus=1 trainer.max_epochs=3 \
    logger=csv hydra.run.dir="$out/run" >"$out/design_card.txt" 2>&1
grep -E "precision=auto|Epoch 2|val/loss|Elapsed|Maximum resident" "$out/design_card.txt" | tail -8
