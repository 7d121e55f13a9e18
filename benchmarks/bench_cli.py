"""How fast the `medkor` command answers, where a `fit` start-up goes, and the demo on busy cores.

Three measurements, each side by side in one run:

1. wall time of every plain command's `--help` (and `cache ls`, `plot`) against
   `python -c pass`, the floor of any Python command;
2. `medkor fit` of the demo up to its first optimizer step, split into phases
   (imports, config parse and checks, data and model set-up, KorMedMCQA baseline,
   first step), from a clock callback added to the demo's callbacks;
3. the whole demo with the cores idle and with every core kept busy by spinning
   processes, at `cpu_threads` 1 (the demo's) and torch's default.

    python benchmarks/bench_cli.py                 # all three (the demo runs 4 times: minutes)
    python benchmarks/bench_cli.py --skip-busy     # 1 and 2 only
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLOCK_FILE_ENV = "MEDKOR_BENCH_CLOCK"
PLAIN = [["--help"], ["prepare", "--help"], ["cache", "--help"], ["cache", "ls", "{tmp}"],
         ["extend-vocab", "--help"], ["export", "--help"], ["plot", "--help"], ["plot", "{tmp}"]]


def _run(args: list[str], cwd: Path = ROOT, env: dict | None = None) -> tuple[float, subprocess.CompletedProcess]:
    start = time.perf_counter()
    result = subprocess.run(args, cwd=cwd, capture_output=True, text=True, env={**os.environ, **(env or {})})
    return time.perf_counter() - start, result


def plain_commands(repeats: int) -> None:
    floor = min(_run([sys.executable, "-c", "pass"])[0] for _ in range(repeats))
    print(f"\n1. plain commands, best of {repeats} (python -c pass: {floor:.2f} s)")
    with tempfile.TemporaryDirectory() as tmp:
        for args in PLAIN:
            args = [a.replace("{tmp}", tmp) for a in args]
            wall = min(_run([sys.executable, "-m", "medkor", *args])[0] for _ in range(repeats))
            print(f"   medkor {' '.join(a if a != tmp else 'DIR' for a in args):<24} {wall:5.2f} s")


class StartupClock:
    """A callback writing the seconds since process start at each phase boundary of `fit` (JSON lines)."""

    def __init__(self) -> None:
        self.path = Path(os.environ[CLOCK_FILE_ENV])
        self._mark("instantiated")

    def _mark(self, name: str) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps({"phase": name, "t": time.time()}) + "\n")

    def setup(self, trainer, pl_module, stage) -> None:
        self._mark("setup")

    def on_train_start(self, trainer, pl_module) -> None:
        self._mark("train_start")

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx == 0:
            self._mark("first_batch")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if batch_idx == 0:
            self._mark("first_step")


def _clock_callback_class():
    from lightning.pytorch.callbacks import Callback

    return type("StartupClock", (StartupClock, Callback), {})


def startup_phases(config: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        clock = Path(tmp) / "clock.jsonl"
        script = (
            "import time, json, sys, os\n"
            f"open({str(clock)!r}, 'a').write(json.dumps({{'phase': 'python', 't': time.time()}}) + '\\n')\n"
            "import medkor.lightning_cli as c\n"
            f"open({str(clock)!r}, 'a').write(json.dumps({{'phase': 'imported', 't': time.time()}}) + '\\n')\n"
            "sys.path.insert(0, 'benchmarks')\nimport bench_cli\n"
            "bench_cli.StartupClock = bench_cli._clock_callback_class()\n"
            f"c.run_cli(['fit', '--config', {str(config)!r}, '--trainer.max_steps', '1',"
            " '--trainer.callbacks+=bench_cli.StartupClock'])\n"
        )
        start = time.time()
        wall, result = _run([sys.executable, "-c", script], env={CLOCK_FILE_ENV: str(clock)})
        if result.returncode != 0:
            raise SystemExit(f"fit failed:\n{result.stderr[-3000:]}")
        marks = [json.loads(line) for line in clock.read_text().splitlines()]
    names = {"python": "python start", "imported": "import Lightning, torch, transformers, medkor",
             "instantiated": "parse config, checks, build callbacks", "setup": "trainer set-up, caches found",
             "train_start": "caches loaded, model built and grown, KorMedMCQA baseline",
             "first_batch": "training loader started", "first_step": "first optimizer step"}
    print(f"\n2. demo fit to its first optimizer step (warm cache), {wall:.1f} s in all")
    previous = start
    for mark in marks:
        if mark["phase"] in names:
            print(f"   {names[mark['phase']]:<48} {mark['t'] - previous:5.2f} s")
            previous = mark["t"]


def _spin(stop) -> None:
    while not stop.is_set():
        pass


def busy_demo(config: Path) -> None:
    cores = os.cpu_count() or 2
    print(f"\n3. whole demo (2 epochs), idle and with {cores} spinning processes")
    results = {}
    for busy in (False, True):
        stop = multiprocessing.Event()
        spinners = [multiprocessing.Process(target=_spin, args=(stop,)) for _ in range(cores if busy else 0)]
        for p in spinners:
            p.start()
        try:
            for threads in ("1", "null"):
                wall, result = _run([sys.executable, "-m", "medkor", "fit", "--config", str(config),
                                     "--cpu_threads", threads])
                if result.returncode != 0:
                    raise SystemExit(f"demo failed:\n{result.stderr[-3000:]}")
                results[(busy, threads)] = wall
                print(f"   {'busy' if busy else 'idle'} cpu_threads {threads:<5} {wall:6.1f} s")
        finally:
            stop.set()
            for p in spinners:
                p.join()
    for threads in ("1", "null"):
        print(f"   cpu_threads {threads}: busy / idle = {results[(True, threads)] / results[(False, threads)]:.2f}x")


def _demo_config(tmp: Path) -> Path:
    import yaml

    config = yaml.safe_load((ROOT / "configs" / "demo.yaml").read_text(encoding="utf-8"))
    for logger in config["trainer"]["logger"]:
        logger["init_args"]["save_dir"] = str(tmp / "logs")
    path = tmp / "demo.yaml"
    path.write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="runs of each plain command (best is reported)")
    parser.add_argument("--skip-busy", action="store_true", help="skip the idle/busy demo runs (3.)")
    args = parser.parse_args()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python "
          f"{platform.python_version()}; load average {os.getloadavg()[0]:.1f} at start")
    with tempfile.TemporaryDirectory() as tmp:
        config = _demo_config(Path(tmp))
        _run([sys.executable, "-m", "medkor", "prepare", "--config", str(config)])  # warm the cache
        plain_commands(args.repeats)
        startup_phases(config)
        if not args.skip_busy:
            busy_demo(config)


if __name__ == "__main__":
    main()
