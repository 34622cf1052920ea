#!/usr/bin/env bash
# `--samples auto` against the full corpus on a fact fixture (issue 28): the statistics' tokens and
# time for layers 0-2, then ES / PS / NS of ROME (the first 20 cases, one at a time), MEMIT (the
# first 100 at once) and AlphaEdit (the first 100 in sequential chunks of 10, final scores) with
# each set, as `edit eval` reports them (the update-size guard off, as the reference has none: MEMIT's
# 100 facts at once on fact-gpt2 move layer 2 by 13× its norm). Prints a markdown table on stdout.
#
#   cargo build --release && benches/auto_stats.sh fact-gpt2 [MEMIT_tuned]
#   benches/auto_stats.sh fact-llama MEMIT
#
# Settings (environment): EDIT_BIN (target/release/edit), TOLERANCE (the default 0.2), KEEP=1 keeps
# the working directory (statistics, evaluations).
set -euo pipefail
fixture=${1:-fact-gpt2}
memit=${2:-MEMIT}
bin=${EDIT_BIN:-target/release/edit}
model=tests/fixtures/$fixture
corpus=$model/stats-corpus.txt
work=$(mktemp -d)
[ -z "${KEEP:-}" ] && trap 'rm -rf "$work"' EXIT
echo "work: $work" >&2
tolerance=${TOLERANCE:-0.2}

# The statistics: all 11,783 texts of the corpus, or auto.
for kind in full auto; do
  samples=100000
  extra=()
  if [ "$kind" = auto ]; then samples=auto; extra=(--tolerance "$tolerance"); fi
  start=$(date +%s.%N)
  "$bin" stats -q --json --model "$model" --layers 0-2 --text "$corpus" --samples "$samples" "${extra[@]}" \
    --stats-dir "$work/$kind" >"$work/$kind-stats.json"
  end=$(date +%s.%N)
  echo "$end - $start" | bc >"$work/$kind-seconds"
done

# One evaluation per method and statistics set.
evaluate() { # kind method config num_edits limit [--sequential]
  local kind=$1 method=$2 config=$3 n=$4 limit=$5
  shift 5
  local samples=100000
  [ "$kind" = auto ] && samples=auto
  "$bin" eval -q --method "$method" --model "$model" --config "$model/hparams/$config.json" --dataset "$model/cases.json" \
    --limit "$limit" --num-edits "$n" --max-update-ratio 1e9 "$@" --out "$work/$kind-$method" --text "$corpus" --samples "$samples" \
    --stats-dir "$work/$kind" >/dev/null
}
for kind in full auto; do
  evaluate "$kind" rome ROME 1 20
  evaluate "$kind" memit "$memit" 100 100
  evaluate "$kind" alphaedit AlphaEdit 10 100 --sequential
done

python3 - "$work" "$fixture" "$memit" <<'EOF'
import json, sys
work, fixture, memit = sys.argv[1:]
def scores(kind, method):
    s = json.load(open(f"{work}/{kind}-{method}/summary.json"))[0]
    stage = "final" if s.get("sequential") else "post"
    return " / ".join(f"{s[f'{stage}_{k}_success'][0]:.1f}" for k in ("rewrite", "paraphrase", "neighborhood"))
print(f"| {fixture}, layers 0-2 | tokens | texts | time | ROME, 20 cases | {memit}, 100 at once | AlphaEdit, 10 × 10 in sequence (final) |")
print("|---|---|---|---|---|---|---|")
for kind in ("full", "auto"):
    st = json.load(open(f"{work}/{kind}-stats.json"))
    secs = float(open(f"{work}/{kind}-seconds").read())
    label = "full corpus" if kind == "full" else f"`--samples auto` ({'converged' if st['auto']['converged'] else 'not converged'})"
    print(f"| {label} | {st['tokens']:,} | {st['texts']:,} | {secs:.1f} s | {scores(kind, 'rome')} | {scores(kind, 'memit')} | {scores(kind, 'alphaedit')} |")
EOF
