"""`medkor prepare` reads the data options without Lightning, exactly as `fit` builds them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from medkor.commands import prepare as prepare_cmd
from medkor.commands.prepare import _data_args, light_data_options
from medkor.data.cache import resolve
from medkor.data.plan import DataPlan

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "medkor" / "assets" / "demo"


def _full_options(argv: list[str]) -> dict:
    from medkor.lightning_cli import parse_run_config

    return _data_args(parse_run_config(argv))


def _keys(options: dict) -> list[tuple[str, str]]:
    return [(r.split, resolve(r)[1]) for r in DataPlan.from_options(options).requests("fit")]


@pytest.fixture
def stage_files(tmp_path, data_dir, tokenizer_dir):
    dictionary = tmp_path / "dict.jsonl"
    dictionary.write_text(json.dumps({"term": "빈혈", "definition": "헤모글로빈이 부족한 상태."}, ensure_ascii=False) + "\n")
    base = tmp_path / "base.yaml"
    base.write_text(yaml.safe_dump({
        "model": {"model_name_or_path": str(DEMO / "tiny-gemma3"), "tokenizer_path": str(tokenizer_dir)},
        "data": {"data_dir": str(data_dir), "max_length": 48, "val_fraction": 0, "num_proc": 1,
                 "val_sets": {"dict": {"path": str(dictionary), "format": "dictionary"}}},
        "trainer": {"max_epochs": 1},
    }, allow_unicode=True))
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text(yaml.safe_dump({"data": {"packing": False, "seed": 7, "prepare_data_per_node": False}}))
    return base, overlay


@pytest.mark.parametrize("extra", [
    [], ["--data.max_length", "64", "--data.max_samples=20"], ["--data.lock_timeout", "30", "--data.cot", "true"],
])
def test_light_reading_equals_the_full_parse(stage_files, extra):
    base, overlay = stage_files
    argv = ["--config", str(base), "--config", str(overlay), *extra]
    light = light_data_options(argv)
    assert light is not None
    full = _full_options(argv)
    assert light == full
    assert _keys(light) == _keys(full)


def test_the_demo_config_reads_the_same_both_ways(repo_root, monkeypatch):
    monkeypatch.chdir(repo_root)
    argv = ["--config", "configs/demo.yaml"]
    assert light_data_options(argv) == _full_options(argv)


@pytest.mark.parametrize("args", [
    ["--data.data_dir", "2024"],  # a number where a path is wanted: the full parse says so
    ["--data.no_such_option", "1"],
    ["--data.val_sets.more.path", "x.jsonl"],
])
def test_what_the_light_reading_does_not_follow_goes_to_the_full_parse(stage_files, args):
    base, _ = stage_files
    assert light_data_options(["--config", str(base), *args]) is None


def test_a_dict_option_in_two_files_goes_to_the_full_parse(stage_files, tmp_path):
    base, _ = stage_files
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump({"data": {"val_sets": {"again": {"path": str(base)}}}}))
    assert light_data_options(["--config", str(base), "--config", str(other)]) is None


def test_prepare_hit_and_cache_commands_load_neither_lightning_nor_torch(stage_files, tmp_path, capsys):
    base, overlay = stage_files
    argv = ["--config", str(base), "--config", str(overlay)]
    assert prepare_cmd.main(argv) == 0  # builds
    built = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    cache_dir = Path(built[0]["path"]).parent
    commands = [["prepare", *argv], ["cache", "ls", str(cache_dir)], ["cache", "verify", str(cache_dir)],
                ["cache", "rm", str(cache_dir), "--all", "--dry-run"], ["cache", "gc", str(cache_dir), "--dry-run"]]
    code = ("import json, sys\nfrom medkor.cli import main\nfor args in json.loads(sys.argv[1]):\n"
            "    try:\n        main(args)\n    except SystemExit as exit:\n        print('EXIT', exit.code)\n"
            "print('HEAVY', sorted(m for m in ('lightning', 'torch', 'transformers') if m in sys.modules))")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-c", code, json.dumps(commands)], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=120)
    assert "HEAVY []" in result.stdout, result.stdout[-2000:] + result.stderr[-2000:]
    assert result.stdout.count("EXIT 0") == 5, result.stdout[-2000:] + result.stderr[-2000:]
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert [(r["split"], r["status"], r["key"]) for r in lines] == [(r["split"], "hit", r["key"]) for r in built]


def test_the_gpu_configs_read_the_same_both_ways(repo_root, monkeypatch):
    monkeypatch.chdir(repo_root)
    combos = [  # (every stage and strategy config alone and combined was compared by hand once: all equal)
        ["configs/medgemma-4b/02_kormedmcqa.yaml"],
        ["configs/medgemma-4b/cpt-embeddings-lora.yaml", "configs/medgemma-4b/cpt-new-embeddings.yaml"],  # an overlay
        ["configs/medgemma-4b/full.yaml", "configs/strategies/fsdp.yaml", "configs/strategies/multinode.yaml"],
    ]
    for combo in combos:
        argv = [arg for path in combo for arg in ("--config", path)]
        light = light_data_options(argv)
        assert light is not None and light == _full_options(argv), combo
