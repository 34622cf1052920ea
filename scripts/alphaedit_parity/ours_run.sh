#!/bin/bash
# ours_run.sh OUT [extra edit-eval args...]: our AlphaEdit 5x20 sequential run on fact-llama cases 0-99
# (stats in /tmp/fl-stats, built with `edit stats --model $M --layers 0-2 --samples 100000 --text $M/stats-corpus.txt`).
# Prints the final ES/PS/NS and the per-chunk rewrite successes out of 20 on the final model.
E=${E:-/work/main/target/debug/edit}; M=${M:-/work/main/tests/fixtures/fact-llama}
OUT=$1; shift
$E -v eval --method alphaedit --model $M --dataset $M/cases.json --config $M/hparams/AlphaEdit.json \
  --num-edits 20 --sequential --limit 100 --stats-dir /tmp/fl-stats --out $OUT --force "$@" > $OUT.log 2>&1 || { tail -5 $OUT.log; exit 1; }
python3 - "$OUT" <<'PY'
import json, sys, numpy as np
d = sys.argv[1]
fin = {}
for l in open(f"{d}/20-edits-final.jsonl"):
    r = json.loads(l); fin[r["case_id"]] = r["final"]
ids = sorted(fin)
def succ(k, s):
    x = [s[f"{k}_prompts_probs"] for s in [fin[i] for i in ids]]
    f = (lambda p: p["target_true"] < p["target_new"]) if k == "neighborhood" else (lambda p: p["target_true"] > p["target_new"])
    return round(100 * np.mean([np.mean([f(p) for p in c]) for c in x]), 2)
acc = lambda k: round(100 * np.mean([np.mean(fin[i][f"{k}_prompts_correct"]) for i in ids]), 2)
per = [sum(fin[i]["rewrite_prompts_probs"][0]["target_true"] > fin[i]["rewrite_prompts_probs"][0]["target_new"] for i in ids[c:c + 20]) for c in range(0, len(ids), 20)]
print(f"{d}: ES {succ('rewrite',0)} PS {succ('paraphrase',0)} NS {succ('neighborhood',0)} | acc {acc('rewrite')} {acc('paraphrase')} {acc('neighborhood')} | per chunk {per}")
PY
