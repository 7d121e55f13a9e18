"""Which parameters train: the `trainable` policies and their bookkeeping.

Policies (the vision tower and projector of a multimodal model never train):
- `new_embeddings`: only the embedding rows from the checkpoint tokenizer's length
  on; old rows get a zero gradient (masked in a hook) and no weight decay, so AdamW
  leaves them bit-identical.
- `embeddings`: the whole input embedding, and the output head when untied.
- `embeddings+lora`: the whole embedding (and untied head) plus LoRA adapters.
- `lora`: LoRA adapters only.
- `full`: every language-model parameter.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

import torch
from torch import nn

from medkor.model.loading import VISION_MODULES

Trainable = Literal["new_embeddings", "embeddings", "embeddings+lora", "lora", "full"]
POLICIES = ("new_embeddings", "embeddings", "embeddings+lora", "lora", "full")


@dataclass
class LoraOptions:
    """LoRA adapters on the language model's projections (never on the vision tower).

    Args:
        r: adapter rank.
        alpha: scaling numerator (the update is scaled by alpha / r).
        dropout: dropout on the adapter input.
        target_modules: names of the linear layers that get adapters.
    """

    r: int = 64
    alpha: int = 128
    dropout: float = 0.05
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )


@dataclass
class PolicyResult:
    """What a policy did.

    Attributes:
        model: the model to train (a peft wrapper for LoRA policies).
        embedding_params: the trainable embedding/output-head parameters (their own LR group).
        decay_exempt: parameters that must not be weight-decayed (masked embedding rows).
        hooks: gradient hooks to keep alive.
    """

    model: nn.Module
    embedding_params: list[nn.Parameter]
    decay_exempt: list[nn.Parameter]
    hooks: list = field(default_factory=list)


def embedding_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The input embedding and, when untied, the output head (deduplicated)."""
    params = [model.get_input_embeddings().weight]
    head = model.get_output_embeddings()
    if head is not None and head.weight is not params[0]:
        params.append(head.weight)
    return params


def _is_vision(name: str) -> bool:
    return any(part in VISION_MODULES for part in name.split("."))


def old_rows_grad_mask(param: nn.Parameter, n_old: int) -> torch.utils.hooks.RemovableHandle:
    """Zero the gradient of rows [0, n_old) of `param` whenever one is computed."""

    def hook(grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        grad[:n_old] = 0
        return grad

    return param.register_hook(hook)


def add_lora(model: nn.Module, options: LoraOptions) -> nn.Module:
    """Wrap `model` with peft LoRA adapters on the language model only."""
    from peft import LoraConfig, get_peft_model

    names = [name for name, _ in model.named_modules()]
    has_vision = any(_is_vision(name) for name in names)
    config = LoraConfig(
        r=options.r,
        lora_alpha=options.alpha,
        lora_dropout=options.dropout,
        target_modules=list(options.target_modules),
        # SigLIP also has q_proj/k_proj/...; adapters belong to the language model only.
        exclude_modules=r".*(" + "|".join(VISION_MODULES) + r").*" if has_vision else None,
    )
    return get_peft_model(model, config)


LORA_POLICIES = ("lora", "embeddings+lora")


def policy_parameters(model: nn.Module, policy: str) -> list[nn.Parameter]:
    """The parameters `policy` trains in `model` (peft-wrapped already when the policy uses LoRA).

    `full` takes every language-model parameter, LoRA adapters included when the
    model has them (a staged schedule may add adapters for a later phase).
    """
    if policy not in POLICIES:
        raise ValueError(f"trainable {policy!r} is not one of {', '.join(POLICIES)}")
    if policy == "full":
        return [p for name, p in model.named_parameters() if not _is_vision(name)]
    params = [] if policy == "lora" else embedding_parameters(model)
    if policy in LORA_POLICIES:
        params += [p for name, p in model.named_parameters() if "lora_" in name]
    return params


def check_new_rows(model: nn.Module, n_old_rows: int) -> None:
    """Raise when `new_embeddings` would have no row to train."""
    rows = embedding_parameters(model)[0].shape[0]
    if n_old_rows >= rows:
        raise ValueError(
            "trainable: new_embeddings needs new rows, but the tokenizer adds no token to the checkpoint "
            f"({rows} rows, all from the checkpoint); use an extended tokenizer_path or another policy"
        )


def apply_policy(
    model: nn.Module, policy: str, *, n_old_rows: int, lora: Optional[LoraOptions] = None
) -> PolicyResult:
    """Set `requires_grad` per `policy`; wrap with LoRA where asked.

    Args:
        model: a Hugging Face causal LM (text-only or multimodal).
        policy: one of POLICIES.
        n_old_rows: embedding rows that `new_embeddings` keeps frozen.
        lora: adapter options for the LoRA policies.
    """
    if policy not in POLICIES:
        raise ValueError(f"trainable {policy!r} is not one of {', '.join(POLICIES)}")
    if policy == "new_embeddings":
        check_new_rows(model, n_old_rows)
    embeddings = embedding_parameters(model)
    for param in model.parameters():
        param.requires_grad_(False)
    result = PolicyResult(model, [], [])
    if policy in LORA_POLICIES:
        result.model = add_lora(model, lora or LoraOptions())  # freezes all but the adapters
    for param in policy_parameters(result.model, policy):
        param.requires_grad_(True)
    if policy != "lora":
        result.embedding_params = embeddings
    if policy == "new_embeddings":
        result.hooks = [old_rows_grad_mask(param, n_old_rows) for param in embeddings]
        result.decay_exempt = list(embeddings)
    return result


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; tied weights counted once."""
    trainable = total = 0
    for param in model.parameters():
        total += param.numel()
        if param.requires_grad:
            trainable += param.numel()
    return trainable, total


def trainable_summary(model: nn.Module) -> str:
    """`Trainable params: 1,528,110,080 (26.10%)`."""
    trainable, total = count_parameters(model)
    share = 100.0 * trainable / total if total else 0.0
    return f"Trainable params: {trainable:,} ({share:.2f}%)"
