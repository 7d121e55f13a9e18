"""`medkor.model.plan*`: meta-device counts against independent arithmetic, memory terms against saved tensors."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer, Gemma3ForCausalLM, Gemma3TextConfig

from medkor.model.build import BASE_VOCAB_KEY, build_model
from medkor.model.plan import plan_model
from medkor.model.plan_memory import GB, RunSetup, activation_bytes_per_token, plan_memory
from medkor.model.policies import count_parameters

import model_builders as builders

# google/medgemma-4b-it's config.json (the reference's shapes), already grown to the extended
# tokenizer as an exported stage would be: 272,843 tokens, 272,896 rows, base 262,145 recorded.
H, LAYERS, HEADS, KV, HEAD_DIM, INTER = 2560, 34, 8, 4, 256, 10240
N_BASE, N_TOKENS, ROWS = 262_145, 272_843, 272_896
V_H, V_LAYERS, V_INTER, PATCH, IMAGE = 1152, 27, 4304, 14, 896
MEDGEMMA_GROWN = {
    "architectures": ["Gemma3ForConditionalGeneration"], "model_type": "gemma3", "torch_dtype": "bfloat16",
    "boi_token_index": 255999, "eoi_token_index": 256000, "eos_token_id": [1, 106], "image_token_index": 262144,
    "mm_tokens_per_image": 256,
    "text_config": {
        "model_type": "gemma3_text", "vocab_size": ROWS, BASE_VOCAB_KEY: N_BASE, "hidden_size": H,
        "intermediate_size": INTER, "num_hidden_layers": LAYERS, "num_attention_heads": HEADS,
        "num_key_value_heads": KV, "head_dim": HEAD_DIM, "max_position_embeddings": 131072,
        "query_pre_attn_scalar": 256, "sliding_window": 1024, "sliding_window_pattern": 6,
        "rope_scaling": {"factor": 8.0, "rope_type": "linear"}, "rope_theta": 1000000.0,
        "rope_local_base_freq": 10000.0, "final_logit_softcapping": None, "attn_logit_softcapping": None,
    },
    "vision_config": {
        "model_type": "siglip_vision_model", "hidden_size": V_H, "image_size": IMAGE, "intermediate_size": V_INTER,
        "num_attention_heads": 16, "num_hidden_layers": V_LAYERS, "patch_size": PATCH, "vision_use_head": False,
    },
}
R = 64


def word_level_tokenizer(folder: Path, n_tokens: int) -> Path:
    """A WordLevel tokenizer of `n_tokens` entries, written as JSON (seconds faster than through transformers)."""
    vocab = {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3, **{f"w{i}": i for i in range(4, n_tokens)}}
    spec = {"version": "1.0", "truncation": None, "padding": None, "added_tokens": [], "normalizer": None,
            "pre_tokenizer": {"type": "WhitespaceSplit"}, "post_processor": None, "decoder": None,
            "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<unk>"}}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tokenizer.json").write_text(json.dumps(spec), encoding="utf-8")
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "PreTrainedTokenizerFast", "pad_token": "<pad>", "eos_token": "<eos>",
         "bos_token": "<bos>", "unk_token": "<unk>"}), encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def medgemma(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("medgemma-4b-grown")
    (folder / "config.json").write_text(json.dumps(MEDGEMMA_GROWN), encoding="utf-8")
    return word_level_tokenizer(folder, N_TOKENS)


# ---- independent arithmetic of MedGemma-4B's parameters -------------------------------------
Q, K = HEADS * HEAD_DIM, KV * HEAD_DIM
TEXT_LAYER = H * Q + 2 * H * K + Q * H + 3 * H * INTER + 2 * HEAD_DIM + 4 * H  # q,k,v,o, MLP, q/k norms, 4 norms
TEXT = ROWS * H + LAYERS * TEXT_LAYER + H  # embedding (tied head), layers, final norm
VISION_LAYER = 4 * (V_H * V_H + V_H) + 2 * 2 * V_H + (V_H * V_INTER + V_INTER) + (V_INTER * V_H + V_H)
VISION = (3 * PATCH * PATCH * V_H + V_H) + (IMAGE // PATCH) ** 2 * V_H + V_LAYERS * VISION_LAYER + 2 * V_H
PROJECTOR = V_H * H + V_H
LORA_LAYER = R * ((H + Q) + 2 * (H + K) + (Q + H) + 2 * (H + INTER) + (INTER + H))
LORA = LAYERS * LORA_LAYER


def test_medgemma_4b_counts_match_arithmetic(medgemma):
    # the published whole-model size at the original 262,208 rows
    assert TEXT - ROWS * H + 262_208 * H + VISION + PROJECTOR == 4_300_079_472
    facts = plan_model(str(medgemma), trainable="embeddings+lora", lora={"r": R}, torch_dtype="bfloat16")
    assert facts.total_params == TEXT + VISION + PROJECTOR + LORA == 4_446_650_736
    assert facts.trainable_params == ROWS * H + LORA == 817_823_744
    assert facts.parts == {"vision_tower": VISION, "multi_modal_projector": PROJECTOR, "embedding": ROWS * H,
                           "untied_head": 0, "lora": LORA, "language_model_other": TEXT - ROWS * H}
    assert facts.embedding.rows_after == ROWS and facts.embedding.n_tokenizer == N_TOKENS
    assert facts.lora_modules == {name: LAYERS for name in
                                  ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")}
    assert facts.lora_layer_params == LORA_LAYER and facts.layer_params == TEXT_LAYER
    assert facts.head_tied and facts.multimodal
    # bytes: float32 trainable over bfloat16 frozen weights
    assert facts.weight_bytes == 4 * facts.trainable_params + 2 * (facts.total_params - facts.trainable_params)


@pytest.mark.parametrize("policy, trainable", [("lora", LORA), ("full", TEXT), ("new_embeddings", ROWS * H)])
def test_medgemma_4b_other_policies(medgemma, policy, trainable):
    facts = plan_model(str(medgemma), trainable=policy, lora={"r": R}, torch_dtype="bfloat16")
    assert facts.trainable_params == trainable
    assert facts.total_params == TEXT + VISION + PROJECTOR + (LORA if policy == "lora" else 0)


def test_medgemma_4b_memory_against_an_independent_estimate(medgemma):
    facts = plan_model(str(medgemma), trainable="embeddings+lora", lora={"r": R}, torch_dtype="bfloat16",
                       fsdp_classes=["transformers.models.gemma3.modeling_gemma3.Gemma3DecoderLayer"])
    trainable, total = ROWS * H + LORA, TEXT + VISION + PROJECTOR + LORA
    setup = RunSetup(device="cuda", micro_batch=2, seq_len=2048, gradient_checkpointing=True, accumulate=16,
                     eval_batch=16, eval_tokens=512, device_memory=48 * GB)
    plan = plan_memory(facts, setup)
    assert plan.weights == 2 * (total - trainable) + 4 * trainable
    assert plan.gradients == 4 * trainable and plan.optimizer_states == 8 * trainable
    # the loss's fixed part: the bf16 head copy and one float32 + bf16 chunk of 512 x 272,896 logits
    assert plan.loss_step > 2 * ROWS * H + 6 * 512 * ROWS
    # with accumulation: the earlier gradients, a new and a second head-sized gradient beside the activations
    assert plan.moments["loss"] == (plan.weights + plan.optimizer_states + plan.runtime + plan.gradients
                                    + 2 * 4 * ROWS * H + plan.activations + plan.loss_step)
    assert plan.fits and 25 * GB < plan.peak < 40 * GB  # the reference set-up fits one 48 GB card
    assert facts.fsdp.count == LAYERS and facts.fsdp.largest_params == TEXT_LAYER + LORA_LAYER
    sharded = plan_memory(facts, replace(setup, strategy="fsdp", devices=8))
    assert sharded.optimizer_states == 8 * trainable // 8 and sharded.peak < plan.peak
    # `full` without checkpointing on one 48 GB card does not fit; sharded over 8 GPUs, checkpointed, it does
    full = plan_model(str(medgemma), trainable="full", torch_dtype="bfloat16")
    no_ckpt = replace(setup, gradient_checkpointing=False)
    assert not plan_memory(full, no_ckpt).fits
    assert plan_memory(full, replace(setup, strategy="fsdp", devices=8)).fits
    # on a 24 GB card embeddings+lora does not fit; adapters alone do
    small = replace(setup, device_memory=24 * GB)
    lora = plan_model(str(medgemma), trainable="lora", lora={"r": R}, torch_dtype="bfloat16")
    assert not plan_memory(facts, small).fits and plan_memory(lora, small).fits
    recompute = plan_memory(facts, replace(small, loss_impl="torch_recompute"))
    assert plan_memory(facts, small).peak - recompute.peak == 4 * ROWS * H


# ---- activations: the per-token formula against the tensors autograd really keeps ----------
def _small_model(folder: Path, tokenizer: Path, layers: int) -> Path:
    tok = AutoTokenizer.from_pretrained(tokenizer)
    config = Gemma3TextConfig(vocab_size=builders.padded_rows(len(tok)), hidden_size=320, intermediate_size=1280,
                              num_hidden_layers=layers, num_attention_heads=8, num_key_value_heads=4, head_dim=32,
                              sliding_window=1024, max_position_embeddings=4096)
    torch.manual_seed(0)
    Gemma3ForCausalLM(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def _saved_bytes(model: torch.nn.Module, tokens: int) -> int:
    """Bytes of the distinct tensors autograd keeps for backward (parameters excluded), under bf16 autocast."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    kept: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            kept[storage.data_ptr()] = storage.nbytes()
        return t

    ids = torch.randint(4, 400, (1, tokens), generator=torch.Generator().manual_seed(0))
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            inner.model(input_ids=ids, use_cache=False)
    return sum(kept.values())


