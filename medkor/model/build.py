"""Assemble the model to train: load, extend embeddings, apply the trainable policy."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Optional, Union

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from medkor.model.embeddings import EmbeddingPlan, extend_embeddings
from medkor.model.loading import is_multimodal, load_model, load_tokenizer
from medkor.model.policies import LoraOptions, PolicyResult, apply_policy
from medkor.model.schedule import TrainableSchedule, apply_schedule, parse_phases

log = logging.getLogger(__name__)


@dataclass
class BuiltModel:
    """The parts a training run needs.

    Attributes:
        model: the model to train (peft-wrapped for LoRA policies).
        tokenizer: the tokenizer it trains with (extended or the checkpoint's own).
        plan: which embedding rows are old, new and padding.
        policy: what trains, with the embedding parameters and gradient hooks.
        multimodal: True for a vision-language checkpoint (vision tower frozen).
        schedule: the phase switcher when `trainable` is a list of several phases.
    """

    model: nn.Module
    tokenizer: PreTrainedTokenizerBase
    plan: EmbeddingPlan
    policy: PolicyResult
    multimodal: bool
    schedule: Optional[TrainableSchedule] = None


def upcast_trainable(model: nn.Module) -> None:
    """Keep trainable parameters in float32 over half-precision frozen weights.

    AdamW on bfloat16 weights loses small updates; float32 master copies of the
    (few) trainable parameters avoid it. Run with `precision: bf16-mixed` so
    autocast handles the mixed dtypes in the matmuls.
    """
    for param in model.parameters():
        if param.requires_grad and param.dtype != torch.float32:
            param.data = param.data.float()


BASE_VOCAB_KEY = "medkor_base_vocab_size"  # tokens of the checkpoint before medkor extended it


def build_model(
    model_name_or_path: str,
    tokenizer_path: Optional[str] = None,
    *,
    new_token_init: str = "subword_mean",
    untied_output_init: str = "subword_mean",
    pad_vocab_to_multiple_of: Optional[int] = 64,
    trainable: Union[str, list] = "embeddings+lora",
    lora: Optional[LoraOptions] = None,
    gradient_checkpointing: bool = False,
    attn_implementation: str = "sdpa",
    torch_dtype: str = "float32",
    trust_remote_code: bool = False,
) -> BuiltModel:
    """Load `model_name_or_path`, grow it to `tokenizer_path`, and set what trains.

    `trainable` is a policy or a list of phases (`medkor.model.schedule`); with several
    phases every parameter of any phase requires a gradient until the first step applies one.
    """
    phases = parse_phases(trainable)
    model = load_model(
        model_name_or_path,
        torch_dtype=torch_dtype,
        attn_implementation=attn_implementation,
        trust_remote_code=trust_remote_code,
    )
    # The checkpoint's own tokenizer defines the old rows and splits new tokens into pieces.
    base = load_tokenizer(model_name_or_path, trust_remote_code)
    same = tokenizer_path is None or tokenizer_path == model_name_or_path
    tokenizer = base if same else load_tokenizer(tokenizer_path, trust_remote_code)
    plan = extend_embeddings(
        model,
        base,
        tokenizer,
        init=new_token_init,
        output_init=untied_output_init,
        pad_to_multiple_of=pad_vocab_to_multiple_of,
        base_name=model_name_or_path,
        name=tokenizer_path or model_name_or_path,
    )
    if plan.extended:
        log.info(
            "embeddings: %d -> %d rows; tokens %d-%d initialised by %s, %d padding rows by the mean",
            plan.rows_before, plan.rows_after, plan.n_base, plan.n_tokenizer - 1, new_token_init,
            plan.rows_after - plan.n_tokenizer,
        )
    if gradient_checkpointing:
        # Non-reentrant checkpointing needs no input that requires grad (frozen embeddings + LoRA).
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    text_cfg = model.config.get_text_config()
    if plan.extended:
        # Recorded in the config, so an exported extended base still knows its new rows.
        setattr(text_cfg, BASE_VOCAB_KEY, plan.n_base)
        n_old = plan.n_base
    else:
        n_old = getattr(text_cfg, BASE_VOCAB_KEY, None) or plan.rows_after
    schedule = None
    if len(phases) == 1:
        policy = apply_policy(model, phases[0].policy, n_old_rows=n_old, lora=lora)
    else:
        policy, schedule = apply_schedule(model, phases, n_old_rows=n_old, lora=lora)
    if torch_dtype in ("bfloat16", "float16"):
        upcast_trainable(policy.model)
    return BuiltModel(policy.model, tokenizer, plan, policy, is_multimodal(model), schedule)
