#!/usr/bin/env bash
# The seed matrix (baseline, MPS, MIG-like 3g+4g x concurrency 8/16/24, 512 in / 128 out) on the
# two H200s of one host through Ray (`matrix --ray local`), then on one GPU, one scenario after
# another (docs/fleet.md). vLLM unpacked in /tmp/vb/site, Ray in /tmp/raysite, SmolLM2's
# tokenizer in /tmp/vb/tok.
# Ray there: the cp312 wheel unzipped (python3 -m zipfile -e), ray/{jars,rllib,data,serve,train,
# tune,llm} removed (201 -> 146 MB), tar | xz -6 (29.7 MB) into /tmp/raysite; unzipping drops
# the exec bits, so `find /tmp/raysite/ray/core -type f -exec chmod +x {} +` before use.
#   scripts/h200_fleet.sh OUT_DIR ray SECONDS                   # the Ray matrix, cells of SECONDS
#   scripts/h200_fleet.sh OUT_DIR one SECONDS [SCENARIO ...]    # on GPU 0 (default: all three)
set -u
out=$1; what=$2; seconds=$3; shift 3
mkdir -p "$out"
source "$(dirname "$0")/h100_env.sh"
export PYTHONPATH=/tmp/raysite:$PYTHONPATH RAY_USAGE_STATS_ENABLED=0
model=/tmp/m7b  # outside the checkout, which the next call may refresh
[ -f $model/tokenizer.json ] || { mkdir -p $model && cp configs/h100/mistral-7b-shape/config.json /tmp/vb/tok/* $model/; }
snapshots "$out/nvidia-smi-$what.log" 15
names=${*:-baseline mps mig_emulation}
configs=$(for n in $names; do echo configs/h200/seed/$n.yaml; done)
begin=$(date +%s.%N)
echo "=== $what: $names, cells of $seconds s, $(date -u +%T)"
if [ "$what" = ray ]; then
  python3 -m gpushare.cli matrix --configs $configs --concurrency 8 16 24 --duration "$seconds" \
    --model $model --ray local --out "$out/ray"
else
  python3 -m gpushare.cli matrix --configs $configs --concurrency 8 16 24 --duration "$seconds" \
    --model $model --out "$out/one-gpu"
fi
code=$?
echo "exit=$code wall_s=$(python3 -c "import time; print(round(time.time() - $begin, 1))") $(date -u +%T)"
left_behind
nvidia-smi --query-compute-apps=gpu_uuid,pid,used_memory --format=csv