@pytest.fixture(scope="module")
def small_models(assets, tmp_path_factory):
    root = tmp_path_factory.mktemp("plan-small")
    return {n: _small_model(root / f"layers-{n}", assets["base_tok"], n) for n in (1, 2)}


@pytest.mark.parametrize("policy", ["embeddings", "embeddings+lora", "lora", "full"])
def test_activation_bytes_match_saved_tensors(small_models, policy):
    setup = RunSetup(device="cpu", compute_bytes=2)
    facts = plan_model(str(small_models[1]), trainable=policy, torch_dtype="bfloat16")
    per_token, fixed = activation_bytes_per_token(facts, setup)
    measured = {}
    for layers, folder in small_models.items():
        model = build_model(str(folder), trainable=policy, torch_dtype="bfloat16").model
        model.train()
        measured[layers] = {t: _saved_bytes(model, t) for t in (64, 128)}
    one_layer = {t: measured[2][t] - measured[1][t] for t in (64, 128)}  # what a decoder layer adds
    slope = (one_layer[128] - one_layer[64]) / 64
    assert slope == pytest.approx(per_token, rel=0.01)
    assert one_layer[64] - 64 * slope == pytest.approx(fixed, rel=0.01, abs=64 * 64)


def test_demo_plan_counts_equal_the_built_model():
    demo = "medkor/assets/demo"
    built = build_model(f"{demo}/tiny-gemma3", f"{demo}/tokenizer-extended", trainable="embeddings+lora")
    facts = plan_model(f"{demo}/tiny-gemma3", f"{demo}/tokenizer-extended", trainable="embeddings+lora")
    assert (facts.trainable_params, facts.total_params) == count_parameters(built.model)
    assert (facts.embedding.rows_before, facts.embedding.rows_after) == (built.plan.rows_before, built.plan.rows_after)
    assert sum(facts.lora_modules.values()) == sum(1 for n, _ in built.model.named_modules() if n.endswith("lora_A"))


