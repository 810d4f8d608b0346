#!/usr/bin/env bash
# What one GPU lease measures for the accuracy tables, in under 10 minutes on an H200:
#   1. the ablation of the small recipe on BreastMNIST and RetinaMNIST: basic and full with 3 seeds, C1 and C2
#      with one, each evaluated on the validation and test splits with 1 and 10 samples;
#   2. the study of settings that may let the denoised prediction beat its prior (longer training, a wider
#      denoiser, no EMA, more noise draws, a smaller MMD weight, 64 px, a denoiser that predicts y0 instead of
#      the noise, with and without EMA), one seed, chosen on the validation split.
#   3. two more seeds of the y0 and y0_no_ema settings, and C1 and C2 with y0: the ablation of the winner;
#   4. a prior that stops training (dcg_epochs) at the warm-up's end, 3 seeds, and after 10 epochs, one seed;
#   5. the encoder and denoiser at a third of the learning rate (lr_denoiser 0.0003), 3 seeds;
#   6. the diffusion study of docs/benchmarks.md: eval-mode priors and the prior-error weighting of the denoising
#      loss (3 seeds each), the authors' DCG objective, and the three together (one seed each);
#   7. study 3: basic and full (y0) on MedMNIST v2's schedule, 100 epochs, 3 seeds each;
#   8. study 5: cross-fitted priors (prior_folds 2), 3 seeds; the authors' MMD kernel, one seed;
#   9. study 10: cross-fitted priors with 5 folds (prior_folds 5), 3 seeds;
#  10. studies 11 and 12 at equal epochs with the fair baseline: cross-fitted priors on MedMNIST v2's
#      schedule, 3 seeds (basic_medmnist's jobs 71-72 are its baseline).
# A job's --setting NAME gives the config overrides of benchmarks/settings/NAME.yaml (train_evaluate.py merges it).
# Every line below is one train_evaluate.py job with its own folder; JOBS of them run at once (a 28 px run is
# launch-bound and leaves the GPU mostly idle). Each job's training stops EVAL_SECONDS before LIMIT (at the end
# of an iteration, reporting the epochs it completed), so that its best checkpoint is still evaluated; whatever is
# still running at LIMIT is killed and keeps what it finished. CSVs, logs and figures (no weights) are packed
# into $OUT/results.tar.gz. From the repository root:
#   OUT=/tmp/gpu DIFFMIC_DATA_DIR=/path/to/data bash benchmarks/gpu_ablation.sh
# The jobs run small.yaml as committed. Its denoiser predicts y0 since the third lease; the first two leases' jobs
# (1-24) ran the noise target: EXTRA_ARGS="--set prediction_type=epsilon" reruns those as they ran.
# EXTRA_ARGS adds arguments to every job (e.g. "--tiny --datasets breastmnist" for a dry run on a CPU).
# PART=ablation runs only the ablation's jobs (1-12), PART=study only the study's (13-28), PART=seeds 29-36,
# PART=y0 37-40, PART=fixed_prior 41-48, PART=learning_rate 49-54, PART=diffusion_study 55-70,
# PART=medmnist_schedule 71-78, PART=crossfit 79-84, PART=authors_mmd 85-86, PART=crossfit5 87-92,
# PART=crossfit_medmnist 93-98; all by default. PART may also list job numbers, started in that order
# (e.g. PART="25 26 29 19").
set -u
: "${OUT:?set OUT to the results folder}"
: "${DIFFMIC_DATA_DIR:?set DIFFMIC_DATA_DIR to the data folder}"
PYTHON=${PYTHON:-python3}
WORK="$OUT/work"
mkdir -p "$WORK"
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1 DIFFMIC_DATA_DIR PYTHON WORK EXTRA_ARGS="${EXTRA_ARGS:-}"
export DEADLINE=$(($(date +%s) + ${LIMIT:-500})) EVAL_SECONDS=${EVAL_SECONDS:-60}
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1
  "$PYTHON" -c "import torch, monai; print('torch', torch.__version__, 'monai', monai.__version__)"
  echo "cores: $(nproc --all)"  # --all: plain nproc obeys OMP_NUM_THREADS=1
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
--datasets retinamnist $study --setting epochs60
--datasets breastmnist $study --setting epochs60
--datasets retinamnist $study --setting width2048
--datasets breastmnist $study --setting width2048
--datasets retinamnist $study --setting no_ema
--datasets breastmnist $study --setting no_ema
--datasets retinamnist $study --setting draws16
--datasets breastmnist $study --setting draws16
--datasets retinamnist $study --setting mmd0.1
--datasets breastmnist $study --setting mmd0.1
--datasets retinamnist $study --setting px64
--datasets breastmnist $study --setting px64
--datasets retinamnist $study --setting y0
--datasets breastmnist $study --setting y0
--datasets retinamnist $study --setting y0_no_ema
--datasets breastmnist $study --setting y0_no_ema
--datasets retinamnist $both --no-tsne --seeds 1 --setting y0
--datasets retinamnist $both --no-tsne --seeds 2 --setting y0
--datasets breastmnist $both --no-tsne --seeds 1 --setting y0
--datasets breastmnist $both --no-tsne --seeds 2 --setting y0
--datasets retinamnist $both --no-tsne --seeds 1 --setting y0_no_ema
--datasets retinamnist $both --no-tsne --seeds 2 --setting y0_no_ema
--datasets breastmnist $both --no-tsne --seeds 1 --setting y0_no_ema
--datasets breastmnist $both --no-tsne --seeds 2 --setting y0_no_ema
--datasets retinamnist --variant C1 $study --setting y0
--datasets retinamnist --variant C2 $study --setting y0
--datasets breastmnist --variant C1 $study --setting y0
--datasets breastmnist --variant C2 $study --setting y0
--datasets retinamnist $both --no-tsne --seeds 0 --setting y0_dcg5
--datasets retinamnist $both --no-tsne --seeds 1 --setting y0_dcg5
--datasets retinamnist $both --no-tsne --seeds 2 --setting y0_dcg5
--datasets breastmnist $both --no-tsne --seeds 0 --setting y0_dcg5
--datasets breastmnist $both --no-tsne --seeds 1 --setting y0_dcg5
--datasets breastmnist $both --no-tsne --seeds 2 --setting y0_dcg5
--datasets retinamnist $study --setting y0_dcg10
--datasets breastmnist $study --setting y0_dcg10
--datasets retinamnist $both --no-tsne --seeds 0 --setting y0_lr3e-4
--datasets retinamnist $both --no-tsne --seeds 1 --setting y0_lr3e-4
--datasets retinamnist $both --no-tsne --seeds 2 --setting y0_lr3e-4
--datasets breastmnist $both --no-tsne --seeds 0 --setting y0_lr3e-4
--datasets breastmnist $both --no-tsne --seeds 1 --setting y0_lr3e-4
--datasets breastmnist $both --no-tsne --seeds 2 --setting y0_lr3e-4
--datasets retinamnist $both --no-tsne --seeds 0 --setting y0_eval_priors
--datasets retinamnist $both --no-tsne --seeds 1 --setting y0_eval_priors
--datasets retinamnist $both --no-tsne --seeds 2 --setting y0_eval_priors
--datasets breastmnist $both --no-tsne --seeds 0 --setting y0_eval_priors
--datasets breastmnist $both --no-tsne --seeds 1 --setting y0_eval_priors
--datasets breastmnist $both --no-tsne --seeds 2 --setting y0_eval_priors
--datasets retinamnist $both --no-tsne --seeds 0 --setting y0_weight10
--datasets retinamnist $both --no-tsne --seeds 1 --setting y0_weight10
--datasets retinamnist $both --no-tsne --seeds 2 --setting y0_weight10
--datasets breastmnist $both --no-tsne --seeds 0 --setting y0_weight10
--datasets breastmnist $both --no-tsne --seeds 1 --setting y0_weight10
--datasets breastmnist $both --no-tsne --seeds 2 --setting y0_weight10
--datasets retinamnist $study --setting y0_authors_dcg
--datasets breastmnist $study --setting y0_authors_dcg
--datasets retinamnist $study --setting y0_all3
--datasets breastmnist $study --setting y0_all3
--datasets retinamnist --variant basic --seeds 0 1 2 $both --no-tsne --setting basic_medmnist
--datasets breastmnist --variant basic --seeds 0 1 2 $both --no-tsne --setting basic_medmnist
--datasets retinamnist $both --no-tsne --seeds 0 --setting y0_medmnist
--datasets retinamnist $both --no-tsne --seeds 1 --setting y0_medmnist
--datasets retinamnist $both --no-tsne --seeds 2 --setting y0_medmnist
--datasets breastmnist $both --no-tsne --seeds 0 --setting y0_medmnist
--datasets breastmnist $both --no-tsne --seeds 1 --setting y0_medmnist
--datasets breastmnist $both --no-tsne --seeds 2 --setting y0_medmnist
--datasets retinamnist $both --no-tsne --seeds 0 --setting y0_crossfit
--datasets retinamnist $both --no-tsne --seeds 1 --setting y0_crossfit
--datasets retinamnist $both --no-tsne --seeds 2 --setting y0_crossfit
--datasets breastmnist $both --no-tsne --seeds 0 --setting y0_crossfit
--datasets breastmnist $both --no-tsne --seeds 1 --setting y0_crossfit
--datasets breastmnist $both --no-tsne --seeds 2 --setting y0_crossfit
--datasets retinamnist $study --setting y0_authors_mmd
--datasets breastmnist $study --setting y0_authors_mmd
--datasets retinamnist $both --no-tsne --seeds 0 --setting y0_crossfit5
--datasets retinamnist $both --no-tsne --seeds 1 --setting y0_crossfit5
--datasets retinamnist $both --no-tsne --seeds 2 --setting y0_crossfit5
--datasets breastmnist $both --no-tsne --seeds 0 --setting y0_crossfit5
--datasets breastmnist $both --no-tsne --seeds 1 --setting y0_crossfit5
--datasets breastmnist $both --no-tsne --seeds 2 --setting y0_crossfit5
--datasets retinamnist $both --no-tsne --seeds 0 --setting y0_crossfit_medmnist
--datasets retinamnist $both --no-tsne --seeds 1 --setting y0_crossfit_medmnist
--datasets retinamnist $both --no-tsne --seeds 2 --setting y0_crossfit_medmnist
--datasets breastmnist $both --no-tsne --seeds 0 --setting y0_crossfit_medmnist
--datasets breastmnist $both --no-tsne --seeds 1 --setting y0_crossfit_medmnist
--datasets breastmnist $both --no-tsne --seeds 2 --setting y0_crossfit_medmnist
EOF
}
case "${PART:-all}" in
  ablation) picked=$(seq 1 12) ;;
  study) picked=$(seq 13 28) ;;
  seeds) picked=$(seq 29 36) ;;
  y0) picked=$(seq 37 40) ;;
  fixed_prior) picked=$(seq 41 48) ;;
  learning_rate) picked=$(seq 49 54) ;;
  diffusion_study) picked=$(seq 55 70) ;;
  medmnist_schedule) picked=$(seq 71 78) ;;
  crossfit) picked=$(seq 79 84) ;;
  authors_mmd) picked=$(seq 85 86) ;;
  crossfit5) picked=$(seq 87 92) ;;
  crossfit_medmnist) picked=$(seq 93 98) ;;
  all) picked=$(seq 1 98) ;;
  *[!0-9\ ]* | "") echo "PART must be ablation, study, seeds, y0, fixed_prior, learning_rate, diffusion_study, medmnist_schedule, crossfit, authors_mmd, crossfit5, crossfit_medmnist, all or job numbers, not ${PART}" >&2; exit 2 ;;
  *) picked=$PART ;;
esac

# each job: its number, then its arguments, in the order picked; it trains until EVAL_SECONDS before DEADLINE
for n in $picked; do jobs | sed -n "${n}s/^/$n /p"; done | xargs -P "${JOBS:-12}" -L 1 sh -c '
  job=$1; shift; left=$((DEADLINE - $(date +%s)))
  [ "$left" -gt $((EVAL_SECONDS + 20)) ] || { echo "job $job: not started"; exit 0; }
  timeout "$left" "$PYTHON" benchmarks/train_evaluate.py --out "$WORK/job$job" "$@" $EXTRA_ARGS \
    --train-seconds $((left - EVAL_SECONDS)) --set progress_bar=false > "$WORK/job$job.log" 2>&1
  echo "job $job: exit $? ($*)"' _ | tee "$WORK/jobs.txt"
tar czf "$OUT/results.tar.gz" --exclude=models -C "$OUT" work
