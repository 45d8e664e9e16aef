#!/usr/bin/env bash
# The paper's SPO settings through the verl plug-in (spo_qwen3_8b.yaml), one 8-GPU node.
#
#   MODEL=/models/Qwen3-8B TASK=/data/math.jsonl bash examples/verl/run_qwen3_8b.sh
#
# 1. the prompts in verl's layout, keyed by the task's stable ids (extra_info.index);
# 2. offline tracker values: 8 samples per prompt with the initial policy (spec §3),
#    written by spo-rl's own `spo init-values` under the same ids;
# 3. verl with the two plug-in lines set in the config.
set -euo pipefail
cd "$(dirname "$0")/../.."
: "${MODEL:?set MODEL to a local Qwen3-8B directory}" "${TASK:?set TASK to a prompt/answer/id file}"
OUT=${OUT:-runs/verl-qwen3-8b}
SPO_CFG=(configs/qwen3-8b-math.yaml "model.path=$MODEL" "task.name=$TASK")

python examples/verl/make_data.py "${SPO_CFG[@]}" --out "$OUT/data"
[ -f "$OUT/values.parquet" ] || spo init-values "${SPO_CFG[@]}" --samples 8 --out "$OUT/values.parquet"

python -m verl.trainer.main_ppo --config-path="$PWD/examples/verl" --config-name=spo_qwen3_8b \
    data.train_files="$OUT/data/train.parquet" data.val_files="$OUT/data/test.parquet" \
    actor_rollout_ref.model.path="$MODEL" \
    trainer.v1.single_stream_spo.init_values="$OUT/values.parquet" \
    trainer.default_local_dir="$OUT/checkpoints" "$@"
