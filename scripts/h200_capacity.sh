#!/usr/bin/env bash
# chat's SLO capacity per sharing mode on one H200 (docs/capacity.md, configs/h200/capacity): each
# scenario searched alone and beside batch at 16 in flight. vLLM unpacked in /tmp/vb/site,
# SmolLM2's tokenizer in /tmp/vb/tok. The search runs into a folder outside the checkout, so a
# later call on the same machine resumes it (the same command again); each call stops itself
# (SIGINT, a clean stop after the probe under way) after LIMIT seconds and copies what it has.
#   LIMIT=540 scripts/h200_capacity.sh COPY_TO configs/h200/capacity/one_server.yaml ...
set -u
copy_to=$1; shift
out=/tmp/h200-capacity
mkdir -p "$out" "$copy_to"
source "$(dirname "$0")/h100_env.sh"
model=/tmp/m7b  # outside the checkout, which the next call may refresh
[ -f $model/tokenizer.json ] || { mkdir -p $model && cp configs/h100/mistral-7b-shape/config.json /tmp/vb/tok/* $model/; }
snapshots "$out/nvidia-smi-$(date -u +%H%M%S).log" 30
echo "=== $(date -u +%T) $*"
timeout -s INT "${LIMIT:-540}" python3 -m gpushare.cli capacity --model $model --out "$out" --configs "$@"
echo "exit=$? $(date -u +%T)"
left_behind
tar -C "$out" --exclude=chunks.csv -cf - . | tar -C "$copy_to" -xf -
