#!/usr/bin/env bash
# Runs scenarios through `gpushare run` on a GPU machine where vLLM is unpacked in /tmp/vb/site
# (see docs/h100.md), with nvidia-smi snapshots beside the runs as evidence of the sharing mode.
#   scripts/h100_proof.sh OUT_DIR configs/h100/baseline.yaml [more.yaml ...]
set -u
out=$1; shift
mkdir -p "$out"
source "$(dirname "$0")/h100_env.sh"
snapshots "$out/nvidia-smi.log" 10
for cfg in "$@"; do
  echo "=== $cfg $(date -u +%T)"
  python3 -m gpushare.cli run --config "$cfg" --out "$out"
  echo "exit=$? $(date -u +%T)"
  python3 - "$out" <<'PY'
import json, pathlib, sys
run = max(pathlib.Path(sys.argv[1]).glob("*/summary.json"), key=lambda p: p.stat().st_mtime)
d = json.loads(run.read_text())
g = d.get("gpu") or {}
print(run.parent.name, "complete" if d["complete"] else f"INCOMPLETE: {d['error']}")
print(f"  done {d['completed']} failed {d['failed']}  out tok/s {d['output_throughput']:.0f}  "
      f"TTFT p50/p99 {d['p50_ttft_ms']}/{d['p99_ttft_ms']} ms  E2E p50/p95/p99 {d['p50_latency_s']}/{d['p95_latency_s']}/{d['p99_latency_s']} s")
print(f"  energy {g.get('energy_j')} J  J/tok {g.get('energy_per_output_token_j')}  avg W {g.get('avg_power_w')}  "
      f"peak MiB {g.get('peak_server_memory_mib')}")
print("  servers", [(s["name"], s["startup_s"], s["kv_cache_tokens"]) for s in d.get("servers", [])])
print("  placements", d.get("placements"), "mps", d.get("mps"))
PY
  left_behind
done
