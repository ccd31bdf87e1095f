#!/usr/bin/env bash
# docs/celeba64_learning_curve.png: test bits/dim against training wall time on this CPU at 64 px
# for hvae, logistic_vae and vqvae + its PixelCNN prior, each on one core (OMP_NUM_THREADS=1):
#   bash docs/make_learning_curve.sh [celeba root] [minutes]   # 2 x minutes, then the scoring (~25 min)
# hvae and logistic_vae train side by side for the whole budget; then the VQ-VAE (with the same
# discretized logistic likelihood, so its bits are true bits too) trains for two thirds of it and
# its prior for the last third. A checkpoint is kept every tenth of the budget (timed_checkpoint)
# and scored by vae_lit.eval on the test split (IWAE k=20; a VQ-VAE's code length under its prior).
# Runs that finished in OUT are reused (OUT/<run>.done): the same OUT goes on after a stop.
# OUT=<dir> (default logs/learning_curve/...) and FIGURE=<png> (default the one in docs/) move them.
set -euo pipefail
DATA=${1:-../shared/data/celeba_sample}
MINUTES=${2:-30}
OUT=${OUT:-logs/learning_curve/celeba64_${MINUTES}min}
FIGURE=${FIGURE:-docs/celeba64_learning_curve.png}
PYTHON=${PYTHON:-.venv/bin/python}
export OMP_NUM_THREADS=1

duration() { printf "00:%02d:%02d:%02d" $(($1 / 3600)) $(($1 % 3600 / 60)) $(($1 % 60)); }
BUDGET=$((MINUTES * 60))
TIMED=(callbacks.timed_checkpoint.minutes=$(awk "BEGIN { print $MINUTES / 10 }"))
COMMON=(data=celeba "data.root=$DATA" data.image_size=64 data.batch_size=16 trainer=cpu
  logger=csv trainer.max_epochs=100000 "callbacks=[default,timed_checkpoint]" "${TIMED[@]}")

train() { # name, seconds, overrides...
  local name=$1 seconds=$2
  shift 2
  [ -f "$OUT/$name.done" ] && return 0
  echo "$(date +%H:%M) training $name for $seconds s: $OUT/$name.log"
  $PYTHON -m vae_lit.train "${COMMON[@]}" "trainer.max_time=$(duration "$seconds")" "$@" \
    "hydra.run.dir=$OUT/$name" > "$OUT/$name.log" 2>&1
  touch "$OUT/$name.done"
}

mkdir -p "$OUT"
train hvae $BUDGET experiment=hvae &
side=$!
train logistic_vae $BUDGET experiment=logistic_vae
wait $side # its status: a failed run stops the script
train vqvae $((BUDGET * 2 / 3)) experiment=vqvae model/likelihood=discretized_logistic
if [ ! -f "$OUT/vqvae_prior.done" ]; then
  echo "$(date +%H:%M) training the VQ-VAE's prior for $((BUDGET / 3)) s: $OUT/vqvae_prior.log"
  $PYTHON -m vae_lit.train_prior "ckpt=$OUT/vqvae/checkpoints/last.ckpt" trainer=cpu \
    trainer.max_epochs=100000 "trainer.max_time=$(duration $((BUDGET / 3)))" \
    "callbacks=[model_checkpoint,rich_progress_bar,timed_checkpoint]" "${TIMED[@]}" \
    "hydra.run.dir=$OUT/vqvae_prior" > "$OUT/vqvae_prior.log" 2>&1
  touch "$OUT/vqvae_prior.done"
fi

echo "$(date +%H:%M) scoring the checkpoints: $OUT/eval.log"
for checkpoint in "$OUT"/{hvae,logistic_vae,vqvae_prior}/checkpoints/timed/step_*.ckpt; do
  [ -f "$checkpoint.eval.json" ] && continue
  $PYTHON -m vae_lit.eval "ckpt=$checkpoint" "eval.json=$checkpoint.eval.json" eval.k=20 \
    "eval.samplers=[]" eval.log_to_run=false >> "$OUT/eval.log" 2>&1
done

$PYTHON docs/learning_curve.py "$FIGURE" "hvae=$OUT/hvae" \
  "logistic_vae=$OUT/logistic_vae" "vqvae+prior=$OUT/vqvae,$OUT/vqvae_prior" \
  --title "CelebA 64, test bits/dim (IWAE k=20) against wall time, one core each"
