#!/usr/bin/env bash
# Two tenants under four sharing modes on the H200 (docs/tenants.md): time-slicing, MPS,
# MIG-like 3g+4g caps, and one server for both, each as `gpushare interfere` (each tenant
# alone, then both). vLLM unpacked in /tmp/vb/site, SmolLM2's tokenizer in /tmp/vb/tok.
#   scripts/h200_interference.sh OUT_DIR          # the four modes on GPU 0, one after another
#   scripts/h200_interference.sh OUT_DIR split    # two GPUs at once: the MPS modes on GPU 0,
#                                                 # time-slicing and one server on GPU 1
set -u
out=$1; layout=${2:-one}
mkdir -p "$out"
source "$(dirname "$0")/h100_env.sh"
model=/tmp/m7b  # outside the checkout, which the next call may refresh
[ -f $model/tokenizer.json ] || { mkdir -p $model && cp configs/h100/mistral-7b-shape/config.json /tmp/vb/tok/* $model/; }
snapshots "$out/nvidia-smi.log" 20
cfg=configs/h200/tenants
echo "=== $(date -u +%T)"
if [ "$layout" = split ]; then
  alt=/tmp/tenants-gpu1; mkdir -p $alt  # the same scenarios on GPU 1, on ports of their own
  for f in timeslice one_server; do
    sed -e 's/port: 81/port: 82/' -e 's/^sharing: {mode: /sharing: {gpu: 1, mode: /' $cfg/$f.yaml > $alt/$f.yaml
  done
  CUDA_VISIBLE_DEVICES=0 python3 -m gpushare.cli interfere --model $model --out "$out/gpu0" \
    --configs $cfg/mps.yaml $cfg/mig_emulation.yaml > "$out/gpu0.log" 2>&1 &
  first=$!
  python3 -m gpushare.cli interfere --model $model --out "$out/gpu1" \
    --configs $alt/timeslice.yaml $alt/one_server.yaml > "$out/gpu1.log" 2>&1 &
  second=$!
  wait $first; a=$?; wait $second; b=$?
  echo "exit gpu0=$a gpu1=$b $(date -u +%T)"
else
  python3 -m gpushare.cli interfere --model $model --out "$out" \
    --configs $cfg/timeslice.yaml $cfg/mps.yaml $cfg/mig_emulation.yaml $cfg/one_server.yaml
  echo "exit=$? $(date -u +%T)"
fi
left_behind
