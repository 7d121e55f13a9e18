"""`medkor prepare` on 1 rank vs 2 ranks (torchrun's variables), one tokenizer process each, cold caches.

    python benchmarks/bench_ranks.py --mb 40 --files 8 --repeat 3

Writes a synthetic Korean medical corpus (`bench_cache.write_corpus`) as `--files`
training files plus a small validation file, then alternates, `--repeat` times, a cold
`medkor prepare` as one process and as two processes started together with
`RANK`/`WORLD_SIZE` (each `--data.num_proc 1`, `TOKENIZERS_PARALLELISM=false`: one
tokenizer thread per rank), each into an empty cache directory. Reports every wall
time, the best of each and their ratio, the CPU seconds of the busiest rank (what the
wall time is on idle cores; on a shared machine the ranks compete with everything else
for the same cores), and whether the two builds' rows are the same row for row.
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_cache import write_corpus  # noqa: E402

DEMO = ROOT / "medkor" / "assets" / "demo"


def _env(rank: int | None, world: int) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "RAYON_NUM_THREADS": "1"}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        env.pop(name, None)
    if rank is not None:
        env.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world))
    return env


def prepare(config: Path, cache_dir: Path, world: int) -> tuple[float, float, list[str]]:
    """A cold `medkor prepare` on `world` ranks started together: wall seconds, the CPU seconds (user + system)
    of its busiest rank, and rank 0's JSON lines."""
    shutil.rmtree(cache_dir, ignore_errors=True)
    args = [sys.executable, "-m", "medkor", "prepare", "--config", str(config), "--data.cache_dir", str(cache_dir)]
    outs = [tempfile.TemporaryFile(mode="w+") for _ in range(world)]
    start = time.perf_counter()
    ranks = [subprocess.Popen(args, env=_env(rank if world > 1 else None, world), cwd=ROOT, stdout=outs[rank],
                              stderr=subprocess.DEVNULL, text=True) for rank in range(world)]
    cpu = []
    for rank in ranks:
        _, status, usage = os.wait4(rank.pid, 0)
        rank.returncode = os.waitstatus_to_exitcode(status)
        cpu.append(usage.ru_utime + usage.ru_stime)
        if rank.returncode != 0:
            raise SystemExit(f"prepare failed ({rank.returncode}); run it by hand: {' '.join(args)}")
    seconds = time.perf_counter() - start
    outs[0].seek(0)
    return seconds, max(cpu), [line for line in outs[0].read().splitlines() if line.startswith("{")]


def rows_of(lines: list[str]) -> dict[str, list]:
    from medkor.data.cache import open_folder

    out = {}
    for line in lines:
        folder = Path(json.loads(line)["path"])
        rows = open_folder(folder)[0]
        out[folder.name.split("-")[0]] = [tuple(part.tobytes() for part in rows[i]) for i in range(len(rows))]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=float, default=40.0, help="training corpus size")
    parser.add_argument("--files", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--tokenizer", default=str(DEMO / "tokenizer-extended"))
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="medkor-bench-ranks-"))
    try:
        data = work / "data"
        for index in range(args.files):
            write_corpus(data / f"train-{index:02d}.jsonl", args.mb / args.files, seed=index)
        write_corpus(data / "validation.jsonl", max(args.mb / 100, 0.1), seed=999)
        config = work / "run.yaml"
        config.write_text(yaml.safe_dump({
            "model": {"model_name_or_path": str(DEMO / "tiny-gemma3"), "tokenizer_path": args.tokenizer},
            "data": {"data_dir": str(data), "max_length": 2048, "num_proc": 1, "prepare_data_per_node": False},
        }))
        times: dict[int, list[float]] = {1: [], 2: []}
        cpu: dict[int, list[float]] = {1: [], 2: []}
        lines: dict[int, list[str]] = {}
        for _ in range(args.repeat):
            for world in (1, 2):
                seconds, busiest, lines[world] = prepare(config, work / f"cache-{world}", world)
                times[world].append(seconds)
                cpu[world].append(busiest)
                print(f"{world} rank(s): {seconds:.2f} s wall, busiest rank {busiest:.2f} s CPU", flush=True)
        one, two = rows_of(lines[1]), rows_of(lines[2])
        same = one.keys() == two.keys() and all(one[s] == two[s] for s in one)
        best = {world: min(values) for world, values in times.items()}
        print(json.dumps({
            "corpus_mb": args.mb, "files": args.files, "tokens": sum(json.loads(x)["tokens"] for x in lines[1]),
            "one_rank_s": [round(t, 2) for t in times[1]], "two_ranks_s": [round(t, 2) for t in times[2]],
            "ratio_best": round(best[2] / best[1], 3),
            "one_rank_cpu_s": [round(t, 2) for t in cpu[1]], "two_ranks_busiest_cpu_s": [round(t, 2) for t in cpu[2]],
            "cpu_ratio_best": round(min(cpu[2]) / min(cpu[1]), 3),
            "rows_identical": same, "cpus": os.cpu_count(), "load_after": os.getloadavg()[0],
        }, indent=1))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
