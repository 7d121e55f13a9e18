"""The `medkor` command end to end: help text, the demo config fitting, validate on its checkpoint."""

from __future__ import annotations

import csv
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from medkor.cli import COMMANDS, main


def run_medkor(args: list[str], cwd: Path, timeout: int = 400) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(cwd), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run(
        [sys.executable, "-m", "medkor", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


def test_top_level_help_lists_every_command(capsys):
    main([])
    out = capsys.readouterr().out
    for name in ["fit", "validate", "test", *COMMANDS]:
        assert re.search(rf"^  {re.escape(name)}\s+\S", out, re.M), f"{name} missing from `medkor` help"


def test_fit_help_documents_every_model_and_data_option(repo_root):
    result = run_medkor(["fit", "--help"], repo_root, timeout=120)
    assert result.returncode == 0, result.stderr
    # jsonargparse prints each option, then its help, which ends in "(type: ..., default: ...)".
    blocks = re.findall(r"^  (--(?:model|data)\.[\w.]+)[^\n]*\n((?:\s{6,}.*\n)+)", result.stdout, re.M)
    assert len(blocks) > 20, result.stdout[:2000]
    undocumented = [opt for opt, text in blocks if re.sub(r"\((type|default):.*?\)", "", " ".join(text.split())).strip() == ""]
    assert not undocumented, f"options without help text: {undocumented}"
    assert "--data.tokenizer_path" not in result.stdout, "data.tokenizer_path must be linked from model.tokenizer_path"


def _metrics_rows(run_dir: Path) -> list[dict[str, str]]:
    with (run_dir / "metrics.csv").open(encoding="utf-8") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_demo_fits_then_validates_its_checkpoint(repo_root, tmp_path):
    config = yaml.safe_load((repo_root / "configs" / "demo.yaml").read_text(encoding="utf-8"))
    for logger in config["trainer"]["logger"]:
        logger["init_args"]["save_dir"] = str(tmp_path / "logs")
    config["data"]["cache_dir"] = str(tmp_path / "cache")
    config["trainer"]["max_epochs"] = 2
    config["trainer"]["limit_train_batches"] = 3
    config["trainer"]["limit_val_batches"] = 2
    config_file = tmp_path / "demo.yaml"
    config_file.write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")

    fit = run_medkor(["fit", "--config", str(config_file)], repo_root)
    assert fit.returncode == 0, fit.stderr[-4000:]
    run_dir = tmp_path / "logs" / "demo" / "version_0"
    rows = _metrics_rows(run_dir)
    acc = [(int(r["step"]), float(r["kormedmcqa/acc"])) for r in rows if r.get("kormedmcqa/acc")]
    assert [step for step, _ in acc] == [0, 3, 6], acc  # baseline, then one per epoch
    assert all(0.0 <= value <= 1.0 for _, value in acc)
    for subset in ["doctor", "nurse", "pharm", "dentist"]:
        assert any(r.get(f"kormedmcqa/{subset}/acc") for r in rows), subset
    assert any(r.get("train/loss") for r in rows) and any(r.get("val/loss") for r in rows)
    assert list(run_dir.glob("events.out.tfevents.*")), "TensorBoard logs belong in the same run folder"
    checkpoints = sorted((run_dir / "checkpoints").glob("epoch*.ckpt"))
    assert len(checkpoints) == 2, checkpoints  # one per epoch
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()  # the step checkpoint, brought up to the end

    validate = run_medkor(["validate", "--config", str(config_file), "--ckpt_path", str(checkpoints[-1])], repo_root)
    assert validate.returncode == 0, validate.stderr[-4000:]
    assert "val/loss" in validate.stdout and "kormedmcqa/acc" in validate.stdout
