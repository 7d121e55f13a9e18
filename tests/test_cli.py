"""The `medkor` command end to end: help text, the demo config fitting, validate on its checkpoint."""

from __future__ import annotations

import csv
import json
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
    config_file = _demo_config(repo_root, tmp_path, trainer={"max_epochs": 2, "limit_train_batches": 3,
                                                            "limit_val_batches": 2})

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

    assert all(r["epoch"] != "" for r in rows if r.get("kormedmcqa/acc")), "KorMedMCQA rows need their epoch"

    # the terminal tells the story: baseline per subset with n, each epoch with its change and val/loss, the end
    said = [line for line in fit.stdout.splitlines() if line.startswith("[medkor] ")]
    baseline = next(line for line in said if "KorMedMCQA baseline (step 0)" in line)
    assert all(f"{subset} " in baseline and "n=12" in baseline for subset in ["doctor", "nurse", "pharm", "dentist"])
    epochs = [line for line in said if line.startswith("[medkor] KorMedMCQA (epoch")]
    assert len(epochs) == 2 and all("since baseline" in line and "val/loss" in line for line in epochs), epochs
    end = "\n".join(said[said.index(next(line for line in said if line.startswith("[medkor] done:"))):])
    assert "best ckpt (val/loss " in end, end
    for expected in [f"run folder   {run_dir}", f"last ckpt    {run_dir / 'checkpoints' / 'last.ckpt'}",
                     str(run_dir / "checkpoints" / "epoch0"), str(run_dir / "kormedmcqa" / "summary.json"),
                     f"medkor plot {run_dir}", "medkor validate --config", "medkor export --config"]:
        assert expected in end, (expected, end)

    validate = run_medkor(["validate", "--config", str(config_file), "--ckpt_path", str(checkpoints[-1])], repo_root)
    assert validate.returncode == 0, validate.stderr[-4000:]
    assert "val/loss" in validate.stdout and "kormedmcqa/acc" in validate.stdout
    # its own folder, apart from training runs; the checkpoint's true epoch and step; every file named exists
    validate_dir = tmp_path / "logs" / "demo" / "validate" / "version_0"
    assert sorted(p.name for p in (tmp_path / "logs" / "demo").iterdir()) == ["validate", "version_0"]
    summary = json.loads((validate_dir / "kormedmcqa" / "summary.json").read_text(encoding="utf-8"))
    latest = summary["latest"]
    assert (latest["stage"], latest["epoch"], latest["step"]) == ("validate", 1, 6), latest
    assert latest["checkpoint"] == str(checkpoints[-1])
    named = [e["predictions"] for e in [summary["baseline"], *summary["evaluations"]] if e and e["predictions"]]
    assert named and all((validate_dir / "kormedmcqa" / name).is_file() for name in named), named
    assert "KorMedMCQA validate (epoch 1, step 6)" in validate.stdout

    untrained = run_medkor(["validate", "--config", str(config_file), "--trainer.limit_val_batches", "1"], repo_root)
    assert untrained.returncode == 0, untrained.stderr[-4000:]
    assert "no --ckpt_path: validate scores the model as loaded from model_name_or_path" in untrained.stdout + untrained.stderr


# ---------------------------------------------------------------- commands that answer at once

HEAVY = ("torch", "lightning", "transformers")


@pytest.mark.parametrize("args", [
    ["--help"], ["prepare", "--help"], ["cache", "--help"], ["cache", "ls", "{tmp}"], ["cache", "verify", "{tmp}"],
    ["extend-vocab", "--help"], ["export", "--help"], ["plot", "--help"], ["plot", "{tmp}"],
])
def test_plain_commands_import_neither_torch_nor_lightning(args, repo_root, tmp_path):
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    code = ("import sys\nfrom medkor.cli import main\ntry:\n    main(%r)\nexcept SystemExit:\n    pass\n"
            "print('HEAVY', sorted(m for m in %r if m in sys.modules))" % (args, HEAVY))
    result = subprocess.run([sys.executable, "-c", code], cwd=repo_root, capture_output=True, text=True, timeout=120)
    assert "HEAVY []" in result.stdout, (args, result.stdout[-500:], result.stderr[-2000:])


def test_prepare_help_lists_every_data_option(repo_root):
    import inspect

    from medkor.data import MedKorDataModule

    result = run_medkor(["prepare", "--help"], repo_root, timeout=60)
    assert result.returncode == 0, result.stderr
    for name in inspect.signature(MedKorDataModule.__init__).parameters:
        if name not in ("self", "tokenizer_path"):
            assert re.search(rf"^  --data\.{name} \(default: .+\)\n      \S", result.stdout, re.M), name


