#!/usr/bin/env python3
"""compare_deltas.py OURS_EVAL_OUT_DIR REF_DUMP_DIR [N_EDITS]: per chunk and layer, ‖ΔW‖ of ours
(deltas/N-edits-chunk-K.safetensors of `edit eval --sequential --out`) and of the reference
(chunkK.pt of ref_run.py --dump), and their relative difference."""
import sys
from pathlib import Path
import torch
from safetensors.torch import load_file

ours, ref = Path(sys.argv[1]), Path(sys.argv[2])
n = sys.argv[3] if len(sys.argv) > 3 else "20"
k = 0
while (ours / f"deltas/{n}-edits-chunk-{k:05d}.safetensors").exists() and (ref / f"chunk{k}.pt").exists():
    a = load_file(ours / f"deltas/{n}-edits-chunk-{k:05d}.safetensors")
    d = torch.load(ref / f"chunk{k}.pt", weights_only=False)
    row = []
    for l, r in d["dW"].items():
        key = [x for x in a if f"layers.{l}." in x][0]
        o, r = a[key].double(), r.double()
        if o.shape != r.shape:
            o = o.T
        row.append(f"L{l}: ours {o.norm():.4f} ref {r.norm():.4f} rel.diff {(o - r).norm() / r.norm():.2e}")
    print(f"chunk {k}: " + " | ".join(row))
    k += 1
