#!/usr/bin/env python3
"""ref_templates.py SEED... : the context templates the patched reference (ref_run.py's setup:
torch.manual_seed(seed), then the model loaded in float32, then AlphaEdit's get_context_templates)
samples on fact-llama, one JSON line per seed: {"seed": s, "templates": [["{}"], [...5]]}.
Also --check: the same texts generated with the full attention mask (what generate_fast
under transformers 4 saw) for comparison."""
import json, os, sys, types
import torch
AE = os.environ.get("AE", "/tmp/AE"); M = os.environ.get("M", "/work/main/tests/fixtures/fact-llama")
from transformers import AutoModelForCausalLM, AutoTokenizer
import transformers.models.llama.modeling_llama  # noqa
os.chdir(AE); sys.path.insert(0, AE)
for name in ["matplotlib", "matplotlib.style", "datasets"]:
    m = types.ModuleType(name); m.context = None; m.load_dataset = None; sys.modules[name] = m
import AlphaEdit.AlphaEdit_main as AEM
torch.set_num_threads(2)
for s in [int(x) for x in sys.argv[1:]]:
    torch.manual_seed(s)
    model = AutoModelForCausalLM.from_pretrained(M, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(M); tok.pad_token = tok.eos_token
    AEM.CONTEXT_TEMPLATES_CACHE = None
    print(json.dumps({"seed": s, "templates": AEM.get_context_templates(model, tok)}), flush=True)
