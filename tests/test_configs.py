"""Every file in configs/ parses as `medkor fit` reads it, alone and with every strategy.

Each combination goes through `medkor.lightning_cli.parse_run_config` (the parser of `medkor fit`,
in-process), then through `--print_config` and back (the saved config.yaml of a run
must parse again), and every value the YAML files set must arrive: strategy class and
its arguments, checkpoint callbacks, model and data options. The strategy and the
checkpoint callbacks are built for real (no GPU needed to construct them), the model
module is constructed (which checks its options and loads nothing), and under FSDP the
module's own refusals are asked. Commands written in the files' comments must parse too,
and every config path a comment names must exist.
"""

from __future__ import annotations

import contextlib
import enum
import importlib
import io
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
# Stage files without a model of their own -> the stage file they go on top of.
OVERLAYS = {"medgemma-4b/cpt-new-embeddings.yaml": "medgemma-4b/cpt-embeddings-lora.yaml"}
GEMMA3_LAYER = "transformers.models.gemma3.modeling_gemma3.Gemma3DecoderLayer"


def _load(path: Path) -> dict:
    return yaml.safe_load(path.read_text(encoding="utf-8")) or {}


def _rel(path: Path) -> str:
    return path.relative_to(CONFIGS).as_posix()


def _get(tree: dict, dotted: str) -> Any:
    for key in dotted.split("."):
        if not isinstance(tree, dict) or key not in tree:
            return None
        tree = tree[key]
    return tree


STAGE_FILES = sorted(p for p in CONFIGS.rglob("*.yaml") if "strategies" not in p.parts)
STRATEGY_FILES = sorted((CONFIGS / "strategies").glob("*.yaml"))
# Strategy files that choose a strategy, and layers on top of one (e.g. multinode.yaml).
STRATEGIES = [p for p in STRATEGY_FILES if _get(_load(p), "trainer.strategy") is not None]
LAYERS = [p for p in STRATEGY_FILES if p not in STRATEGIES]


def _stages() -> list[list[Path]]:
    stages = []
    for path in STAGE_FILES:
        if _get(_load(path), "model.model_name_or_path") is not None:
            stages.append([path])
        elif _rel(path) in OVERLAYS:
            stages.append([CONFIGS / OVERLAYS[_rel(path)], path])
    return stages


def _combinations() -> list[list[Path]]:
    out = []
    for stage in _stages():
        out.append(stage)
        for strategy in STRATEGIES:
            out.append(stage + [strategy])
            out.extend(stage + [strategy, layer] for layer in LAYERS)
    return out


COMBINATIONS = _combinations()


def _id(files: list[Path]) -> str:
    return "+".join(p.stem for p in files)


def _args(files: list[Path]) -> list[str]:
    return [x for p in files for x in ("--config", str(p))]


def _merged(files: list[Path]) -> dict:
    """The YAML files merged as jsonargparse merges them: dicts deeply, lists replaced."""

    def merge(base: dict, top: dict) -> dict:
        out = dict(base)
        for key, value in top.items():
            out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
        return out

    merged: dict = {}
    for path in files:
        merged = merge(merged, _load(path))
    return merged


def _parse(args: list[str], capsys) -> Any:
    from medkor.lightning_cli import parse_run_config

    try:
        return parse_run_config(args)
    except SystemExit as exit_:
        pytest.fail(f"medkor fit {' '.join(args)} does not parse (exit {exit_.code}):\n{capsys.readouterr().err}")


def _print_config(args: list[str], capsys) -> str:
    from medkor.lightning_cli import parse_run_config

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            parse_run_config(args + ["--print_config"])
        except SystemExit as exit_:
            if exit_.code not in (0, None):
                pytest.fail(f"--print_config of {' '.join(args)} failed:\n{capsys.readouterr().err}")
    return out.getvalue()


def _same(expected: Any, parsed: Any) -> bool:
    """A YAML value against the parsed one (classes by import path, enums by name, tuples as lists)."""
    if isinstance(parsed, (set, frozenset)) and isinstance(expected, list):
        return {f"{c.__module__}.{c.__qualname__}" for c in parsed} == set(expected)
    if isinstance(parsed, enum.Enum):
        return parsed.name == expected or parsed.value == expected
    if isinstance(parsed, tuple):
        parsed = list(parsed)
    return parsed == expected


