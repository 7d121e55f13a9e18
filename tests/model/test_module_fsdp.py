"""MedGemmaModule under Lightning's FSDPStrategy: two CPU processes over gloo (see fsdp_worker.py).

This is the GPU code path minus CUDA, NCCL and bf16 mixed precision: the model is built
once per rank in `configure_model`, FSDP wraps and checkpoints each decoder layer, the
optimizer groups are the ones read before wrapping, norm clipping goes through the root
FSDP module, and a sharded `last.ckpt` written every N steps resumes exactly.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from medkor.model import MedGemmaModule

WORKER = Path(__file__).with_name("fsdp_worker.py")
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def report(assets, tmp_path_factory):
    out = tmp_path_factory.mktemp("fsdp")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    env.pop("LOCAL_RANK", None)
    done = subprocess.run([sys.executable, str(WORKER), str(assets["text"]), str(assets["ext_tok"]), str(out)],
                          cwd=out, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]
    return json.loads((out / "report.json").read_text(encoding="utf-8"))


def test_fsdp_wraps_and_checkpoints_every_decoder_layer_and_builds_once(report, assets):
    layers = json.loads((Path(assets["text"]) / "config.json").read_text())["num_hidden_layers"]
    for run in report.values():
        seen = run["seen"]
        assert seen["wrapped"] == "FullyShardedDataParallel"
        assert seen["fsdp_units"] == layers + 1 and seen["checkpointed_layers"] == layers
        assert seen["layer_weight_ndim"] == 1  # really sharded: parameters are flat 1-D shards
        assert run["builds"] == 1


def test_optimizer_groups_are_read_before_wrapping(report, assets):
    module = MedGemmaModule(str(assets["text"]), str(assets["ext_tok"]), trainable="full", learning_rate=1e-2,
                            weight_decay=0.1, embedding_learning_rate=5e-3)
    module.configure_model()
    expected = [[g["name"], len(g["params"]), g["weight_decay"]] for g in module._param_groups]
    assert [name for name, *_ in expected] == ["decay", "no_decay", "embeddings"]
    for run in report.values():
        assert run["seen"]["groups"] == expected
        # grouping by shape after wrapping would have lost weight decay on every matrix
        assert "decay" not in run["seen"]["groups_read_after_wrapping"]


def test_norm_clipping_covers_all_shards(report):
    for run in report.values():
        clip = run["gradient_clip_val"]
        assert run["seen"]["grad_norm_before_clip"] > clip
        assert run["clipped_norms"] and all(n <= clip * (1 + 1e-4) for n in run["clipped_norms"])


def test_sharded_step_checkpoint_resumes_exactly(report):
    straight, first, resumed = report["straight"], report["first"], report["resumed"]
    assert first["last_is_sharded_folder"] and first["last"].endswith("last.ckpt")
    assert first["global_step"] == 4 and resumed["global_step"] == straight["global_step"] == 6
    assert sorted(resumed["losses"]) == ["5", "6"]
    for step in ("5", "6"):
        assert resumed["losses"][step] == pytest.approx(straight["losses"][step], rel=1e-6)


def test_model_is_callable_outside_the_steps_only_unsharded(report):
    seen = report["straight"]["seen"]
    assert "2-D" in seen["direct_call"]  # what calling pl_module.model directly under FSDP does
    assert seen["unsharded_logits"][:2] == [1, 1]


def test_kormedmcqa_baseline_runs_on_the_sharded_model(report):
    baseline = report["straight"]["kormedmcqa_baseline"]
    assert baseline is not None and baseline["step"] == 0
    totals = {subset: v["total"] for subset, v in baseline["subsets"].items()}
    assert totals == {"doctor": 2, "nurse": 2, "pharm": 2, "dentist": 2}  # every rank's share counted once
    assert baseline.get("nonfinite", 0) == 0 and 0.0 <= baseline["acc"] <= 1.0
