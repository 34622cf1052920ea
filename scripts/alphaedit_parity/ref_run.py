#!/usr/bin/env python3
"""Run the reference AlphaEdit / MEMIT (jianghoucheng/AlphaEdit f5248d3, patched by
patch_reference.py) on fact-llama the way experiments/evaluate.py does, with instrumentation.

  python3 ref_run.py --ae /tmp/AE --alg AlphaEdit --num-edits 20 --limit 100 --seed 0 --out /tmp/ref-ae
  python3 ref_run.py --ae /tmp/AE --alg MEMIT --num-edits 100 --limit 100 --seed 0 --out /tmp/ref-memit

What it reproduces of evaluate.main (AlphaEdit branch): cache_c and P allocated as for
"Llama3-8B" (d_k = down_proj.weight.shape[1]; fact-llama's model_name is treated like it),
P[i] = the reference's own get_project (read from experiments/evaluate.py), chunks of
--num-edits, apply_AlphaEdit_to_model(model, tok, requests, hparams, cache_template=None,
cache_c=cache_c, P=P), evaluation of every record on the final model with the reference's
compute_rewrite_quality_counterfact (no generation tests), metrics as experiments/summarize.py.

Options for the investigation (all off by default):
  --templates JSON     force the context templates (the AlphaEdit/MEMIT module cache)
  --dump DIR           save per chunk: zs, the keys / cur_zs / residuals / updates per layer,
                       ΔW actually applied, cache_c, P (torch .pt files)
  --chunks N           stop after N chunks (evaluates then)
  --dtype bfloat16     load the model in another dtype
  --eval-every-chunk   also score the chunk's own 20 cases right after each chunk
"""
import argparse
import ast
import json
import os
import sys
import time
import types
from pathlib import Path

import numpy as np
import torch

p = argparse.ArgumentParser()
p.add_argument("--ae", default="/tmp/AE")
p.add_argument("--model", default="/work/main/tests/fixtures/fact-llama")
p.add_argument("--alg", default="AlphaEdit", choices=["AlphaEdit", "MEMIT"])
p.add_argument("--hparams", default=None, help="default: <model>/hparams/<alg>.json")
p.add_argument("--set", action="append", default=[], help="hparam override key=json")
p.add_argument("--num-edits", type=int, default=20)
p.add_argument("--limit", type=int, default=100)
p.add_argument("--seed", type=int, default=0)
p.add_argument("--dtype", default="float32")
p.add_argument("--out", required=True)
p.add_argument("--templates", default=None)
p.add_argument("--dump", default=None)
p.add_argument("--chunks", type=int, default=None)
p.add_argument("--eval-every-chunk", action="store_true")
p.add_argument("--threads", type=int, default=2)
p.add_argument("--fix-target-space", action="store_true",
               help="compute_z's rewriting prompts end in decode(target[:-1]) with its leading space kept "
                    "(the Metaspace decoder drops it: 'of' + 'table' -> 'oftable'); for exact comparisons with ours")
args = p.parse_args()

torch.set_num_threads(args.threads)
M = Path(args.model).resolve()
out = Path(args.out)
out.mkdir(parents=True, exist_ok=True)
os.chdir(args.ae)  # globals.yml, data/stats are relative
sys.path.insert(0, args.ae)

from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402  (before the stubs)
import transformers.models.llama.modeling_llama  # noqa: E402,F401

# --- stubs for packages only imported (generation tests, HF datasets) -------------------------
corpus = [l.rstrip("\n") for l in open(M / "stats-corpus.txt", encoding="utf-8")]
dsmod = types.ModuleType("datasets")
dsmod.load_dataset = lambda name, cfg=None: {"train": [{"text": t} for t in corpus]}
sys.modules["datasets"] = dsmod
for name in ["matplotlib", "matplotlib.style", "nltk", "scipy", "scipy.stats", "scipy.sparse", "sklearn", "sklearn.feature_extraction", "sklearn.feature_extraction.text"]:
    m = types.ModuleType(name)
    m.TfidfVectorizer = object
    m.hmean = None
    m.context = None
    sys.modules[name] = m

