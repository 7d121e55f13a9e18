"""Wall time of `medkor prepare` on a cache hit and of the `medkor cache` commands, against `python -c pass`.

    python benchmarks/bench_light.py --repeat 5
    python benchmarks/bench_light.py --repeat 5 --baseline /tmp/medkor-old   # an earlier checkout, same run

Builds the demo corpus's caches once (demo model and extended tokenizer), then times,
alternating, every command `--repeat` times: a `prepare` hit of the same config,
`cache ls`, `cache verify` and `cache rm --all --dry-run` of its cache directory.
With `--baseline`, the same commands of that checkout (run from it, on its own cache
directory) are timed in the same loop. Reports the median and best of each.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "medkor" / "assets" / "demo"


def _timed(args: list[str], cwd: Path) -> float:
    env = {**os.environ, "PYTHONPATH": str(cwd), "HF_HUB_OFFLINE": "1"}
    start = time.perf_counter()
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed in {cwd}:\n{result.stderr[-2000:]}")
    return seconds


def commands(checkout: Path, work: Path) -> dict[str, list[str]]:
    data = work / "data"
    config = work / f"run-{checkout.name}.yaml"
    cache_dir = work / f"cache-{checkout.name}"
    config.write_text(yaml.safe_dump({
        "model": {"model_name_or_path": str(DEMO / "tiny-gemma3"), "tokenizer_path": str(DEMO / "tokenizer-extended")},
        "data": {"data_dir": str(data), "cache_dir": str(cache_dir), "max_length": 256},
    }))
    medkor = [sys.executable, "-m", "medkor"]
    return {
        "prepare (hit)": [*medkor, "prepare", "--config", str(config)],
        "cache ls": [*medkor, "cache", "ls", str(cache_dir)],
        "cache verify": [*medkor, "cache", "verify", str(cache_dir)],
        "cache rm --dry-run": [*medkor, "cache", "rm", str(cache_dir), "--all", "--dry-run"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--baseline", type=Path, help="an earlier checkout of medkor to time beside this one")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="medkor-bench-light-"))
    try:
        shutil.copytree(DEMO / "data", work / "data")
        checkouts = {"this": ROOT, **({"baseline": args.baseline.resolve()} if args.baseline else {})}
        runs = {name: commands(path, work) for name, path in checkouts.items()}
        for name, path in checkouts.items():
            _timed(runs[name]["prepare (hit)"], path)  # the cold build, not timed
        times: dict[str, list[float]] = {}
        for _ in range(args.repeat):
            times.setdefault("python -c pass", []).append(_timed([sys.executable, "-c", "pass"], ROOT))
            for name, path in checkouts.items():
                for label, command in runs[name].items():
                    times.setdefault(f"{name}: {label}", []).append(_timed(command, path))
        report = {label: {"median_s": round(statistics.median(v), 3), "best_s": round(min(v), 3)}
                  for label, v in times.items()}
        print(json.dumps({"repeat": args.repeat, "cpus": os.cpu_count(), "times": report}, indent=1))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
