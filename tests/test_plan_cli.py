"""`medkor plan`: the command on the demo config (text, JSON, strategies, warnings, errors)."""

from __future__ import annotations

import json

import pytest

from medkor.commands.plan import main
from medkor.model.build import build_model
from medkor.model.policies import count_parameters

DEMO = "configs/demo.yaml"


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    # the command sets HF_HUB_OFFLINE for its process; here it must not outlive each test
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def _json(capsys, *args: str) -> dict:
    assert main(["--config", DEMO, "--json", *args]) == 0
    return json.loads(capsys.readouterr().out)


def test_text_names_growth_counts_and_terms(capsys):
    assert main(["--config", DEMO]) == 0
    out = capsys.readouterr().out
    assert "embedding    1,664 -> 2,048 rows (checkpoint tokenizer 1,600 tokens, training tokenizer 2,000" in out
    assert "parameters   1,247,616 total, 1,247,616 trainable (100.00 %)" in out
    for term in ("weights", "gradients", "optimizer states", "activations", "loss step", "evaluation", "peak"):
        assert f"  {term} " in out
    assert "micro-batch 8 x 256 tokens" in out and "KorMedMCQA, 16 x 512 tokens" in out


def test_json_counts_equal_the_model_fit_builds(capsys):
    report = _json(capsys, "--model.trainable", "embeddings+lora", "--data.batch_size", "2")
    built = build_model("medkor/assets/demo/tiny-gemma3", "medkor/assets/demo/tokenizer-extended",
                        trainable="embeddings+lora")
    trainable, total = count_parameters(built.model)
    model, memory = report["model"], report["memory"]
    assert (model["trainable_params"], model["total_params"]) == (trainable, total)
    assert sum(model["lora_modules"].values()) == 28  # 4 layers x 7 projections
    assert report["setup"]["micro_batch"] == 2 and report["setup"]["device"] == "cpu"
    assert memory["weights"] == 4 * total and memory["optimizer_states"] == 8 * trainable
    assert memory["peak"] == max(memory["moments"].values()) and memory["fits"]
    # on CPU the runtime term is the tokenizers' host memory as the plan measured it loading them
    assert memory["runtime"] == model["host_bytes"]


def test_fsdp_strategy_units_and_devices(capsys):
    report = _json(capsys, "--config", "configs/strategies/fsdp.yaml", "--devices", "4")
    setup, fsdp = report["setup"], report["model"]["fsdp"]
    assert (setup["strategy"], setup["devices"], setup["device"]) == ("fsdp", 4, "cuda")
    assert setup["gradient_checkpointing"]  # the strategy's activation checkpointing
    assert fsdp["count"] == 4 and fsdp["classes"] == ["Gemma3DecoderLayer"]
    assert fsdp["root_params"] + fsdp["unit_params"] == report["model"]["total_params"]
    single = _json(capsys, "--trainer.accelerator", "gpu")
    assert single["memory"]["runtime"] == 2_500_000_000  # CUDA context and allocator slack
    assert report["memory"]["optimizer_states"] == single["memory"]["optimizer_states"] // 4
    ddp = _json(capsys, "--config", "configs/strategies/ddp.yaml", "--devices", "2")
    assert (ddp["setup"]["strategy"], ddp["setup"]["devices"]) == ("ddp", 2)
    assert ddp["memory"]["gradients"] == 2 * single["memory"]["gradients"]  # DDP's buckets hold a copy


def test_too_small_device_warns_and_names_changes(capsys):
    assert main(["--config", DEMO, "--device_memory", "0.01"]) == 0
    captured = capsys.readouterr()
    assert "does NOT fit" in captured.out and "add to the command" in captured.out
    assert "--model.gradient_checkpointing true" in captured.out
    assert "--data.batch_size 4 --trainer.accumulate_grad_batches 2" in captured.out
    assert "medkor plan: warning: predicted peak" in captured.err
    report = _json(capsys, "--device_memory", "0.01")
    assert not report["memory"]["fits"] and report["advice"]
    assert all(tip["peak"] < report["memory"]["peak"] for tip in report["advice"])


