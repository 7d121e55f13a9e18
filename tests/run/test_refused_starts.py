"""Refused starts of `validate`: a damaged checkpoint is a load error (exit 1) however it is named, and a start
that fails after its run folder was claimed leaves none of the folders it made."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from tests.callbacks.test_checkpoint_io import _flip_mantissa_bits, fitted  # noqa: F401 - the fixture


def _medkor(repo_root: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(repo_root), "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "medkor", *args], cwd=repo_root, env=env, capture_output=True,
                          text=True, timeout=300)


def _config(repo_root: Path, tmp_path: Path, **data: object) -> Path:
    config = yaml.safe_load((repo_root / "configs" / "demo.yaml").read_text(encoding="utf-8"))
    for logger in config["trainer"]["logger"]:
        logger["init_args"]["save_dir"] = str(tmp_path / "logs")
    config["data"].update(cache_dir=str(tmp_path / "cache"), **data)
    path = tmp_path / "demo.yaml"
    path.write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")
    return path


def test_a_failed_validate_leaves_no_empty_stage_folder(repo_root, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    good = json.dumps({"text": "당뇨병은 혈당이 높은 상태이다. " * 20}, ensure_ascii=False)
    for name in ("train.jsonl", "validation.jsonl"):
        (data / name).write_text(f"{good}\n{{\"text\": \"끝나지 않은 줄\"\n", encoding="utf-8")
    result = _medkor(repo_root, "validate", "--config", str(_config(repo_root, tmp_path, data_dir=str(data))))
    assert result.returncode == 1 and "medkor validate: error: " in result.stderr, result.stderr[-2000:]
    assert not (tmp_path / "logs").exists(), sorted(map(str, (tmp_path / "logs").rglob("*")))


def test_a_damaged_checkpoint_named_by_its_path_is_a_load_error_exit_1(fitted, repo_root, tmp_path):
    damaged = tmp_path / "damaged.ckpt"
    _flip_mantissa_bits(fitted["path"], damaged)
    result = _medkor(repo_root, "validate", "--config", str(_config(repo_root, tmp_path)), "--ckpt_path", str(damaged))
    lines = [line for line in result.stderr.splitlines() if line.startswith("medkor ")]
    assert result.returncode == 1 and len(lines) == 1, result.stderr[-2000:]
    assert lines[0].startswith(f"medkor validate: error: --ckpt_path: {damaged}: the checkpoint is damaged"), lines