import AlphaEdit.AlphaEdit_main as AEM  # noqa: E402
from AlphaEdit import AlphaEditHyperParams  # noqa: E402
import memit.memit_main as MM  # noqa: E402
from memit import MEMITHyperParams  # noqa: E402
from experiments.py.eval_utils_counterfact import compute_rewrite_quality_counterfact  # noqa: E402

# The reference's get_project and chunks, taken from its evaluate.py (not importable here:
# it imports GLUE / MEND / NSE dependencies).
src = Path("experiments/evaluate.py").read_text()
ns = {"torch": torch, "get_cov": AEM.get_cov, "islice": __import__("itertools").islice}
for node in ast.parse(src).body:
    if isinstance(node, ast.FunctionDef) and node.name in ("get_project", "chunks"):
        exec(compile(ast.Module(body=[node], type_ignores=[]), "evaluate.py", "exec"), ns)

torch.manual_seed(args.seed)
np.random.seed(args.seed)

hp_path = args.hparams or str(M / "hparams" / f"{args.alg}.json")
hd = json.load(open(hp_path))
for kv in args.set:
    k, v = kv.split("=", 1)
    hd[k] = json.loads(v)
hparams = (AlphaEditHyperParams if args.alg == "AlphaEdit" else MEMITHyperParams)(**hd)

model = AutoModelForCausalLM.from_pretrained(str(M), dtype=getattr(torch, args.dtype))
tok = AutoTokenizer.from_pretrained(str(M))
tok.pad_token = tok.eos_token
print("model dtype", next(model.parameters()).dtype, "name_or_path", model.config._name_or_path)

ds = json.load(open(M / "cases.json"))[: args.limit]

if args.templates:
    t = json.loads(args.templates) if args.templates.strip().startswith("[") else json.load(open(args.templates))
    AEM.CONTEXT_TEMPLATES_CACHE = t
    MM.CONTEXT_TEMPLATES_CACHE = t

wname = lambda l: f"{hparams.rewrite_module_tmp.format(l)}.weight"
params = dict(model.named_parameters())

cache_c = P = None
if args.alg == "AlphaEdit":
    W_out = params[wname(hparams.layers[-1])]
    d_k = W_out.shape[1]  # the "EleutherAI_gpt-j-6B"/"Llama3-8B" branch
    cache_c = torch.zeros((len(hparams.layers), d_k, d_k), device="cpu")
    P = torch.zeros((len(hparams.layers), d_k, d_k), device="cpu")
    t0 = time.time()
    for i, layer in enumerate(hparams.layers):
        P[i, :, :] = ns["get_project"](model, tok, layer, hparams)
    print(f"P built in {time.time()-t0:.1f}s; ranks", [int(round(torch.trace(P[i]).item())) for i in range(len(hparams.layers))])

# --- instrumentation ----------------------------------------------------------------------------
rec = {}
if args.dump:
    dump = Path(args.dump)
    dump.mkdir(parents=True, exist_ok=True)
    if P is not None:
        torch.save(P.clone(), dump / "P.pt")
    mod = AEM if args.alg == "AlphaEdit" else MM
    _cz, _ck, _gm = mod.compute_z, mod.compute_ks, mod.get_module_input_output_at_words
    _solve = torch.linalg.solve

    def cz(*a, **k):
        r = _cz(*a, **k)
        rec.setdefault("z", []).append(r.detach().clone())
        return r

    def ck(*a, **k):
        r = _ck(*a, **k)
        rec.setdefault("ks", []).append(r.detach().clone())
        return r

    def gm(*a, **k):
        r = _gm(*a, **k)
        rec.setdefault("cur_zs_out", []).append(r[1].detach().clone())
        return r

    def solve(A, B, *a, **k):
        r = _solve(A, B, *a, **k)
        rec.setdefault("solve_A", []).append(A.detach().clone())
        rec.setdefault("solve_B", []).append(B.detach().clone())
        rec.setdefault("solve_X", []).append(r.detach().clone())
        return r

    mod.compute_z, mod.compute_ks, mod.get_module_input_output_at_words = cz, ck, gm
    torch.linalg.solve = solve

