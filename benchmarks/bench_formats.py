"""Formats benchmark: build speed per format, best-fit packing speed, leak-check speed.

    python benchmarks/bench_formats.py --copies 20

Replicates the bundled stage samples (`medkor/assets/demo/{data,dictionary,exam}`)
`--copies` times (each copy's records made distinct by a suffix), then reports per
format the cold build time (tokenize, pack, write; every usable core) as records/s
and tokens/s with the fill rate, the time of `best_fit_decreasing` alone on
`--lengths` example lengths, and the leak check's scan rate over the text copy
against the bundled evaluation sample. Best of `--repeat` runs.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from medkor.data import MedKorDataModule  # noqa: E402
from medkor.data.example_packing import best_fit_decreasing  # noqa: E402
from medkor.data.formats import FormatSpec  # noqa: E402
from medkor.data.leak import LeakCheck, QuestionIndex, scan  # noqa: E402

DEMO = ROOT / "medkor/assets/demo"
SAMPLES = {"text": ("data", "text", 512), "dictionary": ("dictionary", "definition", 256), "mcq": ("exam", "question", 1024)}


def replicate(folder: Path, field: str, copies: int, out: Path) -> Path:
    lines = [json.loads(line) for line in (DEMO / folder / "train.jsonl").read_text(encoding="utf-8").splitlines()]
    out.mkdir(parents=True)
    with open(out / "train.jsonl", "w", encoding="utf-8") as handle:
        for copy in range(copies):
            for record in lines:
                handle.write(json.dumps({**record, field: f"{record[field]} ({copy})"}, ensure_ascii=False) + "\n")
    return out / "train.jsonl"


def best(runs: list[float]) -> float:
    return min(runs)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--copies", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--lengths", type=int, default=200_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for fmt, (folder, field, max_length) in SAMPLES.items():
            path = replicate(DEMO / folder, field, args.copies, Path(tmp) / fmt)
            times, result = [], None
            for run in range(args.repeat):
                dm = MedKorDataModule(data_dir=str(path.parent), tokenizer_path=str(DEMO / "tokenizer-extended"),
                                      format=fmt, loss_on="completion", max_length=max_length,
                                      cache_dir=str(Path(tmp) / f"cache-{fmt}-{run}"))
                start = time.perf_counter()
                result = dm.prepare_caches()[0]
                times.append(time.perf_counter() - start)
            docs = result.manifest["documents"]
            print(f"build {fmt:10s} {docs:7,d} records {result.tokens:10,d} tokens: {best(times):6.2f} s "
                  f"({docs / best(times):8,.0f} records/s, {result.tokens / best(times):10,.0f} tokens/s), "
                  f"fill {result.fill_rate:.1%}, runs {', '.join(f'{t:.2f}' for t in times)}")
        rng = np.random.default_rng(0)
        lengths = rng.integers(30, 300, size=args.lengths)
        times = []
        for _ in range(args.repeat):
            start = time.perf_counter()
            bins = best_fit_decreasing(lengths, 1024)
            times.append(time.perf_counter() - start)
        print(f"best_fit_decreasing {args.lengths:,d} examples of 30-300 into 1024: {best(times):.2f} s "
              f"({args.lengths / best(times):,.0f} examples/s), {len(bins):,d} rows, "
              f"lower bound {-(-int(lengths.sum()) // 1024):,d}")
        text = Path(tmp) / "text" / "train.jsonl"
        index = QuestionIndex(LeakCheck(str(DEMO / "kormedmcqa")).questions(), 13)
        times = []
        for _ in range(args.repeat):
            start = time.perf_counter()
            report = scan([text], FormatSpec(), index, 0.5)
            times.append(time.perf_counter() - start)
        size = text.stat().st_size / 2**20
        print(f"leak scan {report.records:,d} text records ({size:.1f} MiB) vs {len(index.questions)} questions: "
              f"{best(times):.2f} s ({size / best(times):.1f} MiB/s), {len(report.hits)} hits")


if __name__ == "__main__":
    main()