def _mismatches(expected: Any, parsed: Any, where: str = "") -> list[str]:
    if isinstance(expected, dict):
        if not isinstance(parsed, dict):
            return [f"{where}: expected a mapping, parsed {parsed!r}"]
        return [m for key, value in expected.items()
                for m in _mismatches(value, parsed.get(key, "<missing>"), f"{where}.{key}".lstrip("."))]
    if isinstance(expected, list) and expected and all(isinstance(x, dict) for x in expected):
        if not isinstance(parsed, list) or len(parsed) != len(expected):
            return [f"{where}: expected {len(expected)} entries, parsed {parsed!r}"]
        return [m for i, (e, p) in enumerate(zip(expected, parsed)) for m in _mismatches(e, p, f"{where}[{i}]")]
    return [] if _same(expected, parsed) else [f"{where}: file says {expected!r}, parsed {parsed!r}"]


def _build(class_path: str, init_args: dict) -> Any:
    module, _, name = class_path.rpartition(".")
    return getattr(importlib.import_module(module), name)(**init_args)


@pytest.fixture(autouse=True)
def _repo_root(monkeypatch):
    monkeypatch.chdir(ROOT)  # configs name local paths relative to the repository root


def test_every_stage_file_stands_alone_or_is_a_known_overlay():
    for path in STAGE_FILES:
        alone = _get(_load(path), "model.model_name_or_path") is not None
        assert alone or _rel(path) in OVERLAYS, f"{_rel(path)}: no model.model_name_or_path; add it to OVERLAYS"
    assert all((CONFIGS / base).is_file() and (CONFIGS / top).is_file() for top, base in OVERLAYS.items())
    assert STRATEGIES and {p.name for p in STRATEGIES} >= {"ddp.yaml", "fsdp.yaml"}


@pytest.mark.parametrize("files", COMBINATIONS, ids=_id)
def test_config_parses_and_says_what_its_files_say(files, capsys, monkeypatch, tmp_path):
    import medkor.model.module as module_code
    from medkor.model import MedGemmaModule
    from medkor.model.module import fsdp_problem

    args = _args(files)
    config = _parse(args, capsys)
    parsed = config.as_dict()
    expected = _merged(files)

    # Every value the files set arrives, and the printed config (a run's config.yaml) parses back.
    assert _mismatches(expected, parsed) == []
    printed = tmp_path / "config.yaml"
    printed.write_text(_print_config(args, capsys), encoding="utf-8")
    again = _parse(["--config", str(printed)], capsys).as_dict()
    assert {k: v for k, v in again.items() if k != "config"} == {k: v for k, v in parsed.items() if k != "config"}

    # The strategy is the last file's, and Lightning builds it (on CPU, without devices).
    strategy = parsed["trainer"]["strategy"]
    if _get(expected, "trainer.strategy") is None:
        assert strategy == "auto"
        is_fsdp = False
    else:
        assert strategy["class_path"] == expected["trainer"]["strategy"]["class_path"]
        built = _build(strategy["class_path"], config.trainer.strategy.init_args)
        is_fsdp = type(built).__name__ == "FSDPStrategy"
        if is_fsdp:
            from torch.distributed.fsdp.wrap import ModuleWrapPolicy

            layer = importlib.import_module(GEMMA3_LAYER.rpartition(".")[0]).Gemma3DecoderLayer
            assert built.kwargs["use_orig_params"] is True  # Lightning's default: param groups, frozen params
            assert isinstance(built.kwargs["auto_wrap_policy"], ModuleWrapPolicy)
            assert built.kwargs["auto_wrap_policy"]._module_classes == {layer}
            assert built._activation_checkpointing_kwargs["auto_wrap_policy"]._module_classes == {layer}
            assert built.sharding_strategy.name == "FULL_SHARD" and built._state_dict_type == "sharded"
            assert parsed["trainer"]["precision"] == "bf16-mixed"

    # Checkpoint callbacks are valid ModelCheckpoints; GPU stages keep one per epoch and
    # rewrite last.ckpt every N optimizer steps.
    checkpoints = [cb for cb in parsed["trainer"]["callbacks"] or []
                   if cb["class_path"].endswith("ModelCheckpoint")]
    for cb in checkpoints:
        _build(cb["class_path"], cb["init_args"])
    assert checkpoints, "no ModelCheckpoint"
    epochs = [cb["init_args"] for cb in checkpoints if cb["init_args"]["every_n_epochs"] == 1]
    assert epochs and all(a["save_top_k"] == -1 for a in epochs)
    stage = _merged([f for f in files if f not in STRATEGY_FILES])
    if _get(stage, "trainer.accelerator") == "gpu":  # the demo is a CPU run of minutes
        steps = [cb["init_args"] for cb in checkpoints if cb["init_args"]["every_n_train_steps"]]
        assert len(steps) == 1 and steps[0]["every_n_train_steps"] > 0 and steps[0]["save_last"] is True
        if parsed["trainer"]["val_check_interval"] != 1.0:
            assert all(a["save_on_train_epoch_end"] is True for a in epochs)  # else one per validation

    # The model module accepts its options without loading anything; FSDP refuses only
    # what cannot run under it.
    def no_loading(*_args, **_kwargs):
        raise AssertionError("constructing MedGemmaModule must not load the model")

    monkeypatch.setattr(module_code, "build_model", no_loading)
    model_args = dict(parsed["model"])
    module = MedGemmaModule(**model_args)
    if is_fsdp:
        problem = fsdp_problem(module.hparams, training=True)
        if model_args["trainable"] == "new_embeddings":
            assert problem and "new_embeddings" in problem and "\n" not in problem
        else:
            assert problem is None


