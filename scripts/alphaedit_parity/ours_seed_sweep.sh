#!/bin/bash
# ours_seed_sweep.sh SEED...: for each seed, our default run (templates sampled per chunk, no <s>),
# the same with chunk 0's templates fixed for all chunks (the reference samples once per process),
# and those fixed templates with a literal "<s> " prefix (the reference's double BOS).
S=$(dirname $0)/ours_run.sh
for s in "$@"; do
  $S /tmp/o-def-s$s --seed $s
  python3 - $s <<'PY'
import json, sys
s = sys.argv[1]
t = json.loads([l for l in open(f"/tmp/o-def-s{s}.log") if "context templates:" in l][0].split("context templates: ")[1])
json.dump([[t[0]], t[1:]], open(f"/tmp/t-ours-{s}.json", "w"))
json.dump([[t[0]], ["<s> " + x for x in t[1:]]], open(f"/tmp/t-oursbos-{s}.json", "w"))
PY
  $S /tmp/o-fix-s$s --set "context_templates=$(cat /tmp/t-ours-$s.json)"
  $S /tmp/o-fixbos-s$s --set "context_templates=$(cat /tmp/t-oursbos-$s.json)"
done
