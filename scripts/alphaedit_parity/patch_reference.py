#!/usr/bin/env python3
"""Apply the minimal CPU / transformers-5 / local-corpus patches to a checkout of
jianghoucheng/AlphaEdit (f5248d3) in place.  Usage: patch_reference.py /tmp/AE

Patches (textual, idempotent):
  1. device: "cuda" -> "cpu", .cuda() -> .cpu() in the modules the runs use;
  2. util/nethook.py: transformers 5 decoder layers return a tensor, not a tuple; the hook
     shows edit_output / retained output a 1-tuple (as transformers 4 did) and hands the
     tensor back to the model;
  3. rome/layer_stats.py: accept a dataset name other than wikitext/wikipedia (the local
     corpus is supplied by a stub `datasets.load_dataset`, see ref_run.py).
Nothing numerical is changed.

With --fix-generate (a separate checkout, for the experiment in README.md), also:
  4. util/generate.py: pass the attention mask of the whole sequence so far, not of the current
     slice only, with the KV cache. transformers 4 treated the 1-column mask as "attend to
     everything before"; transformers 5 pads it with zeros, so every sampled token after the
     first step sees only <s> (the context templates become bigram-like text).
"""
import re
import sys
from pathlib import Path

root = Path(sys.argv[1])
fix_generate = "--fix-generate" in sys.argv[2:]
files = [*root.glob("AlphaEdit/*.py"), *root.glob("memit/*.py"), *root.glob("rome/*.py"),
         root / "util/generate.py", root / "experiments/py/eval_utils_counterfact.py"]
for f in files:
    s = f.read_text()
    t = s.replace('"cuda"', '"cpu"').replace(".cuda()", ".cpu()")
    if t != s:
        f.write_text(t)
        print("device ->", f.relative_to(root))

f = root / "util/nethook.py"
s = f.read_text()
if "T5WRAP" not in s:
    s = s.replace(
        "        def retain_hook(m, inputs, output):\n",
        "        def retain_hook(m, inputs, output):\n"
        "            wrapped = isinstance(output, torch.Tensor) and type(m).__name__.endswith(\"DecoderLayer\")  # T5WRAP\n"
        "            if wrapped:\n"
        "                output = (output,)\n", 1)
    s = s.replace(
        "            if stop:\n                raise StopForward()\n            return output\n",
        "            if stop:\n                raise StopForward()\n            return output[0] if wrapped else output\n", 1)
    assert s.count("T5WRAP") == 1 and "output[0] if wrapped" in s
    f.write_text(s)
    print("patched", f.relative_to(root))

f = root / "rome/layer_stats.py"
s = f.read_text()
t = s.replace('wikipedia="20200501.en")[ds_name]', 'wikipedia="20200501.en").get(ds_name)')
if t != s:
    f.write_text(t)
    print("patched", f.relative_to(root))

if fix_generate:
    f = root / "util/generate.py"
    s = f.read_text()
    t = s.replace("attention_mask=attention_mask[:, cur_context],", "attention_mask=attention_mask[:, : cur_context.stop],")
    assert t != s or "attention_mask[:, : cur_context.stop]" in s
    if t != s:
        f.write_text(t)
        print("patched (--fix-generate)", f.relative_to(root))
