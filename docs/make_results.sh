#!/usr/bin/env bash
# docs/RESULTS.md's tables and figures: the three comparison sweeps (every model, one budget per
# data set), their figures copied to docs/compare_<data>.png, then each table and the README's
# summary printed for pasting.
#   bash docs/make_results.sh [celeba root]       # about 75 minutes on 2 idle CPU cores
# Sweeps already run are reused: SPRITES32=<sweep dir> CELEBA64=<dir> CELEBA150=<dir> skip theirs.
set -euo pipefail
DATA=${1:-../shared/data/celeba_sample}
PYTHON=${PYTHON:-.venv/bin/python}

newest() { ls -d "logs/$1/multiruns/"*/ | sort | tail -n 1; }
sweep() { # name, then the sweep's overrides; prints its dir
  local name=$1 given=$2
  shift 2
  if [ -z "$given" ]; then
    $PYTHON -m vae_lit.train "experiment=$name" "$@" >&2
    given=$(newest "$name")
  fi
  echo "${given%/}"
}

SPRITES32=$(sweep compare_sprites32 "${SPRITES32:-}")
CELEBA64=$(sweep compare_celeba64 "${CELEBA64:-}" data.root="$DATA")
CELEBA150=$(sweep compare_celeba150 "${CELEBA150:-}" data.root="$DATA")

for pair in "sprites32:$SPRITES32" "celeba64:$CELEBA64" "celeba150:$CELEBA150"; do
  name=${pair%%:*} dir=${pair#*:}
  cp "$dir/compare.png" "docs/compare_$name.png"
  echo "## $name ($dir)"
  cat "$dir/compare.md"
  echo
done
echo "## README summary"
$PYTHON -m vae_lit.compare --headline "sprites 32=$SPRITES32" "CelebA 64=$CELEBA64" \
  "CelebA 150=$CELEBA150"
ls -l docs/compare_*.png
