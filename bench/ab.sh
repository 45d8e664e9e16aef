#!/usr/bin/env bash
# Run one bench script on two git revisions, interleaved (A B A B ...), so that machine
# load hits both alike: the guard for "structure changes keep behaviour and speed".
#   bash bench/ab.sh REV_A REV_B ROUNDS OUTDIR -- bench/generate_speed.py --repeats 2
# Each run writes OUTDIR/<a|b>_<round>.json via the script's --out (and --md if it has one).
set -euo pipefail
A=$1; B=$2; ROUNDS=$3; OUT=$4; shift 4; [ "$1" = "--" ] && shift
SCRIPT=$1; shift
PY=${PY:-$(pwd)/.venv/bin/python}
mkdir -p "$OUT"
declare -A DIR=([a]="$OUT/tree_a" [b]="$OUT/tree_b")
declare -A REV=([a]="$A" [b]="$B")
for side in a b; do
  rm -rf "${DIR[$side]}"; mkdir -p "${DIR[$side]}"
  git archive "${REV[$side]}" | tar -x -C "${DIR[$side]}"
  git -C . rev-parse "${REV[$side]}" > "$OUT/${side}_rev.txt"
done
if grep -q -- '"--md"' "$SCRIPT"; then MD=1; else MD=0; fi
for round in $(seq 1 "$ROUNDS"); do
  for side in a b; do
    extra=(--out "$(realpath "$OUT")/${side}_${round}.json")
    [ "$MD" = 1 ] && extra+=(--md "$(realpath "$OUT")/${side}_${round}.md")
    echo "== round $round side $side (${REV[$side]})"
    (cd "${DIR[$side]}" && PYTHONPATH="$PWD" "$PY" "$SCRIPT" "$@" "${extra[@]}") > "$OUT/${side}_${round}.log" 2>&1 \
      || { echo "side $side round $round failed: $OUT/${side}_${round}.log"; exit 1; }
  done
done
echo "results in $OUT"
