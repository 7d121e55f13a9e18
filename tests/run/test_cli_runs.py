"""Run folders through the real `medkor` command: fast config errors, concurrent runs, validate.

Each test starts `python -m medkor ...` in a subprocess on a temporary copy of
configs/demo.yaml (logs and caches under tmp_path), so what is checked is what a user
sees: the exit status, stderr, and the `version_N` folders left behind.
"""

from __future__ import annotations

import csv
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from lightning.pytorch.callbacks import Callback

# one torch thread per run: two runs on two cores (and a busy machine) do not oversubscribe
ENV = {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
# Lightning prints this when the CLI seeds, before any config check runs
SEED_LINE = "Seed set to 1234"


class Rendezvous(Callback):
    """Holds each run at `setup` until `parties` runs got there, then lets them all go on.

    `setup` comes after the CLI settled the run folder and before any checkpoint callback
    (Lightning runs those last) or logger wrote anything, so every run chooses its folder
    while the others are still starting. Each run leaves `<folder>/<pid>` naming its log_dir.
    """

    def __init__(self, folder: str, parties: int = 2, timeout: float = 120.0) -> None:
        self.folder, self.parties, self.timeout = Path(folder), parties, timeout

    def setup(self, trainer, pl_module, stage: str) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / str(os.getpid())).write_text(str(trainer.log_dir), encoding="utf-8")
        deadline = time.monotonic() + self.timeout
        while len(list(self.folder.iterdir())) < self.parties:
            if time.monotonic() > deadline:
                raise RuntimeError(f"rendezvous: only {len(list(self.folder.iterdir()))} of {self.parties} runs came")
            time.sleep(0.05)


def _env(repo_root: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(repo_root), **ENV}


def _start(repo_root: Path, args: list[str], log: Path) -> subprocess.Popen:
    """Start `medkor ARGS` with stdout and stderr in `log` (a file: no pipe can fill while a run waits)."""
    with log.open("w", encoding="utf-8") as out:
        return subprocess.Popen([sys.executable, "-m", "medkor", *args], cwd=repo_root, env=_env(repo_root),
                                stdout=out, stderr=subprocess.STDOUT)


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _timed(command: list[str], cwd: Path, timeout: int) -> tuple[subprocess.CompletedProcess, float, float]:
    """Run `command`; (result, wall seconds, CPU seconds of the process and its children)."""
    wall, cpu = time.perf_counter(), _children_cpu()
    result = subprocess.run(command, cwd=cwd, env=_env(cwd), capture_output=True, text=True, timeout=timeout)
    return result, time.perf_counter() - wall, _children_cpu() - cpu


def _run(repo_root: Path, args: list[str], timeout: int = 300) -> tuple[subprocess.CompletedProcess, float, float]:
    return _timed([sys.executable, "-m", "medkor", *args], repo_root, timeout)


def _big_data_dir(repo_root: Path, folder: Path, copies: int) -> Path:
    """The demo documents `copies` times over (each copy slightly different): a cache build that takes a while."""
    demo = repo_root / "medkor" / "assets" / "demo" / "data"
    folder.mkdir(parents=True)
    lines = (demo / "train.jsonl").read_text(encoding="utf-8").splitlines()
    with (folder / "train.jsonl").open("w", encoding="utf-8") as f:
        for k in range(copies):
            for line in lines:
                doc = json.loads(line)
                doc["text"] += f" ({k})"
                f.write(json.dumps(doc, ensure_ascii=False) + "\n")
    (folder / "validation.jsonl").write_bytes((demo / "validation.jsonl").read_bytes())
    return folder


def _config(repo_root: Path, tmp: Path, data_dir: Path, name: str = "demo.yaml", extra: tuple = ()) -> Path:
    config = yaml.safe_load((repo_root / "configs" / "demo.yaml").read_text(encoding="utf-8"))
    trainer = config["trainer"]
    for logger in trainer["logger"]:
        logger["init_args"]["save_dir"] = str(tmp / "logs")
    trainer.update(max_epochs=1, limit_train_batches=2, limit_val_batches=1, log_every_n_steps=1,
                   enable_progress_bar=False)
    for callback in trainer["callbacks"]:
        if callback["class_path"].endswith("KorMedMCQAEval"):
            callback["init_args"]["max_samples"] = 2
    trainer["callbacks"][:0] = list(extra)
    config["data"].update(data_dir=str(data_dir), cache_dir=str(tmp / "cache"), num_proc=1)
    path = tmp / name
    path.write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")
    return path


def _rows(run: Path) -> list[dict[str, str]]:
    with (run / "metrics.csv").open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _steps(rows: list[dict[str, str]], key: str) -> list[int]:
    return [int(r["step"]) for r in rows if r.get(key)]


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------- bad values fail fast


@pytest.fixture(scope="module")
def import_cost(repo_root: Path) -> tuple[float, float]:
    """(wall, CPU) seconds of starting Python and importing the `medkor` command: the floor of any `medkor fit`."""
    result, wall, cpu = _timed([sys.executable, "-c", "import medkor.lightning_cli"], repo_root, timeout=120)
    assert result.returncode == 0, result.stderr
    return wall, cpu


@pytest.fixture(scope="module")
def slow_start_config(repo_root: Path, tmp_path_factory) -> tuple[Path, Path]:
    # 100 copies of the demo data (27 MB): a real start spends several CPU seconds building their cache
    tmp = tmp_path_factory.mktemp("bad")
    return _config(repo_root, tmp, _big_data_dir(repo_root, tmp / "data", copies=100)), tmp