if args.fix_target_space:
    mod = AEM if args.alg == "AlphaEdit" else MM
    _cz2 = mod.compute_z

    def cz_space(model, tok, *a, **k):
        orig = tok.decode

        def decode(ids, *da, **dk):
            text = orig(ids, *da, **dk)
            if isinstance(ids, int) or (hasattr(ids, "dim") and ids.dim() == 0):
                return text
            ids = [int(i) for i in ids]
            if ids and tok.convert_ids_to_tokens(ids[0]).startswith("\u2581") and not text.startswith(" "):
                text = " " + text
            return text

        tok.decode = decode
        try:
            return _cz2(model, tok, *a, **k)
        finally:
            del tok.decode

    mod.compute_z = cz_space


def score(records):
    per = {}
    for r in records:
        res = compute_rewrite_quality_counterfact(model, tok, r, None, None)
        per[str(r["case_id"])] = {
            k: [[x["target_new"], x["target_true"]] for x in res[f"{k}_prompts_probs"]] for k in ["rewrite", "paraphrase", "neighborhood"]
        } | {f"{k}_correct": res[f"{k}_prompts_correct"] for k in ["rewrite", "paraphrase", "neighborhood"]}
    return per


def summarize(per):
    s = {}
    for k in ["rewrite", "paraphrase", "neighborhood"]:
        if k == "neighborhood":
            succ = [np.mean([t < n for n, t in c[k]]) for c in per.values()]
        else:
            succ = [np.mean([t > n for n, t in c[k]]) for c in per.values()]
        s[f"{k}_success"] = round(100 * float(np.mean(succ)), 2)
        s[f"{k}_acc"] = round(100 * float(np.mean([np.mean(c[f"{k}_correct"]) for c in per.values()])), 2)
    return s


# --- the edit loop (evaluate.main) --------------------------------------------------------------
log = {"args": vars(args), "chunks": []}
t_edit = 0.0
for ci, chunk in enumerate(ns["chunks"](ds, args.num_edits)):
    if args.chunks is not None and ci >= args.chunks:
        break
    requests = [{"case_id": r["case_id"], **r["requested_rewrite"]} for r in chunk]
    before = {wname(l): params[wname(l)].detach().clone() for l in hparams.layers}
    rec.clear()
    t0 = time.time()
    if args.alg == "AlphaEdit":
        model, cache_c = AEM.apply_AlphaEdit_to_model(model, tok, requests, hparams, cache_template=None, cache_c=cache_c, P=P)
    else:
        model, _ = MM.apply_memit_to_model(model, tok, requests, hparams, return_orig_weights=False, cache_template=None)
    dt = time.time() - t0
    t_edit += dt
    dW = {l: (params[wname(l)].detach() - before[wname(l)]) for l in hparams.layers}
    info = {"chunk": ci, "case_ids": [r["case_id"] for r in chunk], "time_s": dt,
            "dW_norm": {l: float(dW[l].float().norm()) for l in hparams.layers}}
    if cache_c is not None:
        info["cache_c_trace"] = [float(torch.trace(cache_c[i])) for i in range(len(hparams.layers))]
    if args.eval_every_chunk:
        info["own_chunk_now"] = summarize(score(chunk))
    print("CHUNK", json.dumps(info))
    log["chunks"].append(info)
    if args.dump:
        torch.save({"rec": {k: v for k, v in rec.items()}, "dW": dW, "cache_c": None if cache_c is None else cache_c.clone(),
                    "templates": AEM.CONTEXT_TEMPLATES_CACHE if args.alg == "AlphaEdit" else MM.CONTEXT_TEMPLATES_CACHE,
                    "case_ids": info["case_ids"]}, Path(args.dump) / f"chunk{ci}.pt")

log["templates"] = AEM.CONTEXT_TEMPLATES_CACHE if args.alg == "AlphaEdit" else MM.CONTEXT_TEMPLATES_CACHE
log["edit_time_s"] = t_edit
per = score(ds)
log["summary"] = summarize(per)
n = args.num_edits
log["rewrite_success_per_chunk"] = [int(sum(per[str(r["case_id"])]["rewrite"][0][1] > per[str(r["case_id"])]["rewrite"][0][0] for r in ds[i:i + n])) for i in range(0, len(ds), n)]
json.dump(per, open(out / "percase.json", "w"))
json.dump(log, open(out / "summary.json", "w"), indent=1)
print("SUMMARY", json.dumps(log["summary"]), "per chunk ES", log["rewrite_success_per_chunk"], f"edit time {t_edit:.1f}s")
