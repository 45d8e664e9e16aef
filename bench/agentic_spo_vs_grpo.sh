#!/usr/bin/env bash
# Agentic SPO vs GRPO with real tool calls (issue 20), two runs at a time side by side: each
# run is one process pinned to its own core with one thread, so load from anything else on
# the machine hits both alike. Pairs: (async SPO, sync GRPO) of each seed, then async GRPO
# two seeds at a time (its wall-clock next to SPO's is therefore not side by side).
# Resumable: a finished (arm, seed) is skipped, an interrupted run resumes from its
# checkpoint; parts in bench/results/agentic_parts/ are merged into
# docs/results/agentic_spo_vs_grpo.{json,md}.
#   bash bench/agentic_spo_vs_grpo.sh "0 1 2" [--options and key=value ...]
# Slow tools (an added heavy-tailed delay per call; its own parts and page):
#   PARTS=bench/results/agentic_parts_slow_tools ARMS="async_spo sync_grpo" \
#     bash bench/agentic_spo_vs_grpo.sh "0" --delay-median 1 rollout.tool_workers=32
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
read -r -a SEEDS <<<"${1:-0 1 2}"
shift || true
PARTS=${PARTS:-bench/results/agentic_parts}
ARMS=${ARMS:-"async_spo sync_grpo async_grpo"}
mkdir -p "$PARTS"
run() {  # arm seed cpu [overrides]: one run in the background
  local arm=$1 seed=$2 cpu=$3
  shift 3
  "$PY" bench/agentic_spo_vs_grpo.py --arms "$arm" --seeds "$seed" --cpu "$cpu" --threads 1 \
    --out "$PARTS/$arm-s$seed.json" "$@" >"${LOGS:-/tmp}/agentic_${arm}_seed$seed.log" 2>&1 &
}
merge() {  # the page of these parts (slow tools: its own, from --delay-median)
  "$PY" bench/agentic_spo_vs_grpo.py --merge "$PARTS"/*.json "$@"
}
for seed in "${SEEDS[@]}"; do
  run async_spo "$seed" 0 "$@"
  run sync_grpo "$seed" 1 "$@"
  wait
  merge "$@"
done
[[ " $ARMS " == *" async_grpo "* ]] || exit 0
for ((i = 0; i < ${#SEEDS[@]}; i += 2)); do
  run async_grpo "${SEEDS[i]}" 0 "$@"
  if ((i + 1 < ${#SEEDS[@]})); then run async_grpo "${SEEDS[i + 1]}" 1 "$@"; fi
  wait
  merge "$@"
done
