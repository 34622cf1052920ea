"""Golden outputs for `edit trace`: the reference causal tracing (kmeng01/rome,
experiments/causal_trace.py, `calculate_hidden_flow`) run on the fact-gpt2 fixture, on the CPU.

Usage (once, by a developer; tests never run Python):

    pip install torch transformers datasets matplotlib scipy scikit-learn
    git clone https://github.com/kmeng01/rome /path/to/rome
    python3 scripts/golden_trace.py /path/to/rome tests/fixtures/fact-gpt2 > tests/fixtures/fact-gpt2/trace-golden.json

The reference code is imported from its checkout, not copied. Its `make_inputs` defaults to
CUDA; the wrapper below passes `device="cpu"`. Everything else runs as published: the clean
row and the corrupted rows in one batch, numpy's `RandomState(1)` noise re-created for every
run, the per-token decoded subject range.
"""

import json
import sys


def main():
    import os

    rome_dir, model_dir = os.path.abspath(sys.argv[1]), os.path.abspath(sys.argv[2])
    # The reference reads its globals.yml from the working directory.
    os.chdir(rome_dir)
    sys.path.insert(0, rome_dir)
    import torch
    import experiments.causal_trace as ct

    torch.set_grad_enabled(False)
    on_cpu = ct.make_inputs
    ct.make_inputs = lambda tok, prompts, device="cpu": on_cpu(tok, prompts, device="cpu")

    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    mt = ct.ModelAndTokenizer(model=model, tokenizer=tok)

    cases = json.load(open(f"{model_dir}/cases.json"))
    facts = []
    for c in cases[:6]:
        rw = c["requested_rewrite"]
        facts.append(dict(case_id=c["case_id"], prompt=rw["prompt"].format(rw["subject"]), subject=rw["subject"], attribute=rw["target_true"]["str"]))

    # The reference's default noise rule "s3": 3 x the std of the subjects' token embeddings.
    std = ct.collect_embedding_std(mt, [f["subject"] for f in facts])
    noise = 3 * std

    runs = []
    for f in facts:
        for kind in (None, "mlp", "attn"):
            runs.append(dict(fact=f, kind=kind, samples=10, window=10, replace=False, noise=noise))
    # Other settings on the first fact: an odd window smaller than the depth, fewer samples,
    # replacing the subject's embeddings instead of adding to them, no noise, no expectation.
    f0 = facts[0]
    runs.append(dict(fact=f0, kind="mlp", samples=10, window=3, replace=False, noise=noise))
    runs.append(dict(fact=f0, kind="attn", samples=4, window=4, replace=False, noise=noise))
    runs.append(dict(fact=f0, kind=None, samples=3, window=10, replace=True, noise=noise))
    runs.append(dict(fact=f0, kind=None, samples=10, window=10, replace=False, noise=0.0))
    runs.append(dict(fact=dict(f0, attribute=None), kind=None, samples=10, window=10, replace=False, noise=noise))
    # An expectation the model does not predict: the reference returns only correct_prediction.
    wrong = cases[0]["requested_rewrite"]["target_new"]["str"]
    runs.append(dict(fact=dict(f0, attribute=wrong), kind="mlp", samples=10, window=10, replace=False, noise=noise))

    out = []
    for r in runs:
        f = r["fact"]
        res = ct.calculate_hidden_flow(
            mt, f["prompt"], f["subject"], samples=r["samples"], noise=r["noise"], window=r["window"],
            kind=r["kind"], replace=r["replace"], expect=f["attribute"],
        )
        rec = dict(case_id=f["case_id"], prompt=f["prompt"], subject=f["subject"], expect=f["attribute"], samples=r["samples"],
                   noise=r["noise"], replace=r["replace"], window_arg=r["window"], kind_arg=r["kind"] or "")
        for k, v in res.items():
            if torch.is_tensor(v):
                v = v.tolist()
            elif isinstance(v, tuple):
                v = list(v)
            rec[k] = v
        out.append(rec)
    json.dump(dict(generator="scripts/golden_trace.py", reference="kmeng01/rome 0874014 experiments/causal_trace.py",
                   torch=torch.__version__, subjects_embedding_std=std, runs=out), sys.stdout, indent=1)


if __name__ == "__main__":
    main()