def test_errors_are_one_line(tmp_path, capsys):
    assert main([]) == 2
    assert "--config is required" in capsys.readouterr().err
    assert main(["--config", str(tmp_path / "missing.yaml")]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    (tmp_path / "tokenizer.json").write_text("{}")
    assert main(["--config", DEMO, "--model.model_name_or_path", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("medkor plan: error: model.model_name_or_path") and "no config.json" in err
    assert err.count("\n") == 1
    assert main(["--config", DEMO, "--model.tokenizer_path", str(tmp_path / "no-such-tokenizer")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("medkor plan: error: model.tokenizer_path") and "no such folder" in err
    assert main(["--config", DEMO, "--device_memory", "-1"]) == 2
    assert "--device_memory must be > 0" in capsys.readouterr().err


def test_markdown_has_every_policy_and_the_fit_table(capsys):
    assert main(["--config", DEMO, "--markdown"]) == 0
    out = capsys.readouterr().out
    for policy in ("new_embeddings", "embeddings", "embeddings+lora", "lora", "full"):
        assert f"| `{policy}` |" in out
    assert "## The pipeline medkor replaces" in out and "## What fits on one GPU" in out
    assert "| **total** / **trainable** |" in out
    assert "| `full` | loss | weights " in out and "+ head gradient " in out  # every moment, term by term



def test_phases_are_counted_one_by_one(capsys):
    phases = '[{"policy": "new_embeddings", "until_step": 10}, {"policy": "lora"}]'
    report = _json(capsys, "--model.trainable", phases)
    counts = {p["policy"]: p["trainable"] for p in report["model"]["phases"]}
    lora = report["model"]["parts"]["lora"]
    assert counts == {"new_embeddings": 2048 * 128, "lora": lora}
    assert report["model"]["trainable_params"] == 2048 * 128 + lora  # the optimizer holds every phase's
    assert main(["--config", DEMO, "--model.trainable", phases]) == 0
    assert "  new_embeddings until step 10: 262,144 trainable" in capsys.readouterr().out


def test_every_suggestion_is_the_plan_with_its_options(capsys):
    # the suggestion's figure is what `plan` prints once the suggested options are on the command line
    small = ["--trainer.accelerator", "gpu", "--trainer.devices", "1", "--data.batch_size", "8", "--device_memory", "0.01"]
    report = _json(capsys, *small)
    changes = [tip["change"] for tip in report["advice"]]
    fsdp = next(c for c in changes if "fsdp.yaml" in c)
    tips = [tip for tip in report["advice"] if tip["options"]]  # options the command line takes
    assert all(tip["options"] == tip["change"].split("  (")[0].split() for tip in tips)
    for tip in tips:
        again = _json(capsys, *small, *tip["options"])
        assert again["memory"]["peak"] == tip["peak"] and again["memory"]["fits"] == tip["fits"], tip["change"]
    assert fsdp.startswith("--config configs/strategies/fsdp.yaml --trainer.devices 8")
    # the extended demo tokenizer: lora alone is said to leave the new rows untrained
    lora = next(c for c in changes if c.startswith("--model.trainable lora "))
    assert "new rows would NOT train" in lora


def test_moments_list_every_term_that_adds_up(capsys):
    report = _json(capsys)
    memory = report["memory"]
    for moment, total in memory["moments"].items():
        assert sum(memory["terms"][moment].values()) == total, moment
    # the demo's tied, trainable 2,048 x 128 head: its float32 gradient in the loss and at the end of backward
    assert memory["terms"]["loss"]["head gradient"] == 2048 * 128 * 4
    assert memory["terms"]["backward"]["embedding's dense gradient"] == 2048 * 128 * 4
    assert main(["--config", DEMO]) == 0
    out = capsys.readouterr().out
    assert "head gradient 1.0 MB" in out and "    backward " in out and "    evaluation " in out


def test_fsdp_options_fit_refuses_are_said(capsys):
    args = ["--config", DEMO, "--config", "configs/strategies/fsdp.yaml", "--devices", "2"]
    assert main([*args, "--model.trainable", "new_embeddings"]) == 0
    err = capsys.readouterr().err
    assert "medkor plan: warning: medkor fit refuses this set-up at start: model.trainable: new_embeddings" in err
    report = _json(capsys, "--config", "configs/strategies/fsdp.yaml", "--devices", "2", "--model.trainable", "embeddings")
    assert report["fit_refuses"] is None
    phases = '[{"policy": "embeddings", "until_step": 10}, {"policy": "lora"}]'
    assert main([*args, "--model.trainable", phases]) == 0
    assert "fit refuses this set-up at start: model.trainable: a list of phases" in capsys.readouterr().err
    report = _json(capsys, "--config", "configs/strategies/fsdp.yaml", "--devices", "2", "--model.torch_dtype", "bfloat16")
    assert report["fit_refuses"].startswith("model.torch_dtype: bfloat16 cannot be used under FSDP")


def test_model_folder_without_tokenizer_files(tmp_path, capsys):
    import shutil

    shutil.copy("medkor/assets/demo/tiny-gemma3/config.json", tmp_path / "config.json")
    assert main(["--config", DEMO, "--model.model_name_or_path", str(tmp_path), "--model.tokenizer_path", "null"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no tokenizer files" in err and "--model.tokenizer_path" in err
    report = _json(capsys, "--model.model_name_or_path", str(tmp_path), "--model.tokenizer_path",
                   "medkor/assets/demo/tiny-gemma3")
    assert any("no tokenizer files" in note for note in report["notes"])
    assert report["model"]["embedding"]["n_base_tokens"] == 1600  # the named tokenizer, not a 5-token default


def test_strict_exits_3_when_it_does_not_fit(capsys):
    assert main(["--config", DEMO, "--device_memory", "0.01", "--strict", "--json"]) == 3
    assert main(["--config", DEMO, "--strict", "--json"]) == 0


def test_frozen_weights_in_bfloat16_and_evaluation_batch_are_suggested(capsys):
    gpu = ["--trainer.accelerator", "gpu", "--trainer.devices", "2", "--trainer.strategy", "ddp"]
    lora = _json(capsys, *gpu, "--model.trainable", "lora")
    small = [*gpu, "--model.trainable", "lora", "--device_memory", str((lora["memory"]["peak"] - 1) / 1e9)]
    report = _json(capsys, *small)
    tip = next(t for t in report["advice"] if t["options"] == ["--model.torch_dtype", "bfloat16"])
    assert tip["peak"] == _json(capsys, *small, "--model.torch_dtype", "bfloat16")["memory"]["peak"]
    if report["memory"]["peak_at"] == "evaluation":
        assert any("KorMedMCQAEval init_args.batch_size: 8" in t["change"] for t in report["advice"])
    # a peak at evaluation (a long KorMedMCQA prompt): halving the callback's batch is suggested
    full = _json(capsys, *gpu, "--eval_tokens", "4096")
    assert full["memory"]["peak_at"] == "evaluation"
    tight = _json(capsys, *gpu, "--eval_tokens", "4096", "--device_memory", str((full["memory"]["peak"] - 1) / 1e9))
    assert any(t["change"].startswith("KorMedMCQAEval init_args.batch_size: 8") and t["fits"] for t in tight["advice"])