def _comment_commands(path: Path) -> list[list[str]]:
    """`medkor fit|prepare ...` lines of a file's comments (backslash continuations joined)."""
    lines = [line.lstrip("#").strip() for line in path.read_text(encoding="utf-8").splitlines()
             if line.lstrip().startswith("#")]
    text = re.sub(r"\\\s*\n\s*", " ", "\n".join(lines))
    commands = []
    for line in text.splitlines():
        match = re.search(r"\bmedkor (fit|prepare) (.*)$", line)
        if match:
            words = shlex.split(match.group(2).split("  #")[0])
            commands.append([w for w in words if w != "..."])
    return commands


@pytest.mark.parametrize("path", STAGE_FILES + STRATEGY_FILES, ids=_rel)
def test_commands_and_paths_in_comments_are_real(path, capsys):
    named = set(re.findall(r"configs/[\w./-]+\.yaml", path.read_text(encoding="utf-8")))
    for name in named:
        assert (ROOT / name).is_file(), f"{_rel(path)} names {name}, which does not exist"
    for command in _comment_commands(path):
        _parse(command, capsys)


STAGES = ("00_plain_text", "01_medical_dict", "02_kormedmcqa")


@pytest.mark.parametrize("family", ["medgemma-4b", "demo"])
def test_stage_configs_chain_exports_and_keep_the_replaced_settings(family):
    """Each stage starts from the export folder the previous stage's comment writes; the GPU
    stages keep lr 1e-4, effective batch 32, rows 512/256/1024, 10 % warmup, wd 0.01, clip 0.3."""
    from medkor.data import MedKorDataModule

    files = [CONFIGS / family / f"{stage}.yaml" for stage in STAGES]
    trees = [_load(path) for path in files]
    for previous, path, tree in zip(files, files[1:], trees[1:]):
        out = re.search(r"medkor export .*--out (\S+)", previous.read_text(encoding="utf-8")).group(1)
        assert _get(tree, "model.model_name_or_path") == out, f"{_rel(path)} does not start from {out}"
    assert [_get(t, "data.format") for t in trees] == ["text", "dictionary", "mcq"]
    for tree in trees:
        if family == "demo":  # bundled data: every data option is real and valid (files checked)
            MedKorDataModule(**tree["data"])
        assert _get(tree, "data.eval_source") == _get(
            next(c for c in tree["trainer"]["callbacks"] if c["class_path"].endswith("KorMedMCQAEval")), "init_args.source"
        ) or _get(tree, "data.eval_source") is None
    assert "plain_text" in _get(trees[1], "data.val_sets")
    if family == "medgemma-4b":
        assert [_get(t, "data.max_length") for t in trees] == [512, 256, 1024]
        for tree in trees:
            assert _get(tree, "data.batch_size") * _get(tree, "trainer.accumulate_grad_batches") == 32
            assert (_get(tree, "model.learning_rate"), _get(tree, "model.warmup_ratio"),
                    _get(tree, "model.weight_decay"), _get(tree, "trainer.gradient_clip_val")) == (1e-4, 0.1, 0.01, 0.3)
