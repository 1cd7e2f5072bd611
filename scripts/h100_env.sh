# Sourced by the H100 scripts: the environment for vLLM unpacked in /tmp/vb/site (docs/h100.md),
# and nvidia-smi snapshots into a log while the caller runs, as evidence of the sharing mode.
#   source scripts/h100_env.sh; snapshots LOG SECONDS
export PYTHONPATH=/tmp/vb/site:$PWD/src HF_HUB_OFFLINE=1 VLLM_USE_FLASHINFER_SAMPLER=0 PYTHONUNBUFFERED=1

snapshots() {
  (while true; do date -u +%T; nvidia-smi; sleep "$2"; done) >> "$1" 2>&1 &
  snapshot_loop=$!
  trap 'kill $snapshot_loop 2>/dev/null' EXIT
}

left_behind() {
  local left
  left=$(ps -eo pid,args | grep -E 'vllm|VLLM|nvidia-cuda-mps' | grep -v grep)
  echo "left behind: ${left:-nothing}"
}
