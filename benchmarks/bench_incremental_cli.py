"""`medkor prepare` from the command line: cold, hit, then each change, as a user runs it.

    python benchmarks/bench_incremental_cli.py --mb 512 --files 20

Unlike `bench_cache.py --incremental-mb` (in one process, imports already paid), each
step is a new `medkor prepare` process, so a build's fixed costs (imports, loading
what tokenizes) count. Writes the synthetic corpus of `bench_cache.write_corpus` in
`--files` training files and a small validation file, waits out the fingerprint
safety window, then times: cold, hit, a 1 % file added, one line edited in the
middle of the 11th file, the 2nd file removed, hit. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).parent))
from bench_cache import _edit_middle_line, write_corpus  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "medkor" / "assets" / "demo"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=float, default=512.0)
    parser.add_argument("--files", type=int, default=20)
    parser.add_argument("--tokenizer", default=str(DEMO / "tiny-gemma3"))
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="medkor-bench-cli-"))
    try:
        data = work / "data"
        files = [data / f"train-{i:03d}.jsonl" for i in range(args.files)]
        for index, path in enumerate(files):
            write_corpus(path, args.mb / args.files, seed=100 + index)
        write_corpus(data / "validation.jsonl", 1, seed=7)
        config = work / "run.yaml"
        config.write_text(yaml.safe_dump({
            "model": {"model_name_or_path": str(DEMO / "tiny-gemma3"), "tokenizer_path": args.tokenizer},
            "data": {"data_dir": str(data), "max_length": 2048},
        }))
        time.sleep(2.2)  # files younger than 2 s are hashed again at every start
        report: dict = {"corpus_mb": args.mb, "files": args.files, "cpus": os.cpu_count(),
                        "load_average_at_start": os.getloadavg()[0]}

        def prepare(name: str) -> None:
            start = time.perf_counter()
            subprocess.run([sys.executable, "-m", "medkor", "prepare", "--config", str(config)], check=True,
                           cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            report[f"{name}_s"] = round(time.perf_counter() - start, 3)
            if name != "cold" and not name.startswith("hit"):
                report[f"{name}_over_cold"] = round(report[f"{name}_s"] / report["cold_s"], 4)

        prepare("cold")
        prepare("hit")
        write_corpus(data / "train-999.jsonl", args.mb * 0.01, seed=999)
        prepare("add_1pct")
        _edit_middle_line(files[len(files) // 2])
        prepare("edit_line")
        files[1].unlink()
        prepare("remove_file")
        prepare("hit_after")
        print(json.dumps(report, indent=1))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
