#!/usr/bin/env python
"""Write the medkor demo data: a small Korean medical corpus and a KorMedMCQA-style sample.

All text is original, written for the demo from the fact tables and questions in
``scripts/demo_data``; nothing is copied from a real exam or data set. Stdlib only,
deterministic (fixed seeds), no network.

Outputs (under ``medkor/assets/demo`` by default)::

    data/train.jsonl, data/validation.jsonl         {"text": ...}
    kormedmcqa/{doctor,nurse,pharm,dentist}/test.jsonl, fewshot.jsonl   (hub schema of sean0042/KorMedMCQA)

Usage: python scripts/make_demo_data.py [--out DIR] [--only corpus|mcqa]
"""

from __future__ import annotations

import argparse
import collections
import json
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from demo_data import all_facts  # noqa: E402
from demo_data.corpus import MAX_CHARS, MIN_CHARS, generate  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "medkor" / "assets" / "demo"
SEED = 20240917
N_TRAIN, N_VALIDATION = 400, 48
SUBSETS = ("doctor", "nurse", "pharm", "dentist")
N_TEST, N_FEWSHOT = 12, 5
MAX_TOTAL_BYTES = 1_500_000


def write_jsonl(path: Path, rows: list[dict]) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    path.write_text(data, encoding="utf-8")
    return len(data.encode("utf-8"))


def read_jsonl(path: Path) -> list[dict]:
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


# ---------------------------------------------------------------- corpus
def make_corpus(out: Path) -> dict:
    entries = all_facts()
    docs = generate(entries, N_TRAIN + N_VALIDATION, SEED)
    rng = random.Random(SEED + 1)
    rng.shuffle(docs)
    validation, train = docs[:N_VALIDATION], docs[N_VALIDATION:]
    sizes = {}
    for name, rows in (("train", train), ("validation", validation)):
        sizes[name] = write_jsonl(out / "data" / f"{name}.jsonl", [{"text": t} for t in rows])
    return {"entries": len(entries), "sizes": sizes}


def check_corpus(out: Path) -> dict:
    train = [r["text"] for r in read_jsonl(out / "data" / "train.jsonl")]
    validation = [r["text"] for r in read_jsonl(out / "data" / "validation.jsonl")]
    assert len(train) >= 320 and len(validation) >= 40, (len(train), len(validation))
    assert len(set(train)) == len(train) and len(set(validation)) == len(validation), "duplicate documents"
    assert not set(train) & set(validation), "validation overlaps train"
    for t in train + validation:
        assert MIN_CHARS <= len(t) <= MAX_CHARS, (len(t), t)
        assert "{" not in t and "}" not in t, t
    return {"train": len(train), "validation": len(validation),
            "train_chars": sum(map(len, train)), "validation_chars": sum(map(len, validation))}


# ---------------------------------------------------------------- KorMedMCQA-style sample
FIELDS = ("subject", "year", "period", "q_number", "question", "A", "B", "C", "D", "E", "answer", "cot")


def _rows(subset: str, items: list[dict], with_cot: bool) -> list[dict]:
    rows = []
    for i, q in enumerate(items, start=1):
        rows.append({"subject": subset, "year": 2023, "period": 1, "q_number": i, "question": q["q"],
                     **dict(zip("ABCDE", q["o"])), "answer": q["a"], "cot": q["cot"] if with_cot else ""})
    return rows


def make_mcqa(out: Path) -> dict:
    from demo_data.mcqa import QUESTIONS

    sizes = {}
    for subset in SUBSETS:
        items = QUESTIONS[subset]
        assert len(items) == N_FEWSHOT + N_TEST, (subset, len(items))
        shots, test = items[:N_FEWSHOT], items[N_FEWSHOT:]
        base = out / "kormedmcqa" / subset
        sizes[f"{subset}/test"] = write_jsonl(base / "test.jsonl", _rows(subset, test, False))
        sizes[f"{subset}/fewshot"] = write_jsonl(base / "fewshot.jsonl", _rows(subset, shots, True))
    return {"sizes": sizes}


def check_mcqa(out: Path) -> dict:
    summary = {}
    questions = set()
    for subset in SUBSETS:
        for split, n in (("test", N_TEST), ("fewshot", N_FEWSHOT)):
            rows = read_jsonl(out / "kormedmcqa" / subset / f"{split}.jsonl")
            assert len(rows) == n, (subset, split, len(rows))
            for r in rows:
                assert tuple(r) == FIELDS, (subset, split, list(r))
                assert r["subject"] == subset
                assert all(type(r[k]) is int for k in ("year", "period", "q_number", "answer"))
                assert 1 <= r["answer"] <= 5
                options = [r[c] for c in "ABCDE"]
                assert all(isinstance(o, str) and o.strip() for o in options), r
                assert len(set(options)) == 5, ("options not distinct", r)
                assert r["question"].strip() and r["question"] not in questions, ("duplicate question", r["question"])
                questions.add(r["question"])
                assert (r["cot"] != "") == (split == "fewshot"), ("cot", subset, split, r["q_number"])
            assert [r["q_number"] for r in rows] == list(range(1, n + 1))
            summary[f"{subset}/{split}"] = collections.Counter(r["answer"] for r in rows)
    return summary


# ---------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--only", choices=("corpus", "mcqa"))
    args = parser.parse_args(argv)
    out: Path = args.out
    if args.only != "mcqa":
        made = make_corpus(out)
        stats = check_corpus(out)
        print(f"corpus: {made['entries']} fact entries -> {stats['train']} train / {stats['validation']} validation "
              f"documents, {stats['train_chars']} / {stats['validation_chars']} characters")
        for name, size in made["sizes"].items():
            print(f"  data/{name}.jsonl: {size} bytes")
    if args.only != "corpus":
        made = make_mcqa(out)
        summary = check_mcqa(out)
        total = collections.Counter()
        for subset in SUBSETS:
            test, shots = summary[f"{subset}/test"], summary[f"{subset}/fewshot"]
            total += test + shots
            print(f"kormedmcqa/{subset}: {sum(test.values())} test, {sum(shots.values())} fewshot; "
                  f"test answers {dict(sorted(test.items()))}")
        print(f"  answer distribution (all {sum(total.values())}): {dict(sorted(total.items()))}")
    files = [p for p in out.rglob("*.jsonl") if p.parent.name in ("data",) + SUBSETS]
    total_bytes = sum(p.stat().st_size for p in files)
    assert total_bytes < MAX_TOTAL_BYTES, total_bytes
    print(f"total: {len(files)} files, {total_bytes} bytes under {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
