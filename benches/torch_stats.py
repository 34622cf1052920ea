"""PyTorch's side of `cargo bench --bench scale`: the second-moment statistics of MLP keys at
several layers of a transformers checkpoint, over the same texts and batch shapes as `edit stats`
(a seed-1 `random.Random.shuffle` of a text file's lines, the first N, empty ones dropped,
truncated to the context; chunks of 100 sorted longest first and packed so that width x rows
<= 3 x context), forward hooks on the down projections accumulating k^T k in f32, the forward
stopped after the deepest layer (as the reference's `layer_stats` does with `nethook.Trace(stop=True)`).

Prints one JSON line: tokens, seconds (the collection, after loading), load_seconds, tokens_per_s.
Used only by the bench (torch and transformers are not dependencies of `edit`).
"""

import argparse
import json
import random
import time

import torch
import transformers
from tokenizers import Tokenizer


class Stop(Exception):
    pass


def parse_layers(s):
    out = []
    for part in s.split(","):
        a, _, b = part.partition("-")
        out.extend(range(int(a), int(b or a) + 1))
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--layers", required=True)
    ap.add_argument("--texts", type=int, required=True)
    ap.add_argument("--corpus", required=True)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default=None, help="compute dtype (f32, bf16, f16); default: the stored one")
    a = ap.parse_args()
    device = "cuda" if a.device.startswith("cuda") else "cpu"

    started = time.perf_counter()
    cfg = transformers.AutoConfig.from_pretrained(a.model)
    with open(f"{a.model}/model.safetensors", "rb") as f:
        header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
    stored = next(v["dtype"] for k, v in header.items() if k != "__metadata__")
    dtype = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}[stored]
    if a.dtype:
        dtype = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}[a.dtype]
    model = transformers.AutoModelForCausalLM.from_pretrained(a.model, dtype=dtype).to(device).eval()
    tok = Tokenizer.from_file(f"{a.model}/tokenizer.json")
    ctx = getattr(cfg, "n_positions", None) or cfg.max_position_embeddings
    load_seconds = time.perf_counter() - started

    if hasattr(model, "transformer"):
        blocks = model.transformer.h
    elif hasattr(model, "gpt_neox"):
        blocks = model.gpt_neox.layers
    else:
        blocks = model.model.layers
    layers = parse_layers(a.layers)
    deepest = max(layers)
    sums = {}
    mask_now = {}

    def hook(layer):
        def f(module, inputs):
            k = inputs[0][mask_now["m"]].float()
            sums[layer] = sums.get(layer, 0) + k.T @ k
            if layer == deepest:
                raise Stop()

        return f

    for l in layers:
        mlp = blocks[l].mlp
        down = getattr(mlp, "c_proj", None) or getattr(mlp, "fc_out", None) or getattr(mlp, "down_proj", None) or mlp.dense_4h_to_h
        down.register_forward_pre_hook(hook(l))

    text = open(a.corpus, encoding="utf-8").read()
    lines = [l[:-1] if l.endswith("\r") else l for l in text.split("\n")]
    if text.endswith("\n"):
        lines.pop()
    order = list(range(len(lines)))
    random.Random(1).shuffle(order)
    texts = [lines[i] for i in order[: a.texts]]

    tokens = 0
    budget = 3 * min(ctx, 2048)  # edit stats' default batch bound
    t0 = time.perf_counter()
    with torch.no_grad():
        for c in range(0, len(texts), 100):
            # With the tokenizer's own special tokens (a BOS where it adds one), as edit and the
            # reference's layer_stats tokenize.
            seqs = [e.ids[:ctx] for e in tok.encode_batch(texts[c : c + 100], add_special_tokens=True)]
            seqs = sorted((s for s in seqs if s), key=len, reverse=True)
            start = 0
            while start < len(seqs):
                width = len(seqs[start])
                end = start + 1
                while end < len(seqs) and width * (end - start + 1) <= budget:
                    end += 1
                rows = seqs[start:end]
                ids = torch.zeros((len(rows), width), dtype=torch.long)
                att = torch.zeros((len(rows), width), dtype=torch.long)
                for i, s in enumerate(rows):
                    ids[i, : len(s)] = torch.tensor(s)
                    att[i, : len(s)] = 1
                ids, att = ids.to(device), att.to(device)
                mask_now["m"] = att.bool()
                try:
                    model(input_ids=ids, attention_mask=att)
                except Stop:
                    pass
                tokens += int(att.sum())
                start = end
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    print(json.dumps({"torch": torch.__version__, "threads": torch.get_num_threads(), "tokens": tokens, "seconds": seconds,
                      "load_seconds": load_seconds, "tokens_per_s": tokens / seconds}))


if __name__ == "__main__":
    main()
