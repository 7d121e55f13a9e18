"""Config checks that cost nothing: an endless run is refused before Lightning loads."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from medkor.checks import ConfigError, check_run_config

_REPORT_IMPORTS = (
    "import sys\n"
    "try:\n"
    "    from medkor.cli import main\n"
    "    main(sys.argv[1:])\n"
    "finally:\n"
    "    print('lightning loaded' if 'lightning' in sys.modules else 'lightning not loaded')\n"
)


@pytest.mark.parametrize("trainer", [{"max_epochs": -1, "max_steps": -1}, {"max_epochs": -1}])
def test_both_limits_unbounded_is_refused(trainer):
    with pytest.raises(ConfigError, match=r"trainer.max_epochs -1 and trainer.max_steps -1 give the run no end.*"
                                          r"set trainer.max_steps"):
        check_run_config({"trainer": trainer})


@pytest.mark.parametrize("trainer", [{"max_epochs": -1, "max_steps": 100}, {"max_epochs": 2, "max_steps": -1},
                                     {"max_steps": -1}, {}])
def test_one_limit_is_enough(trainer):
    check_run_config({"trainer": trainer})


def test_fit_refuses_an_endless_run_in_one_line_before_lightning_loads(repo_root: Path, tmp_path: Path):
    config = yaml.safe_load((repo_root / "configs" / "demo.yaml").read_text(encoding="utf-8"))
    for logger in config["trainer"]["logger"]:
        logger["init_args"]["save_dir"] = str(tmp_path / "logs")
    config["data"]["cache_dir"] = str(tmp_path / "cache")
    path = tmp_path / "demo.yaml"
    path.write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(repo_root), "HF_HUB_OFFLINE": "1"}
    env.pop("MEDKOR_DEBUG", None)
    result = subprocess.run(
        [sys.executable, "-c", _REPORT_IMPORTS, "fit", "--config", str(path), "--trainer.max_epochs", "-1",
         "--trainer.max_steps", "-1"], cwd=repo_root, env=env, capture_output=True, text=True, timeout=60)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert lines[0].startswith("medkor fit: error: trainer.max_epochs -1 and trainer.max_steps -1"), lines[0]
    assert "set trainer.max_steps" in lines[0]
    assert result.stdout.strip() == "lightning not loaded"
    assert not (tmp_path / "logs").exists()
