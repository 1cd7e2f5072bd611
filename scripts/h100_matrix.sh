#!/usr/bin/env bash
# The H100 matrix (docs/h100.md) through `gpushare matrix`, with nvidia-smi snapshots every
# 30 s in OUT_DIR/nvidia-smi.log; rerun with the same OUT_DIR to resume.
#   scripts/h100_matrix.sh OUT_DIR --configs A.yaml [B.yaml ...] --concurrency 8 16 24 [matrix flags ...]
set -u
out=$1; shift
mkdir -p "$out"
source "$(dirname "$0")/h100_env.sh"
snapshots "$out/nvidia-smi.log" 30
echo "=== matrix $* $(date -u +%T)"
python3 -m gpushare.cli matrix --out "$out" "$@"
code=$?
echo "exit=$code $(date -u +%T)"
left_behind
exit $code
