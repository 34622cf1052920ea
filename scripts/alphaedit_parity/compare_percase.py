#!/usr/bin/env python3
"""compare_percase.py RUN_A.json[:runname] RUN_B.json[:runname]  -- max |ΔNLL| and the reference summary
of each. A file is ref_run.py's percase.json, the fixture's reference-percase.json (give :RUN), or our
`edit eval --sequential` output's N-edits-final.jsonl (the scores on the final model)."""
import json, sys
import numpy as np

def load(spec):
    path, _, run = spec.partition(":")
    if path.endswith(".jsonl"):
        out = {}
        for l in open(path):
            r = json.loads(l)
            s = r.get("final") or r.get("post")
            out[str(r["case_id"])] = {k: [[p["target_new"], p["target_true"]] for p in s[f"{k}_prompts_probs"]] for k in ["rewrite", "paraphrase", "neighborhood"]}
        return out
    d = json.load(open(path))
    if "runs" in d:
        d = d["runs"][run]["cases"]
    elif "cases" in d and isinstance(d["cases"], dict):
        d = d["cases"]
    return d

def summ(d, ids):
    r = {}
    for k in ["rewrite", "paraphrase", "neighborhood"]:
        f = (lambda n, t: t < n) if k == "neighborhood" else (lambda n, t: t > n)
        r[k] = round(100 * np.mean([np.mean([f(n, t) for n, t in d[i][k]]) for i in ids]), 2)
    return r

a, b = load(sys.argv[1]), load(sys.argv[2])
ids = [i for i in a if i in b]
m = max(abs(x - y) for i in ids for k in ["rewrite", "paraphrase", "neighborhood"] for p, q in zip(a[i][k], b[i][k]) for x, y in zip(p, q))
print(f"{len(ids)} common cases, max |dNLL| = {m:.3g}")
print("A", summ(a, ids)); print("B", summ(b, ids))
