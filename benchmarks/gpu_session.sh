#!/usr/bin/env bash
# What one GPU lease measures, in under 10 minutes on an H200 (the longest one command may run there):
#   1. the small recipe on BreastMNIST and RetinaMNIST, evaluated with 1 and 10 samples (train_evaluate.py);
#   2. the speed table at 28, 64 and 224 px (speed.py);
#   3. the paper's recipe on HAM10000 for HAM_SECONDS of training, evaluated on the test split.
# Each stage has its own time limit and keeps what it finished. Logs, CSVs and figures (no weights) are
# packed into $OUT/results.tar.gz. From the repository root:
#   OUT=/tmp/gpu DIFFMIC_DATA_DIR=/path/to/data bash benchmarks/gpu_session.sh
# SMALL_ARGS, SPEED_ARGS and HAM_ARGS add arguments to each stage (e.g. --tiny for a dry run on a CPU).
# The GPU machine has no internet: stage 3 trains the DCG from scratch unless HAM_DCG_PRETRAINED=imagenet
# (with torchvision's resnet50-0676ba61.pth carried into torch.hub's checkpoints folder).
set -u
: "${OUT:?set OUT to the results folder}"
: "${DIFFMIC_DATA_DIR:?set DIFFMIC_DATA_DIR to the data folder}"
export PYTHONUNBUFFERED=1 DIFFMIC_DATA_DIR
PYTHON=${PYTHON:-python3}
WORK="$OUT/work"
mkdir -p "$WORK"
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1
  "$PYTHON" -c "import torch, monai; print('torch', torch.__version__, 'monai', monai.__version__)"
  nproc
} > "$WORK/machine.txt" 2>&1

stage() {  # name, seconds, command...
  local name=$1 seconds=$2
  shift 2
  local start=$SECONDS
  timeout "$seconds" "$@" > "$WORK/$name.log" 2>&1
  echo "$name: exit $? after $((SECONDS - start)) s (limit $seconds s)" | tee -a "$WORK/stages.txt"
}

stage small "${SMALL_SECONDS:-200}" "$PYTHON" benchmarks/train_evaluate.py --out "$WORK/train_evaluate" \
  --set progress_bar=false ${SMALL_ARGS:-}
stage speed "${SPEED_SECONDS:-120}" "$PYTHON" benchmarks/speed.py --out "$WORK/speed.csv" ${SPEED_ARGS:-}
stage ham "${HAM_TOTAL_SECONDS:-230}" "$PYTHON" benchmarks/train_evaluate.py --out "$WORK/train_evaluate" \
  --recipe paper --datasets ham10000 --samples 1 --no-tsne --train-seconds "${HAM_SECONDS:-150}" \
  --set cache_rate=1.0 num_workers=8 progress_bar=false "dcg_pretrained=${HAM_DCG_PRETRAINED:-null}" ${HAM_ARGS:-}
tar czf "$OUT/results.tar.gz" --exclude=models -C "$OUT" work
