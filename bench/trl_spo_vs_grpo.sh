#!/usr/bin/env bash
# TRL GRPOTrainer vs SPOTrainer, both arms of a seed side by side: each arm is one process
# pinned to its own core with one thread, so load from anything else on the machine hits
# both arms alike and their wall-clock ratio stays meaningful. Resumable: a finished
# (arm, seed) is skipped; partial results are merged into docs/results/trl_spo_vs_grpo.json.
#   bash bench/trl_spo_vs_grpo.sh "0 1 2" 20
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
SEEDS=${1:-"0 1 2"}
STEPS=${2:-20}
PARTS=bench/results/trl_spo_vs_grpo_parts
mkdir -p "$PARTS"
for seed in $SEEDS; do
  "$PY" bench/trl_spo_vs_grpo.py --seeds "$seed" --steps "$STEPS" --arms grpo --threads 1 \
    --cpu 0 --out "$PARTS/grpo.json" >"${LOGS:-/tmp}/trl_grpo_seed$seed.log" 2>&1 &
  g=$!
  "$PY" bench/trl_spo_vs_grpo.py --seeds "$seed" --steps "$STEPS" --arms spo --threads 1 \
    --cpu 1 --skip-before --out "$PARTS/spo.json" >"${LOGS:-/tmp}/trl_spo_seed$seed.log" 2>&1 &
  s=$!
  wait "$g" "$s"
  "$PY" bench/trl_spo_vs_grpo.py --report --merge "$PARTS/grpo.json" "$PARTS/spo.json"
done
