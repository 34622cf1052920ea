#!/usr/bin/env python3
"""The reference UltraEdit code (XiaojieGu/UltraEdit) editing fact-gpt2 in sequence, for the
anchor of the lifelong-editing benchmark (benches/README.md, "Lifelong editing").

The CounterFact cases (or EasyEdit's simplified CounterFact records) become the reference's zsRE layout (`src` = the filled rewrite prompt, `ans`
= the new target; `rephrase`, `loc`, `loc_ans` are read by its data class but play no part in the
edit), edited `--num-edits` per turn in sub-batches of 10, turn after turn, by its own editor
(`cache`, `predict_param_shifts`, `edit_model`, as `sequential_valid` does); the final model is
saved (`save_pretrained`, its `model_cache` path) for `edit eval --method none` to score with the
same evaluator as our runs. float32 on the CPU, seed 42 as its `main.py`.

Usage: python3 ref_ultraedit.py ULTRAEDIT_CHECKOUT MODEL_DIR CASES.json OUT_DIR --num-edits N
       --limit L --lr LR --modules transformer.h.4.mlp.c_proj,transformer.h.5.mlp.c_proj
Needs torch, transformers, omegaconf (wandb and nltk are stubbed: never called on this path).
"""

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
import types

import torch
from omegaconf import OmegaConf
from torch.utils.data import DataLoader

p = argparse.ArgumentParser()
p.add_argument("ref")
p.add_argument("model")
p.add_argument("cases")
p.add_argument("out")
p.add_argument("--num-edits", type=int, required=True)
p.add_argument("--limit", type=int, required=True)
p.add_argument("--lr", type=float, required=True)
p.add_argument("--modules", required=True)
p.add_argument("--batch-size", type=int, default=10)
a = p.parse_args()

sys.path.insert(0, a.ref)
for stub in ("wandb", "nltk"):
    sys.modules[stub] = types.ModuleType(stub)
from data.zsre import ZSREDataset  # noqa: E402
from editor.ultraedit import ULTRAEDIT  # noqa: E402
from model import make_model  # noqa: E402
import editor.base  # noqa: E402
import transformers  # noqa: E402

# For a model path containing "llama" the reference's editor/base.py calls LlamaTokenizerFast
# without importing it (a NameError); give it the model's own tokenizer, as it loads every other.
editor.base.LlamaTokenizerFast = transformers.AutoTokenizer

torch.manual_seed(42)
torch.set_num_threads(int(os.environ.get("EDIT_BENCH_THREADS", torch.get_num_threads())))
work = tempfile.mkdtemp()
cases = json.load(open(a.cases))[: a.limit]
records = []
for c in cases:
    if "requested_rewrite" in c:  # CounterFact
        rw = c["requested_rewrite"]
        src = rw["prompt"].replace("{}", rw["subject"])
        records.append({
            "src": src,
            "ans": rw["target_new"]["str"],
            "rephrase": (c.get("paraphrase_prompts") or [src])[0],
            "loc": (c.get("neighborhood_prompts") or ["x"])[0],
            "loc_ans": rw["target_true"]["str"],
        })
    else:  # EasyEdit's simplified CounterFact (`prompt` already filled)
        records.append({"src": c["prompt"], "ans": c["target_new"], "rephrase": c["rephrase_prompt"],
                        "loc": c["locality_prompt"], "loc_ans": c["locality_ground_truth"]})
data_path = os.path.join(work, "records.json")
json.dump(records, open(data_path, "w"))
turns = a.limit // a.num_edits
config = OmegaConf.create({
    "num_seq": turns, "model_device": "cpu", "editor_device": "cpu", "model_cache": False,
    "model": {"name_or_path": a.model, "name": "fact-gpt2", "class_name": "AutoModelForCausalLM", "edit_modules": a.modules.split(","), "half": False},
    "editor": {"name": "ultraedit", "lr": a.lr, "batch_size": 128, "token": "ans", "cache_dir": os.path.join(work, "cache")},
    "dataset": {"name": "zsre", "n_edits": a.num_edits, "batch_size": a.batch_size, "num_seq": turns},
})
model = make_model(config.model).to("cpu").float()
editor = ULTRAEDIT(config, model)
dataset = ZSREDataset(config.dataset, data_path, editor.tok, "cpu")
loader = DataLoader(dataset, a.num_edits, False, collate_fn=dataset.collate_fn, drop_last=True)
t0 = time.time()
per_turn = []
for tuples in loader:
    t = time.time()
    editor.cache(tuples["edit_tuples"])
    editor.edit_model(editor.predict_param_shifts(), False)
    per_turn.append(time.time() - t)
total = time.time() - t0
os.makedirs(a.out, exist_ok=True)
editor.model.save_pretrained(a.out)
for f in ("tokenizer.json", "tokenizer_config.json"):
    if os.path.exists(os.path.join(a.model, f)):
        shutil.copy(os.path.join(a.model, f), a.out)
json.dump({"turns": len(per_turn), "seconds": total, "per_turn": per_turn}, open(os.path.join(a.out, "timing.json"), "w"))
print(f"{len(per_turn)} turns of {a.num_edits} in {total:.1f} s")
shutil.rmtree(work)