@pytest.mark.parametrize("args, message", [
    (["--trainer.accumulate_grad_batches", "0"], "trainer.accumulate_grad_batches must be >= 1, got 0"),
    (["--trainer.max_epochs", "-3"], "trainer.max_epochs must be >= -1, got -3"),
    (["--data.max_length", "100000000"],
     "data.max_length 100000000 is longer than the model's max_position_embeddings 2048"),
    (["--data.batch_size", "0"], "data.batch_size must be >= 1, got 0"),
], ids=["accumulate_grad_batches", "max_epochs", "max_length", "batch_size"])
def test_bad_value_fails_in_one_line_before_any_loading(repo_root, slow_start_config, import_cost, args, message):
    config, tmp = slow_start_config
    result, wall, cpu = _run(repo_root, ["fit", "--config", str(config), *args], timeout=120)
    assert result.returncode == 2, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines and lines[-1].startswith(f"medkor fit: error: {message}"), result.stderr[-3000:]
    assert set(lines[:-1]) <= {SEED_LINE}, f"more than the error on stderr: {lines}"
    assert "Traceback" not in result.stderr and result.stdout == ""
    # nothing was built, loaded or claimed: no Trainer, no model, no cache, no run folder
    for marker in ("GPU available", "Loading weights", "[medkor] embeddings", "[medkor] cache"):
        assert marker not in result.stderr
    assert not (tmp / "cache").exists()
    assert not (tmp / "logs").exists()
    # the cost of importing the command and parsing the config, far from a real start, which builds the
    # cache of this data first (CPU seconds: unlike wall time they do not depend on what else the machine runs)
    import_wall, import_cpu = import_cost
    assert cpu < 1.2 * import_cpu + 1.5, f"{cpu:.1f} s CPU ({wall:.1f} s wall); importing medkor: {import_cpu:.1f} s CPU"
    print(f"\n{args[0]}: {wall:.1f} s wall, {cpu:.1f} s CPU; importing medkor: {import_wall:.1f} s wall, "
          f"{import_cpu:.1f} s CPU")


# ---------------------------------------------------------------- two runs started together


@pytest.fixture(scope="module")
def two_runs(repo_root: Path, tmp_path_factory):
    """Two `medkor fit` runs of one config started at the same moment on a cold cache (2 and 3 steps)."""
    tmp = tmp_path_factory.mktemp("together")
    data = _big_data_dir(repo_root, tmp / "data", copies=4)
    config = _config(repo_root, tmp, data)
    rendezvous = {"class_path": "tests.run.test_cli_runs.Rendezvous", "init_args": {"folder": str(tmp / "rendezvous")}}
    together = _config(repo_root, tmp, data, name="together.yaml", extra=[rendezvous])
    start = time.perf_counter()
    procs = {steps: _start(repo_root, ["fit", "--config", str(together), "--trainer.limit_train_batches", str(steps)],
                           tmp / f"fit-{steps}.log")
             for steps in (2, 3)}
    results = {steps: (proc.wait(timeout=300), (tmp / f"fit-{steps}.log").read_text(encoding="utf-8"))
               for steps, proc in procs.items()}
    seconds = time.perf_counter() - start
    return config, tmp, results, seconds


@pytest.mark.slow
def test_runs_started_together_get_their_own_version_folders(two_runs):
    config, tmp, results, seconds = two_runs
    for steps, (code, output) in results.items():
        assert code == 0, f"run with {steps} steps: {output[-3000:]}"
    root = tmp / "logs" / "demo"
    # both had chosen their folders when they met at the rendezvous, before either went on
    chosen = sorted(p.read_text(encoding="utf-8") for p in (tmp / "rendezvous").iterdir())
    assert chosen == [str(root / "version_0"), str(root / "version_1")], chosen
    assert sorted(p.name for p in root.iterdir()) == ["version_0", "version_1"]
    seen = {}
    for run in sorted(root.iterdir()):
        saved = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8"))
        steps = saved["trainer"]["limit_train_batches"]
        seen[steps] = run.name
        rows = _rows(run)
        # its own rows only, each step once: train losses 0..steps-1, KorMedMCQA before and after
        assert _steps(rows, "train/loss") == list(range(steps)), (run, rows)
        assert _steps(rows, "kormedmcqa/acc") == [0, steps], (run, rows)
        assert _steps(rows, "val/loss") == [steps - 1], (run, rows)
        assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [f"epoch00-step{steps}.ckpt", "last.ckpt"]
        assert len(list(run.glob("events.out.tfevents.*"))) == 1  # one TensorBoard writer per folder
        assert not (run / "run.lock").exists()  # each run held its own folder's lock and gave it back
    assert sorted(seen) == [2, 3], seen
    print(f"\ntwo concurrent fits: {seconds:.1f} s")


@pytest.mark.slow
def test_validate_claims_its_own_folder_and_leaves_the_fit_runs_alone(repo_root, two_runs):
    config, tmp, results, _ = two_runs
    assert all(code == 0 for code, _ in results.values())
    root = tmp / "logs" / "demo"
    fits = {run.name: _snapshot(run) for run in root.iterdir()}
    (ckpt,) = (root / "version_0" / "checkpoints").glob("epoch*.ckpt")
    result, seconds, _ = _run(repo_root, ["validate", "--config", str(config), "--ckpt_path", str(ckpt)])
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(p.name for p in root.iterdir()) == ["validate", "version_0", "version_1"]
    assert {run: _snapshot(root / run) for run in fits} == fits  # metrics.csv, config.yaml, predictions: untouched
    run = root / "validate" / "version_0"
    assert (run / "config.yaml").is_file()
    rows = _rows(run)
    assert any(r.get("val/loss") for r in rows) and any(r.get("kormedmcqa/acc") for r in rows)
    assert not any(r.get("train/loss") for r in rows)
    assert not (run / "checkpoints").exists()
    print(f"\nvalidate: {seconds:.1f} s")
