"""benchmarks/gpu_check.py's CPU smoke mode runs its loss section: fused and naive agree under bf16 autocast."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


def test_gpu_check_loss_section_on_cpu(repo_root: Path, tmp_path: Path):
    out = tmp_path / "gpu_check.json"
    done = subprocess.run(
        [sys.executable, str(repo_root / "benchmarks" / "gpu_check.py"), "--device", "cpu", "--tiny",
         "--sections", "loss", "--workdir", str(tmp_path / "work"), "--out", str(out)],
        cwd=repo_root, capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONPATH": str(repo_root), "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads(out.read_text(encoding="utf-8"))
    loss = results["loss"]
    assert results["device"] == "cpu" and results["tiny"] is True
    assert abs(loss["fused"]["loss"] - loss["naive"]["loss"]) < 1e-4
    assert loss["fused"]["ms"] > 0 and loss["naive"]["ms"] > 0