def test_fit_help_puts_medkor_options_before_the_trainer_options(repo_root):
    result = run_medkor(["fit", "--help"], repo_root, timeout=120)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    first = {key: out.index(f"  --{key}.") for key in ("model", "data", "trainer")}
    assert first["model"] < first["trainer"] and first["data"] < first["trainer"], first
    assert out.index("usage:") < first["model"] < 60 * 80  # a short usage, then medkor's own options


# ---------------------------------------------------------------- errors in one line

def _demo_config(repo_root: Path, tmp_path: Path, trainer: dict | None = None, **data: object) -> Path:
    """The demo config writing its logs and caches under `tmp_path`, with `trainer` and `data` values changed."""
    config = yaml.safe_load((repo_root / "configs" / "demo.yaml").read_text(encoding="utf-8"))
    for logger in config["trainer"]["logger"]:
        logger["init_args"]["save_dir"] = str(tmp_path / "logs")
    config["trainer"].update(trainer or {})
    config["data"].update(cache_dir=str(tmp_path / "cache"), **data)
    path = tmp_path / "demo.yaml"
    path.write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")
    return path


@pytest.mark.parametrize("override, expected", [
    (["--model.model_name_or_path", "/nonexistent/model"], "model.model_name_or_path '/nonexistent/model': no such folder"),
    (["--model.tokenizer_path", "tokenizers/medgemma-ko"],
     "no such folder (relative to the working directory {cwd}), and HF_HUB_OFFLINE is set"),
    (["--data.data_dir", "missing/data"], "data.data_dir 'missing/data': no such folder (relative to the working directory {cwd})"),
    (["--trainer.max_epochs", "-3"], "trainer.max_epochs must be >= -1, got -3"),
    (["--trainer.accumulate_grad_batches", "0"], "trainer.accumulate_grad_batches must be >= 1, got 0"),
    (["--ckpt_path", "nope.ckpt"], "--ckpt_path 'nope.ckpt': no such file"),
    (["--trainer.max_epochs", "x"], "trainer.max_epochs must be a number >= -1, got 'x'"),
    (None, "give a run config, e.g. medkor fit --config configs/demo.yaml"),
    (["--config", "nosuch.yaml"], "--config 'nosuch.yaml': no such file (relative to the working directory {cwd})"),
])
def test_fit_errors_are_one_line_before_anything_loads(override, expected, repo_root, tmp_path):
    config = _demo_config(repo_root, tmp_path)
    args = ["fit"] if override is None else ["fit", "--config", str(config), *override]
    result = run_medkor(args, repo_root, timeout=60)
    lines = (result.stdout + result.stderr).strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, lines
    assert lines[0].startswith("medkor fit: error: ") and expected.format(cwd=repo_root) in lines[0], lines[0]
    assert not (tmp_path / "logs").exists()


def test_demo_config_from_another_folder_says_where_its_paths_are(repo_root, tmp_path):
    result = run_medkor(["fit", "--config", str(repo_root / "configs" / "demo.yaml")], tmp_path, timeout=60)
    assert result.returncode == 2
    assert f"(relative to the working directory {tmp_path}); it exists under {repo_root}" in result.stderr


