"""Writes N WikiBigEdit-layout records (XiaojieGu/UltraEdit `data/wikibigedit.py` fields) about
fact-gpt2's synthetic world, for the streaming memory benchmark in benches/README.md
("lifelong", streaming): each record updates one (person, relation) fact to another value of the
relation's pool, with a paraphrase, a persona prompt, a locality prompt (another person's true
fact) and, every other record, a multi-hop question. The records cycle through the world, so any
N can be made. Usage: python3 synthetic_wikibigedit.py N OUT.json [--jsonl]"""
import json
import random
import sys
from pathlib import Path

FACTS = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "fact-gpt2" / "facts.json"


def main():
    n, out = int(sys.argv[1]), Path(sys.argv[2])
    jsonl = "--jsonl" in sys.argv
    world = json.loads(FACTS.read_text())
    rels, people = world["relations"], world["subjects"]
    rng = random.Random(0)
    with out.open("w") as f:
        if not jsonl:
            f.write("[\n")
        for i in range(n):
            p = people[i % len(people)]
            rel = list(rels)[(i // len(people)) % len(rels)]
            t = rels[rel]["templates"]
            new = rng.choice([v for v in rels[rel]["pool"] if v != p["facts"][rel]])
            q = people[(i * 7 + 3) % len(people)]
            lrel = list(rels)[(i + 1) % len(rels)]
            rec = {
                "subject": p["subject"],
                "update": t[0].format(p["subject"]),
                "rephrase": t[1].format(p["subject"]),
                "ans": new,
                "personas": "Between the two of us, " + t[2].format(p["subject"]),
                "loc": rels[lrel]["templates"][0].format(q["subject"]),
                "loc_ans": q["facts"][lrel],
                "mhop": t[3].format("the person called " + p["subject"]) if i % 2 == 0 else None,
                "mhop_ans": new if i % 2 == 0 else None,
            }
            sep = "\n" if jsonl else (",\n" if i + 1 < n else "\n")
            f.write(json.dumps(rec) + sep)
        if not jsonl:
            f.write("]\n")


if __name__ == "__main__":
    main()
