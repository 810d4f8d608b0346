#!/usr/bin/env bash
# What one GPU lease measures for the accuracy tables, in under 10 minutes on an H200:
#   1. the ablation of the small recipe on BreastMNIST and RetinaMNIST: basic and full with 3 seeds, C1 and C2
#      with one, each evaluated on the validation and test splits with 1 and 10 samples;
#   2. the study of settings that may let the denoised prediction beat its prior (longer training, a wider
#      denoiser, no EMA, more noise draws, a smaller MMD weight, 64 px, a denoiser that predicts y0 instead of
#      the noise, with and without EMA), one seed, chosen on the validation split.
# Every line below is one train_evaluate.py job with its own folder; JOBS of them run at once (a 28 px run is
# launch-bound and leaves the GPU mostly idle), all stop at LIMIT seconds and keep what they finished. CSVs,
# logs and figures (no weights) are packed into $OUT/results.tar.gz. From the repository root:
#   OUT=/tmp/gpu DIFFMIC_DATA_DIR=/path/to/data bash benchmarks/gpu_ablation.sh
# EXTRA_ARGS adds arguments to every job (e.g. "--tiny --datasets breastmnist" for a dry run on a CPU).
# PART=ablation runs only the ablation's jobs (1-12), PART=study only the study's (13 on); all by default.
set -u
: "${OUT:?set OUT to the results folder}"
: "${DIFFMIC_DATA_DIR:?set DIFFMIC_DATA_DIR to the data folder}"
PYTHON=${PYTHON:-python3}
WORK="$OUT/work"
mkdir -p "$WORK"
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1 DIFFMIC_DATA_DIR PYTHON WORK EXTRA_ARGS="${EXTRA_ARGS:-}"
export DEADLINE=$(($(date +%s) + ${LIMIT:-500}))
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1
  "$PYTHON" -c "import torch, monai; print('torch', torch.__version__, 'monai', monai.__version__)"
  nproc
} > "$WORK/machine.txt" 2>&1

both="--splits validation test --samples 1 10"
study="$both --no-tsne --seeds 0"
jobs() {
  cat <<EOF
--datasets retinamnist --variant full --seeds 0 $both
--datasets retinamnist --variant full --seeds 1 $both
--datasets retinamnist --variant full --seeds 2 $both
--datasets breastmnist --variant full --seeds 0 $both
--datasets breastmnist --variant full --seeds 1 $both
--datasets breastmnist --variant full --seeds 2 $both
--datasets retinamnist --variant basic --seeds 0 1 2 $both
--datasets breastmnist --variant basic --seeds 0 1 2 $both
--datasets retinamnist --variant C1 --seeds 0 $both
--datasets retinamnist --variant C2 --seeds 0 $both
--datasets breastmnist --variant C1 --seeds 0 $both
--datasets breastmnist --variant C2 --seeds 0 $both
--datasets retinamnist $study --setting epochs60 --set max_epochs=60
--datasets breastmnist $study --setting epochs60 --set max_epochs=60
--datasets retinamnist $study --setting width2048 --set width=2048
--datasets breastmnist $study --setting width2048 --set width=2048
--datasets retinamnist $study --setting no_ema --set ema_decay=null
--datasets breastmnist $study --setting no_ema --set ema_decay=null
--datasets retinamnist $study --setting draws16 --set noise_draws=16
--datasets breastmnist $study --setting draws16 --set noise_draws=16
--datasets retinamnist $study --setting mmd0.1 --set mmd_weight=0.1
--datasets breastmnist $study --setting mmd0.1 --set mmd_weight=0.1
--datasets retinamnist $study --setting px64 --set image_size=64 roi_size=16
--datasets breastmnist $study --setting px64 --set image_size=64 roi_size=16
--datasets retinamnist $study --setting y0 --set prediction_type=sample
--datasets breastmnist $study --setting y0 --set prediction_type=sample
--datasets retinamnist $study --setting y0_no_ema --set prediction_type=sample ema_decay=null
--datasets breastmnist $study --setting y0_no_ema --set prediction_type=sample ema_decay=null
EOF
}
case "${PART:-all}" in
  ablation) first=1 last=12 ;;
  study) first=13 last=99 ;;
  all) first=1 last=99 ;;
  *) echo "PART must be ablation, study or all, not ${PART}" >&2; exit 2 ;;
esac

# each job: its number, then its arguments; it gets the time left before DEADLINE
jobs | nl -w2 -s' ' | awk -v a="$first" -v b="$last" '$1 >= a && $1 <= b' | xargs -P "${JOBS:-12}" -L 1 sh -c '
  job=$1; shift; left=$((DEADLINE - $(date +%s)))
  [ "$left" -gt 20 ] || { echo "job $job: not started"; exit 0; }
  timeout "$left" "$PYTHON" benchmarks/train_evaluate.py --out "$WORK/job$job" "$@" $EXTRA_ARGS \
    --set progress_bar=false > "$WORK/job$job.log" 2>&1
  echo "job $job: exit $? ($*)"' _ | tee "$WORK/jobs.txt"
tar czf "$OUT/results.tar.gz" --exclude=models -C "$OUT" work