def test_replaced_pipeline_counts_are_reproduced(medgemma):
    from medkor.model.plan_markdown import replaced_pipeline_counts
    from medkor.model.policies import LoraOptions

    ref = replaced_pipeline_counts(str(medgemma), N_TOKENS, LoraOptions(r=R))
    vision_qkv = V_LAYERS * 3 * R * (V_H + V_H)
    text_lora = LAYERS * LORA_LAYER
    assert ref["copies"] == 2 * N_TOKENS * H == 1_396_956_160  # untied trainable copies of embedding and head
    assert ref["lora_vision"] == vision_qkv == 11_943_936
    assert ref["trainable"] == ref["copies"] + text_lora + vision_qkv == 1_528_110_080
    assert ref["total"] == (TEXT - ROWS * H + N_TOKENS * H) + VISION + PROJECTOR + ref["trainable"] == 5_855_415_152


def test_growth_at_medgemma_size_through_the_real_checks(tmp_path):
    # the checkpoint as published (262,208 rows, 262,145 tokens) and a 272,843-token extension of its tokenizer
    config = json.loads(json.dumps(MEDGEMMA_GROWN))
    config["text_config"]["vocab_size"] = 262_208
    del config["text_config"][BASE_VOCAB_KEY]
    (tmp_path / "config.json").write_text(json.dumps(config), encoding="utf-8")
    word_level_tokenizer(tmp_path, N_BASE)
    word_level_tokenizer(tmp_path / "extended", N_TOKENS)
    facts = plan_model(str(tmp_path), str(tmp_path / "extended"), trainable="new_embeddings", torch_dtype="bfloat16")
    e = facts.embedding
    assert (e.n_base, e.n_tokenizer, e.rows_before, e.rows_after) == (N_BASE, N_TOKENS, 262_208, ROWS)
    assert facts.trainable_params == ROWS * H and facts.total_params == TEXT + VISION + PROJECTOR


def test_suggestion_figures_never_round_onto_the_device():
    from medkor.model.plan_report import gb_beside

    limit = 24 * GB
    assert gb_beside(limit + 1_000_000, limit) == "24,001.000 MB"  # "24.00 GB" would read as equal
    assert gb_beside(limit, limit) == "24.00 GB" and gb_beside(30 * GB, limit) == "30.00 GB"
