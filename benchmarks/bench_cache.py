"""Cache benchmark: raw tokenizer limit vs cold build vs warm start vs the replaced pipeline.

    python benchmarks/bench_cache.py --cold-mb 10 --warm-mb 10 100

Builds synthetic Korean medical JSONL corpora (from ../shared/data/korean-medical-terms
when present, else from the bundled demo text) and reports, in one run:
raw batch tokenizer throughput over all cores, cold build time (default `num_proc`,
and in one process) and its ratio to raw, warm start (prepare + setup, first and
steady) at each warm size, the replaced pipeline (parse all JSONL, pad/truncate to
512, save/load_from_disk), tokens lost. Raw and cold builds alternate `--repeat`
times and the best of each is compared, which keeps a shared machine's noise out
of the ratio; every run's time is reported too.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from medkor.data import MedKorDataModule  # noqa: E402

TERMS = ROOT.parent / "shared" / "data" / "korean-medical-terms"
TOKENIZER = ROOT / "medkor" / "assets" / "demo" / "tiny-gemma3"
CONNECTIVES = ["은(는) ", "의 증상으로 ", "을(를) 치료하기 위해 ", "와(과) 관련된 ", "에 대한 검사에서 "]


def vocabulary() -> list[str]:
    if TERMS.is_dir():
        words = []
        for name in ("dictionary_terms.txt", "train02_words.txt"):
            words += [w.strip() for w in (TERMS / name).read_text(encoding="utf-8").splitlines() if w.strip()]
        return words
    text = (ROOT / "medkor/assets/demo/data/train.jsonl").read_text(encoding="utf-8")
    return [w for line in text.splitlines() for w in json.loads(line)["text"].split()]


def write_corpus(path: Path, megabytes: float, seed: int = 0) -> int:
    rng = random.Random(seed)
    words = vocabulary()
    target = int(megabytes * 2**20)
    written = docs = 0
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        while written < target:
            sentences = [
                " ".join(rng.choice(words) + rng.choice(CONNECTIVES) for _ in range(rng.randint(3, 9))) + "다."
                for _ in range(rng.randint(2, 40))
            ]
            line = json.dumps({"text": " ".join(sentences)}, ensure_ascii=False) + "\n"
            handle.write(line)
            written += len(line.encode("utf-8"))
            docs += 1
    return docs


def raw_tokenize_seconds(path: Path, tokenizer) -> tuple[float, int]:
    """The physical limit: texts already in memory, batch-encoded by the Rust tokenizer on all cores."""
    texts = [json.loads(line)["text"] for line in open(path, encoding="utf-8")]
    backend = tokenizer.backend_tokenizer
    start = time.perf_counter()
    tokens = 0
    for i in range(0, len(texts), 1000):
        tokens += sum(len(e.ids) for e in backend.encode_batch_fast(texts[i : i + 1000], add_special_tokens=False))
    return time.perf_counter() - start, tokens


def module(data_dir: Path, tokenizer: Path = TOKENIZER, **kw) -> MedKorDataModule:
    return MedKorDataModule(data_dir=str(data_dir), tokenizer_path=str(tokenizer), max_length=2048, **kw)


def warm_seconds(data_dir: Path, tokenizer: Path) -> float:
    start = time.perf_counter()
    dm = module(data_dir, tokenizer)
    dm.prepare_data()
    dm.setup("fit")
    return time.perf_counter() - start


def old_pipeline(path: Path, tokenizer, out: Path, content_tokens: int) -> dict:
    """The replaced method: parse everything, pad/truncate to 512, save_to_disk; warm = parse + load_from_disk."""
    from datasets import Dataset, load_from_disk

    start = time.perf_counter()
    texts = [json.loads(line)["text"] for line in open(path, encoding="utf-8")]
    enc = tokenizer(texts, padding="max_length", truncation=True, max_length=512)
    Dataset.from_dict(dict(enc)).save_to_disk(str(out))
    cold = time.perf_counter() - start
    start = time.perf_counter()
    texts = [json.loads(line)["text"] for line in open(path, encoding="utf-8")]
    load_from_disk(str(out))
    warm = time.perf_counter() - start
    specials = len(tokenizer("가")["input_ids"]) - len(tokenizer("가", add_special_tokens=False)["input_ids"])
    kept = sum(sum(mask) for mask in enc["attention_mask"]) - specials * len(texts)
    return {"cold_s": cold, "warm_s": warm, "text_tokens_lost": content_tokens - kept}


def _shown(path: Path) -> str:
    path = path.resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cold-mb", type=float, default=10)
    parser.add_argument("--warm-mb", type=float, nargs="+", default=[10, 100])
    parser.add_argument("--num-proc", type=int, default=None, help="tokenizer processes (default: every core)")
    parser.add_argument("--repeat", type=int, default=3, help="alternating raw/cold runs; the best of each is compared")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--tokenizer", type=Path, default=TOKENIZER, help="tokenizer folder (default: the demo base)")
    args = parser.parse_args()
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="medkor-bench-"))
    report: dict = {"cpus": os.cpu_count(), "tokenizer": _shown(args.tokenizer), "vocab": len(tokenizer)}

    cold_dir = work / f"cold-{args.cold_mb}"
    report["cold_docs"] = write_corpus(cold_dir / "train.jsonl", args.cold_mb)
    runs: dict[str, list[float]] = {"raw": [], "cold": [], "cold_one_process": []}
    for _ in range(args.repeat):
        raw, raw_tokens = raw_tokenize_seconds(cold_dir / "train.jsonl", tokenizer)
        runs["raw"].append(raw)
        for name, num_proc in (("cold", args.num_proc), ("cold_one_process", 1)):
            shutil.rmtree(cold_dir / ".cache", ignore_errors=True)
            start = time.perf_counter()
            result = module(cold_dir, args.tokenizer, num_proc=num_proc).prepare_caches()[0]
            runs[name].append(time.perf_counter() - start)
    raw, cold, one = min(runs["raw"]), min(runs["cold"]), min(runs["cold_one_process"])
    report.update(
        cold_mb=args.cold_mb, raw_s=round(raw, 2), cold_build_s=round(cold, 2), cold_over_raw=round(cold / raw, 2),
        cold_one_process_s=round(one, 2), cold_one_process_over_raw=round(one / raw, 2),
        runs_s={name: [round(t, 2) for t in times] for name, times in runs.items()},
        cached_tokens=result.tokens, expected_tokens=raw_tokens + 2 * report["cold_docs"],
        tokens_lost=raw_tokens + 2 * report["cold_docs"] - result.tokens,
    )
    old = old_pipeline(cold_dir / "train.jsonl", tokenizer, work / "old", raw_tokens)
    report.update({f"old_{k}": (round(v, 2) if isinstance(v, float) else v) for k, v in old.items()})

    for mb in args.warm_mb:
        folder = cold_dir if mb == args.cold_mb else work / f"warm-{mb}"
        if folder != cold_dir:
            write_corpus(folder / "train.jsonl", mb, seed=1)
            module(folder, args.tokenizer, num_proc=args.num_proc).prepare_caches()
        time.sleep(2.1)  # let the files age past the fingerprint memo's safety window
        first = warm_seconds(folder, args.tokenizer)
        steady = min(warm_seconds(folder, args.tokenizer) for _ in range(3))
        report[f"warm_{mb}mb_first_s"] = round(first, 3)
        report[f"warm_{mb}mb_steady_s"] = round(steady, 3)
    if len(args.warm_mb) >= 2:
        small, large = args.warm_mb[0], args.warm_mb[-1]
        report["warm_ratio_large_over_small"] = round(
            report[f"warm_{large}mb_steady_s"] / report[f"warm_{small}mb_steady_s"], 2
        )
    print(json.dumps(report, indent=1, ensure_ascii=False))
    if args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