def test_errors_found_by_the_full_parse_and_in_the_data_are_one_line_and_leave_no_run_folder(repo_root, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    good = json.dumps({"text": "당뇨병은 혈당이 높은 상태이다. " * 20}, ensure_ascii=False)
    (data / "train.jsonl").write_text(f"{good}\n{{\"text\": \"끝나지 않은 줄\"\n", encoding="utf-8")
    config = _demo_config(repo_root, tmp_path, data_dir=str(data))
    for args, code, expected in [
        (["--model.nosuch", "3"], 2, "unrecognized arguments: --model.nosuch 3"),
        (["--model.learning_rate", "-1"], 2, "model.learning_rate must be > 0, got -1.0"),
        ([], 1, f"{data / 'train.jsonl'}:2"),
    ]:
        result = run_medkor(["fit", "--config", str(config), *args], repo_root, timeout=300)
        errors = [line for line in result.stderr.splitlines() if line.startswith("medkor ") or "rror" in line[:40]]
        assert result.returncode == code and "Traceback" not in result.stderr, result.stderr[-3000:]
        assert len(errors) == 1 and errors[0].startswith("medkor fit: error: ") and expected in errors[0], errors
    assert not list((tmp_path / "logs").rglob("version_*")), "a failed start leaves no run folder"
    debug = run_medkor(["fit", "--config", str(config), "--debug"], repo_root, timeout=300)
    assert debug.returncode != 0 and "Traceback" in debug.stderr


# ---------------------------------------------------------------- options are spelled out, values named


def test_fit_refuses_an_abbreviated_option_and_names_the_one_meant(repo_root, tmp_path):
    config = _demo_config(repo_root, tmp_path)
    result = run_medkor(["fit", "--config", str(config), "--model.learn", "0.5"], repo_root, timeout=120)
    lines = (result.stdout + result.stderr).strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, lines
    assert lines[0].startswith("medkor fit: error: unrecognized arguments: --model.learn 0.5; options are never "
                               "abbreviated: did you mean --model.learning_rate?"), lines[0]
    assert not (tmp_path / "logs").exists()


def test_commands_reading_run_configs_refuse_abbreviations_too(repo_root):
    from medkor.checks import ConfigError
    from medkor.lightning_cli import parse_run_config

    demo = str(repo_root / "configs" / "demo.yaml")
    assert parse_run_config(["--config", demo, "--model.learning_rate", "0.5"]).model.learning_rate == 0.5
    for option in ("--model.learn", "--trainer.max_epo", "--data.batch"):
        with pytest.raises(ConfigError, match=f"unrecognized arguments: {re.escape(option)} 3; options are never "
                                              "abbreviated: did you mean"):
            parse_run_config(["--config", demo, option, "3"])


@pytest.mark.parametrize("args, meant", [
    (["cache", "rm", "{tmp}", "--al"], "--al"),                    # would remove every cache
    (["cache", "ls", "{tmp}", "--js"], "--js"),
    (["plot", "{tmp}", "--ou", "x.png"], "--ou x.png"),
    (["extend-vocab", "--base", "b", "--corpus", "c", "--num_new_tokens", "1", "--out", "{tmp}/o", "--overw"],
     "--overw"),
    # export hands the options it does not know to the run config's parser, which refuses it
    (["export", "--config", "{repo}/configs/demo.yaml", "--out", "{tmp}/x", "--overw"], "--overw"),
    (["plan", "--config", "{repo}/configs/demo.yaml", "--mark"], "--mark"),  # not --markdown
])
def test_plain_commands_refuse_abbreviated_options(args, meant, repo_root, tmp_path, capsys):
    args = [a.replace("{tmp}", str(tmp_path)).replace("{repo}", str(repo_root)) for a in args]
    before = sorted(tmp_path.iterdir())
    with pytest.raises(SystemExit) as caught:
        main(args)
    err = capsys.readouterr().err
    assert caught.value.code != 0 and f"unrecognized arguments: {meant}" in err, err
    assert caught.value.code == 2 or args[0] == "export", err  # (export reports config errors with 1)
    assert sorted(tmp_path.iterdir()) == before


def test_precision_values_are_lightnings():
    import typing

    from lightning.fabric.connector import _PRECISION_INPUT

    from medkor.checks import PRECISIONS

    lightning_values = {str(v) for t in typing.get_args(_PRECISION_INPUT) for v in typing.get_args(t)}
    assert set(PRECISIONS) == lightning_values and len(PRECISIONS) == len(lightning_values)


def test_a_wrong_precision_lists_the_values_before_anything_loads(repo_root, tmp_path):
    config = _demo_config(repo_root, tmp_path)
    result = run_medkor(["fit", "--config", str(config), "--trainer.precision", "bf17"], repo_root, timeout=60)
    lines = (result.stdout + result.stderr).strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, lines
    assert lines[0].startswith("medkor fit: error: trainer.precision 'bf17' is not a precision: use one of "), lines[0]
    assert all(value in lines[0] for value in ("32-true", "bf16-mixed", "16-mixed", "64-true", "bf16")), lines[0]
    assert not (tmp_path / "logs").exists()


def test_the_full_parse_lists_a_fixed_sets_values_too(repo_root):
    from medkor.checks import ConfigError
    from medkor.lightning_cli import parse_run_config

    demo = str(repo_root / "configs" / "demo.yaml")
    with pytest.raises(ConfigError) as caught:
        parse_run_config(["--config", demo, "--trainer.precision", "bf17"])
    message = str(caught.value)
    assert message.startswith("--trainer.precision: expected one of 64, 32, 16, transformer-engine"), message
    assert message.endswith("bf16 or null, got 'bf17'") and "bf16-mixed" in message and "\n" not in message


@pytest.mark.parametrize("callback, expected", [
    ({"class_path": "builtins.print"},
     "--trainer.callbacks: builtins.print is not a Callback; a class_path there must name a subclass of Callback"),
    ({"class_path": "os.system", "init_args": {"command": "echo ran"}}, "--trainer.callbacks: os.system is not a Callback"),
    ({"class_path": "medkor.callbacks.KorMedMCQAEval", "init_args": {"sorce": "x"}},
     "--trainer.callbacks: medkor.callbacks.KorMedMCQAEval: Option 'sorce' is not accepted"),
    ({"class_path": "nosuch_module.Callback"}, "--trainer.callbacks: nosuch_module.Callback: No module named 'nosuch_module'"),
], ids=["function", "os.system", "bad-argument", "no-module"])
def test_a_refused_callback_is_one_line_naming_it(callback, expected, repo_root, tmp_path):
    from medkor.checks import ConfigError
    from medkor.lightning_cli import parse_run_config

    config = yaml.safe_load((repo_root / "configs" / "demo.yaml").read_text(encoding="utf-8"))
    config["trainer"]["callbacks"].append(callback)
    path = tmp_path / "hostile.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        parse_run_config(["--config", str(path)])
    message = str(caught.value)
    assert message.startswith(expected), message
    assert "Namespace(" not in message and "ModelCheckpoint" not in message and len(message) < 300, message


def test_fit_refuses_a_run_that_trains_nothing_before_a_run_folder_is_made(repo_root, tmp_path):
    config = _demo_config(repo_root, tmp_path)
    for option, value in [("--trainer.max_epochs", "0"), ("--trainer.max_steps", "0"),
                          ("--trainer.limit_train_batches", "0")]:
        result = run_medkor(["fit", "--config", str(config), option, value], repo_root, timeout=60)
        lines = (result.stdout + result.stderr).strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1, lines
        assert lines[0].startswith(f"medkor fit: error: {option[2:]} 0 trains nothing: use "), lines[0]
    assert not (tmp_path / "logs").exists()


def test_the_full_parse_refuses_max_epochs_0_too(repo_root, tmp_path):
    # the quick check is skipped (e.g. options it does not follow); Lightning's parse refuses before any folder
    from medkor.checks import ConfigError
    from medkor.lightning_cli import run_cli

    config = _demo_config(repo_root, tmp_path)
    with pytest.raises(ConfigError, match=r"^trainer.max_epochs 0 trains nothing"):
        run_cli(["fit", "--config", str(config), "--trainer.max_epochs", "0"])
    assert not (tmp_path / "logs").exists()


def test_a_checkpoint_cannot_switch_remote_code_on(repo_root, tmp_path):
    # a checkpoint's hyperparameters become model options of the run; trust_remote_code is not one they may set
    import torch

    from medkor.data import MedKorDataModule
    from medkor.lightning_cli import MedKorCLI
    from medkor.model import MedGemmaModule

    class Parsed(Exception):
        pass

    class ParseOnly(MedKorCLI):
        def before_instantiate_classes(self) -> None:
            raise Parsed(self.config[self.subcommand].model)

    ckpt = tmp_path / "from-elsewhere.ckpt"
    torch.save({"hyper_parameters": {"trust_remote_code": True, "learning_rate": 0.0123}}, ckpt)
    demo = str(repo_root / "configs" / "demo.yaml")
    for extra, remote in [([], False), (["--model.trust_remote_code", "true"], True)]:
        with pytest.raises(Parsed) as parsed:
            ParseOnly(MedGemmaModule, MedKorDataModule, args=["validate", "--config", demo, "--ckpt_path", str(ckpt),
                                                              *extra], save_config_callback=None)
        model = parsed.value.args[0]
        model = model.init_args if "init_args" in model else model
        assert model.learning_rate == 0.0123  # the checkpoint's other hyperparameters still apply
        assert model.trust_remote_code is remote  # only the config or the command line decides


def test_security_page_is_linked_and_its_example_does_run_a_function(repo_root, tmp_path):
    # what docs/security.md warns about is true: the YAML it shows builds a callback that calls builtins.print
    from lightning.pytorch.callbacks import LambdaCallback

    from medkor.data import MedKorDataModule
    from medkor.lightning_cli import MedKorCLI
    from medkor.model import MedGemmaModule

    assert "docs/security.md" in (repo_root / "README.md").read_text(encoding="utf-8")
    page = (repo_root / "docs" / "security.md").read_text(encoding="utf-8")
    example = yaml.safe_load(re.search(r"```yaml\n(.*?)```", page, re.S).group(1))
    config = yaml.safe_load(_demo_config(repo_root, tmp_path).read_text(encoding="utf-8"))
    config["trainer"]["callbacks"] += example["trainer"]["callbacks"]
    path = tmp_path / "example.yaml"
    path.write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")

    class Built(Exception):
        pass

    class BuildOnly(MedKorCLI):
        def before_fit(self) -> None:
            raise Built(self.trainer)

    with pytest.raises(Built) as built:
        BuildOnly(MedGemmaModule, MedKorDataModule, args=["fit", "--config", str(path)], save_config_callback=None)
    (callback,) = [cb for cb in built.value.args[0].callbacks if isinstance(cb, LambdaCallback)]
    assert callback.on_fit_start is print
    assert not (tmp_path / "logs").exists()
