"""Causal-LM cross-entropy from final hidden states, never materialising all logits.

`next_token_loss` shifts the labels and keeps the positions that count (given by
the collate, so nothing is read back from the device), then runs one implementation
(`loss_impl`):
- `torch` (default): `medkor.model.fused_loss.FusedLinearCrossEntropy`, chunks of
  tokens with the gradients formed in the forward pass; any device, any dtype.
- `torch_recompute`: the same function recomputing logits in backward; one more
  matrix product, but during gradient accumulation the head gradient goes straight
  into the existing `.grad` (one head-sized buffer instead of two) where that is safe.
- `cce`: Apple's Cut Cross-Entropy (`cut-cross-entropy` package, impl
  `cce_kahan_full_c`, which keeps the gradient of rare tokens such as new Korean
  ones); CUDA tensors only. Asked for explicitly where it cannot run, it is an error.
- `auto`: `cce` where the package is installed and the tensors are on CUDA, else
  `torch`, saying once which it chose and why.
"""

from __future__ import annotations

import importlib.util
import logging
from typing import Literal, Optional

import torch
import torch.nn.functional as F

from medkor.model.fused_loss import FusedLinearCrossEntropy, compute_dtype, lse_only_loss

IGNORE_INDEX = -100
LossImpl = Literal["torch", "torch_recompute", "cce", "auto"]
CCE_IMPL = "cce_kahan_full_c"
CCE_PACKAGE = "cut_cross_entropy"

log = logging.getLogger(__name__)
_announced: set[str] = set()


def target_positions(labels: torch.Tensor) -> torch.Tensor:
    """Flat indices into (B, T - 1) of the shifted targets that count (not `IGNORE_INDEX`).

    Reads the labels back to learn how many there are (a host wait on a GPU); batches
    from `medkor.data.collate` carry these indices (`loss_positions`), computed on the host.
    """
    return (labels[:, 1:].reshape(-1) != IGNORE_INDEX).nonzero().squeeze(1)


def shift_for_next_token(
    hidden: torch.Tensor, labels: torch.Tensor, positions: Optional[torch.Tensor] = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Flattened (hidden, target) pairs: position t predicts labels[t + 1]; ignored ones dropped.

    `positions`: the flat indices of the pairs that count (`target_positions`); given,
    nothing is read back from the device (the number of pairs is its length).
    """
    if positions is None:
        positions = target_positions(labels)
    h = hidden[:, :-1].reshape(-1, hidden.shape[-1]).index_select(0, positions)
    y = labels[:, 1:].reshape(-1).index_select(0, positions)
    return h, y


def cce_installed() -> bool:
    """Whether the `cut-cross-entropy` package can be imported (checked without importing it)."""
    return importlib.util.find_spec(CCE_PACKAGE) is not None


def resolve_loss_impl(requested: str, device: torch.device) -> str:
    """The implementation that runs for `requested` on tensors of `device`: `torch`, `torch_recompute` or `cce`.

    Raises:
        ValueError: `requested` is unknown, or `cce` was asked for where it cannot run.
    """
    if requested in ("torch", "torch_recompute"):
        return requested
    problem = None
    if not cce_installed():
        problem = "the cut-cross-entropy package is not installed (pip install cut-cross-entropy)"
    elif device.type != "cuda":
        problem = f"it runs on CUDA tensors only, and these are on {device.type}"
    if requested == "cce":
        if problem:
            raise ValueError(f"model.loss_impl: cce cannot be used: {problem}; use loss_impl: torch (or auto)")
        return "cce"
    if requested == "auto":
        choice = "torch" if problem else "cce"
        if choice not in _announced:
            _announced.add(choice)
            log.info("model.loss_impl: auto uses %s", f"torch ({problem})" if problem else f"cce ({CCE_IMPL})")
        return choice
    raise ValueError(f"model.loss_impl {requested!r} is not one of torch, torch_recompute, cce, auto")


def _cce_loss(h: torch.Tensor, weight: torch.Tensor, y: torch.Tensor, softcap: Optional[float]) -> torch.Tensor:
    from cut_cross_entropy import linear_cross_entropy

    # Its kernels take one dtype for both operands: the one autocast would give the matmul
    # (the casts stay differentiable, so a float32 head still gets its gradient).
    dtype = compute_dtype(h, weight)
    return linear_cross_entropy(h.to(dtype), weight.to(dtype), y, softcap=softcap, reduction="mean", impl=CCE_IMPL)


def next_token_loss(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    chunk_size: int = 512,
    softcap: Optional[float] = None,
    impl: str = "torch",
    positions: Optional[torch.Tensor] = None,
) -> tuple[torch.Tensor, int]:
    """Mean next-token cross-entropy of `hidden @ weight.T` against unshifted `labels`.

    Args:
        hidden: final hidden states (B, T, H) before the output head.
        weight: output head (V, H), e.g. the tied input embedding.
        labels: (B, T) token ids, `-100` where no loss is taken; not shifted.
        chunk_size: tokens per chunk; peak logits memory is chunk_size x V.
        softcap: Gemma-style final logit soft-capping, if the config uses it.
        impl: `torch`, `torch_recompute`, `cce` or `auto` (see the module docstring).
        positions: flat indices into (B, T - 1) of the shifted targets that count, as the
            collate makes them (`loss_positions`); None: found from `labels` (a read of the
            device, which makes the host wait on a GPU).

    Returns:
        (mean loss, number of predicted tokens). With no labelled token the loss
        is a zero that still depends on the inputs, so backward works everywhere.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    impl = resolve_loss_impl(impl, hidden.device)
    h, y = shift_for_next_token(hidden, labels, positions)
    count = y.shape[0]  # known on the host: the length of `positions`
    if count == 0:
        return hidden.sum() * 0.0 + weight.sum() * 0.0, 0
    if impl == "cce":
        return _cce_loss(h, weight, y, softcap), count
    dtype = compute_dtype(h, weight)
    if not (torch.is_grad_enabled() and (h.requires_grad or weight.requires_grad)):
        with torch.autocast(h.device.type, enabled=False):
            _, total = lse_only_loss(h.to(dtype), weight.to(dtype), y, chunk_size, softcap)
        return total / count, count
    loss = FusedLinearCrossEntropy.apply(h, weight, y, chunk_size, softcap, dtype, impl == "torch_recompute")
    return loss, count


def naive_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Reference loss from full logits (B, T, V), as transformers computes it."""
    y = labels[:, 1:].reshape(-1)
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(), y, ignore_index=IGNORE_INDEX)
