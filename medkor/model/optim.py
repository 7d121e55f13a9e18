"""AdamW parameter groups and the warmup + cosine learning-rate schedule."""

from __future__ import annotations

import math
from typing import Iterable, Optional

import torch
from torch import nn

# What a run without an end counts as its length (`estimated_stepping_batches` is infinite): refused.
UNBOUNDED_STEPS = 10**12


def param_groups(
    model: nn.Module,
    *,
    learning_rate: float,
    weight_decay: float,
    embedding_params: Iterable[nn.Parameter] = (),
    embedding_learning_rate: Optional[float] = None,
    decay_exempt: Iterable[nn.Parameter] = (),
) -> list[dict]:
    """Trainable parameters in up to three groups: decayed matrices, the rest, embeddings.

    Norm weights, biases and other 1-D parameters are never decayed (decaying a
    norm's scale towards 0 only fights the model). Embeddings get their own group
    and learning rate; `decay_exempt` (masked rows) gets no decay, since decoupled
    weight decay would move rows whose gradient is held at zero.
    """
    embedding_ids = {id(p) for p in embedding_params}
    exempt_ids = {id(p) for p in decay_exempt}
    decay, no_decay, embeddings = [], [], []
    seen: set[int] = set()
    for param in model.parameters():
        if not param.requires_grad or id(param) in seen:
            continue
        seen.add(id(param))
        if id(param) in embedding_ids:
            embeddings.append(param)
        elif param.ndim >= 2:
            decay.append(param)
        else:
            no_decay.append(param)
    groups = []
    if decay:
        groups.append({"name": "decay", "params": decay, "lr": learning_rate, "weight_decay": weight_decay})
    if no_decay:
        groups.append({"name": "no_decay", "params": no_decay, "lr": learning_rate, "weight_decay": 0.0})
    if embeddings:
        exempt = any(id(p) in exempt_ids for p in embeddings)
        groups.append(
            {
                "name": "embeddings",
                "params": embeddings,
                "lr": learning_rate if embedding_learning_rate is None else embedding_learning_rate,
                "weight_decay": 0.0 if exempt else weight_decay,
            }
        )
    if not groups:
        raise ValueError("no parameter requires a gradient: the trainable policy left nothing to train")
    return groups


def warmup_steps_for(total_steps: int, warmup_steps: int = 0, warmup_ratio: Optional[float] = None) -> int:
    """Warmup length: `warmup_ratio` of the run when given, else `warmup_steps`."""
    if warmup_ratio is not None:
        if not 0.0 <= warmup_ratio < 1.0:
            raise ValueError(f"warmup_ratio must be in [0, 1), got {warmup_ratio}")
        return int(round(warmup_ratio * total_steps))
    if warmup_steps < 0:
        raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
    return warmup_steps


def lr_factor(step: int, *, warmup: int, total: int, min_ratio: float) -> float:
    """Multiplier of the peak LR: linear warmup from 0, then cosine to `min_ratio`."""
    if step < warmup:
        return (step + 1) / (warmup + 1)
    decay_steps = max(1, total - warmup)
    progress = min(1.0, (step - warmup) / decay_steps)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_optimizer(
    groups: list[dict],
    *,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    fused: bool = True,
) -> torch.optim.AdamW:
    """AdamW over `groups`: the fused kernel wherever torch has one for the parameters' device (CPU and CUDA).

    The fused kernel also takes a `found_inf` tensor and then leaves weights, moments and
    step count as they were, decided on the device: `NonFiniteGuard` skips a non-finite
    step that way without the host waiting for the check. `fused=False` keeps the unfused
    kernel (a loss scaler must unscale gradients before they are clipped).
    """
    from torch.utils._foreach_utils import _get_fused_kernels_supported_devices

    params = [p for g in groups for p in g["params"]]
    supported = _get_fused_kernels_supported_devices()
    fused = fused and all(p.device.type in supported and p.is_floating_point() for p in params)
    return torch.optim.AdamW(groups, betas=betas, eps=eps, fused=fused or None)


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    *,
    total_steps: int,
    warmup: int,
    learning_rate: float,
    min_learning_rate: float,
) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-step schedule; every group follows the same shape relative to its own peak LR.

    Raises:
        ValueError: `total_steps` is `UNBOUNDED_STEPS` or more (a run with neither `max_epochs` nor
            `max_steps`: warmup and decay would stretch over it and the learning rate stay near zero),
            or `min_learning_rate` is out of range.
    """
    if total_steps >= UNBOUNDED_STEPS:
        raise ValueError(
            f"the learning-rate schedule needs the run's length, and this run has none ({total_steps:,} steps: "
            "trainer.max_epochs -1 and trainer.max_steps -1): set trainer.max_steps or trainer.max_epochs"
        )
    if min_learning_rate < 0 or (learning_rate > 0 and min_learning_rate > learning_rate):
        raise ValueError(f"min_learning_rate {min_learning_rate} must be in [0, learning_rate={learning_rate}]")
    min_ratio = min_learning_rate / learning_rate if learning_rate > 0 else 0.0

    def factor(step: int) -> float:
        return lr_factor(step, warmup=warmup, total=total_steps, min_ratio=min_ratio)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
