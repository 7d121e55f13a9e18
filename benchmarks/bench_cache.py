"""Cache benchmark: raw tokenizer limit vs cold build vs warm start vs the replaced pipeline;
incremental builds against cold and against LitData.

    python benchmarks/bench_cache.py --cold-mb 10 --warm-mb 10 100
    PYTHONPATH=.:LITDATA_DIR python benchmarks/bench_cache.py --incremental-mb 1024 --files 20

`--incremental-mb` writes a corpus of that size in `--files` files and measures, in one
run: a cold build, warm starts, then each change followed by the incremental build
(a 1 % file added, one line edited in the middle of a file, a file removed), the
one-time check of the rows' content after a change, row read throughput, and, when
`litdata` can be imported, LitData's `optimize()` of the same files (cold) and its
`mode="append"` with the same 1 % file. LitData is not a dependency; install it
anywhere on PYTHONPATH (e.g. `pip install --target DIR --no-deps litdata boto3 botocore
s3transfer jmespath obstore tifffile python-dateutil`) to include it.

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


class LitDataTokenize:
    """LitData's `fn`: every document of a JSONL file as `<bos> ids <eos>` (litgpt's way), one tensor each."""

    def __init__(self, tokenizer_path: Path) -> None:
        self.tokenizer_path = tokenizer_path
        self.tokenizer = None

    def __call__(self, path: str):
        import torch
        from transformers import AutoTokenizer

        if self.tokenizer is None:
            self.tokenizer = AutoTokenizer.from_pretrained(self.tokenizer_path)
        backend, bos, eos = self.tokenizer.backend_tokenizer, self.tokenizer.bos_token_id, self.tokenizer.eos_token_id
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                ids = backend.encode(json.loads(line)["text"], add_special_tokens=False).ids
                yield torch.tensor([bos, *ids, eos], dtype=torch.int32)


def litdata_seconds(files: list[Path], out: Path, tokenizer: Path, workers: int, mode=None) -> float:
    from litdata import optimize
    from litdata.streaming.item_loader import TokensLoader

    start = time.perf_counter()
    optimize(fn=LitDataTokenize(tokenizer), inputs=[str(f) for f in files], output_dir=str(out),
             chunk_size=2049 * 8192, item_loader=TokensLoader(), num_workers=workers, mode=mode, verbose=False)
    return time.perf_counter() - start


CPU_SECONDS: list[float] = []  # CPU time (this process and its finished workers) of each timed prepare


def _cpu() -> float:
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


def _timed_prepare(data_dir: Path, tokenizer: Path, num_proc) -> tuple[float, dict]:
    start, cpu = time.perf_counter(), _cpu()
    result = module(data_dir, tokenizer, num_proc=num_proc).prepare_caches()[0]
    CPU_SECONDS.append(_cpu() - cpu)
    return time.perf_counter() - start, result.manifest


def _edit_middle_line(path: Path) -> None:
    data = path.read_bytes()
    middle = data.index(b"\n", len(data) // 2) + 1
    end = data.index(b"\n", middle) + 1
    record = json.loads(data[middle:end])
    record["text"] = "수정된 문장입니다. " + record["text"]
    path.write_bytes(data[:middle] + (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8") + data[end:])


def read_rows_seconds(rows) -> tuple[float, int]:
    """Every row read once in a shuffled order (what the loader does), summed so nothing is skipped."""
    import numpy as np

    order = np.random.default_rng(0).permutation(len(rows)).tolist()
    start = time.perf_counter()
    total = 0
    for index in order:
        total += int(rows[index][0][-1])
    return time.perf_counter() - start, total


def loader_seconds(rows, pad: int, batch: int = 8) -> float:
    """Batches of shuffled rows read and collated into tensors, as a data loader worker makes them."""
    import numpy as np

    from medkor.data.collate import Collator

    collate = Collator(pad)
    order = np.random.default_rng(1).permutation(len(rows)).tolist()
    start = time.perf_counter()
    for at in range(0, len(order) - batch + 1, batch):
        collate([rows[i] for i in order[at : at + batch]])
    return time.perf_counter() - start


def read_segments_against_one_file(folder: Path, work: Path) -> dict:
    """Reading every row through the cache's segments (`CacheRows`) against the same rows in one file."""
    from medkor.data.cache import read_manifest, segment_paths
    from medkor.data.packing import Rows
    from medkor.data.rows import CacheRows, RowsFile, rows_per_batch, write_rows
    import numpy as np

    manifest = read_manifest(folder)
    segments = CacheRows(segment_paths(folder, manifest), folder)
    one_path = work / "one-file-rows.arrow"

    def batches():
        for index in range(len(segments)):
            ids, starts, spans = segments[index]
            yield Rows(ids, np.array([0, len(ids)], np.int32), starts, np.array([0, len(starts)], np.int32),
                       spans, np.array([0, len(spans)], np.int32))

    write_rows(one_path, batches(), rows_per_batch(manifest["max_length"]))
    # the same start for both: their pages dropped from the page cache and read back from disk (a file just
    # written sits in larger pages than one read back, and reads measurably faster)
    paths = [path for path, _ in segment_paths(folder, manifest)] + [str(one_path)]
    for path in paths:
        with open(path, "rb") as handle:
            os.fsync(handle.fileno())
            os.posix_fadvise(handle.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
    segments = CacheRows(segment_paths(folder, manifest), folder)
    one = RowsFile(one_path)
    for rows in (segments, one):
        read_rows_seconds(rows)  # read back from disk
    assert len(one) == len(segments)
    times: dict[str, list[float]] = {"segments": [], "one_file": [], "loader_segments": [], "loader_one_file": []}
    for repeat in range(6):  # alternating which goes first, best of 6 (of 4 for the slower loader pass)
        for name, rows in (("segments", segments), ("one_file", one))[:: 1 if repeat % 2 else -1]:
            seconds, total = read_rows_seconds(rows)
            times[name].append(seconds)
            if repeat < 4:
                times[f"loader_{name}"].append(loader_seconds(rows, manifest["pad_token_id"]))
    one_path.unlink()
    best = {name: min(values) for name, values in times.items()}
    return {"read_all_rows_segments_s": round(best["segments"], 4), "read_all_rows_one_file_s": round(best["one_file"], 4),
            "read_segments_over_one_file": round(best["segments"] / best["one_file"], 3),
            "loader_segments_s": round(best["loader_segments"], 3), "loader_one_file_s": round(best["loader_one_file"], 3),
            "loader_segments_over_one_file": round(best["loader_segments"] / best["loader_one_file"], 4),
            "rows": len(segments), "segments": len(manifest["segments"])}


def incremental(args, report: dict, work: Path) -> None:
    from medkor.data.cache import check_rows, read_manifest, segment_paths
    from medkor.data.fingerprint import FingerprintMemo

    data = work / f"incremental-{args.incremental_mb}"
    per_file = args.incremental_mb / args.files
    files = [data / f"train-{i:03d}.jsonl" for i in range(args.files)]
    start = time.perf_counter()
    for index, path in enumerate(files):
        write_corpus(path, per_file, seed=100 + index)
    report["corpus_write_s"] = round(time.perf_counter() - start, 1)
    report["corpus_bytes"] = sum(p.stat().st_size for p in files)
    report["files"] = args.files
    report["load_average_at_start"] = os.getloadavg()[0]
    cold, manifest = _timed_prepare(data, args.tokenizer, args.num_proc)
    report.update(cold_s=round(cold, 2), cold_tokens=manifest["tokens"], cold_pieces=manifest["pieces"]["used"],
                  cold_cpu_s=round(CPU_SECONDS[-1], 2))
    cold_cpu = CPU_SECONDS[-1]
    time.sleep(2.1)
    report["warm_first_s"] = round(warm_seconds(data, args.tokenizer), 4)
    report["warm_steady_s"] = round(min(warm_seconds(data, args.tokenizer) for _ in range(5)), 4)

    folder = Path(module(data, args.tokenizer).prepare_caches()[0].path)
    report["rows_bytes"] = sum(os.path.getsize(path) for path, _ in segment_paths(folder, read_manifest(folder)))
    memo = FingerprintMemo(None)  # nothing remembered: the check a process makes after every segment changed
    start = time.perf_counter()
    assert check_rows(folder, read_manifest(folder), memo) is None
    report["rows_check_after_change_s"] = round(time.perf_counter() - start, 3)
    report.update(read_segments_against_one_file(folder, work))

    added = data / "train-999.jsonl"
    write_corpus(added, args.incremental_mb * 0.01, seed=999)
    seconds, manifest = _timed_prepare(data, args.tokenizer, args.num_proc)
    report.update(add_1pct_s=round(seconds, 2), add_1pct_over_cold=round(seconds / cold, 3),
                  add_1pct_pieces_tokenized=manifest["pieces"]["tokenized"],
                  add_1pct_segments_written=manifest["segments_built"]["written"],
                  add_1pct_cpu_s=round(CPU_SECONDS[-1], 2), add_1pct_cpu_over_cold=round(CPU_SECONDS[-1] / cold_cpu, 3))
    _edit_middle_line(files[len(files) // 2])
    seconds, manifest = _timed_prepare(data, args.tokenizer, args.num_proc)
    report.update(edit_line_s=round(seconds, 2), edit_line_over_cold=round(seconds / cold, 3),
                  edit_line_pieces_tokenized=manifest["pieces"]["tokenized"],
                  edit_line_segments_written=manifest["segments_built"]["written"],
                  edit_line_cpu_s=round(CPU_SECONDS[-1], 2), edit_line_cpu_over_cold=round(CPU_SECONDS[-1] / cold_cpu, 3))
    files[1].unlink()
    seconds, manifest = _timed_prepare(data, args.tokenizer, args.num_proc)
    report.update(remove_file_s=round(seconds, 2), remove_file_over_cold=round(seconds / cold, 3),
                  remove_file_pieces_tokenized=manifest["pieces"]["tokenized"],
                  remove_file_segments_written=manifest["segments_built"]["written"],
                  remove_file_cpu_s=round(CPU_SECONDS[-1], 2), remove_file_cpu_over_cold=round(CPU_SECONDS[-1] / cold_cpu, 3))
    time.sleep(2.1)
    report["warm_after_changes_first_s"] = round(warm_seconds(data, args.tokenizer), 4)
    report["warm_after_changes_steady_s"] = round(min(warm_seconds(data, args.tokenizer) for _ in range(5)), 4)

    try:
        import litdata  # noqa: F401
    except ImportError:
        report["litdata"] = "not importable: skipped"
        return
    workers = args.num_proc or os.cpu_count() or 1
    lit_files = [p for p in files if p.exists() and p != added]
    out = work / "litdata"
    report["load_average_before_litdata"] = os.getloadavg()[0]
    report["litdata_cold_s"] = round(litdata_seconds(lit_files, out, args.tokenizer, workers), 2)
    report["litdata_append_1pct_s"] = round(litdata_seconds([added], out, args.tokenizer, 1, mode="append"), 2)
    report["medkor_cold_over_litdata_cold"] = round(cold / report["litdata_cold_s"], 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cold-mb", type=float, default=10)
    parser.add_argument("--warm-mb", type=float, nargs="+", default=[10, 100])
    parser.add_argument("--num-proc", type=int, default=None, help="tokenizer processes (default: every core)")
    parser.add_argument("--repeat", type=int, default=3, help="alternating raw/cold runs; the best of each is compared")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--tokenizer", type=Path, default=TOKENIZER, help="tokenizer folder (default: the demo base)")
    parser.add_argument("--incremental-mb", type=float, default=None,
                        help="only the incremental benchmark, on a corpus of this size")
    parser.add_argument("--files", type=int, default=20, help="files of the incremental corpus")
    args = parser.parse_args()
    if args.incremental_mb is not None:
        work = Path(args.workdir or tempfile.mkdtemp(prefix="medkor-bench-"))
        report: dict = {"cpus": os.cpu_count(), "tokenizer": _shown(args.tokenizer), "corpus_mb": args.incremental_mb}
        try:
            incremental(args, report, work)
        finally:
            print(json.dumps(report, indent=1, ensure_ascii=False))
            if args.workdir is None:
                shutil.rmtree(work, ignore_errors=True)
        return
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
