"""Log-probability scoring: one forward pass per batch, no generation.

Each option's score is ``log p(letter token | prompt)``, the log-softmax over the whole vocabulary
at the prompt's last position. Batches are sorted by length (longest first, so an out-of-memory
shows on the first batch) and padded on the right: with a causal mask a real token never sees the
padding after it, and the position ids stay 0..len-1, so a question scores the same in any batch.
Logits are computed only for the rows' last real positions (``logits_to_keep``), never for the
whole ``(batch, length, vocab)`` block.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any, Callable, ContextManager, Iterable, Sequence

import torch

from medkor.eval.encoding import EncodedQuestion


def _per_row_positions_supported() -> bool:
    # transformers 5 slices hidden states per row for a 2-D integer `logits_to_keep`; older
    # releases index every row with the same positions, so fall back to a window there.
    try:
        from transformers.modeling_utils import slice_logits_to_keep  # noqa: F401
    except ImportError:
        return False
    return True


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of the model's first parameter (CPU for a parameterless module)."""
    for parameter in model.parameters():
        return parameter.device
    return torch.device("cpu")


def length_sorted_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar length, longest first."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]


def last_position_logits(
    model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, per_row: bool | None = None
) -> torch.Tensor:
    """Logits ``(B, vocab)`` at each right-padded row's last real token."""
    last = attention_mask.sum(dim=1) - 1
    width = input_ids.shape[1]
    per_row = _per_row_positions_supported() if per_row is None else per_row
    keep: Any = last[:, None] if per_row else int(width - last.min().item())
    output = model(input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=keep, use_cache=False)
    logits = output.logits if hasattr(output, "logits") else output[0]
    if logits.shape[1] == width:  # the model ignored logits_to_keep: index the full block
        return logits[torch.arange(len(last), device=logits.device), last]
    if per_row:
        return logits[:, 0]
    start = width - logits.shape[1]  # window of the last positions
    return logits[torch.arange(len(last), device=logits.device), last - start]


def score_logprob(
    model: torch.nn.Module,
    encoded: Sequence[EncodedQuestion],
    batch_size: int = 16,
    forward_context: Callable[[], ContextManager[Any]] = nullcontext,
    per_row: bool | None = None,
    progress: Callable[[list[list[int]]], Iterable[list[int]]] = iter,
) -> list[list[float]]:
    """Log-probabilities of the letters A-E for every question, in input order.

    Args:
        model: a causal LM taking ``input_ids``, ``attention_mask``, ``logits_to_keep``; it is not
            switched to eval mode here (the caller owns the mode).
        encoded: questions with prompt ids and letter ids.
        batch_size: questions per forward pass.
        forward_context: context entered around each forward (e.g. the trainer's autocast).
        per_row: keep one logit row per question (transformers 5) or a window of the last
            positions (older); default: detect.
        progress: wraps the list of batches (e.g. in a progress bar).
    """
    device = model_device(model)
    scores: list[list[float]] = [[] for _ in encoded]
    for batch in progress(length_sorted_batches([len(e.prompt_ids) for e in encoded], batch_size)):
        width = max(len(encoded[i].prompt_ids) for i in batch)
        input_ids = torch.zeros((len(batch), width), dtype=torch.long)
        attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, i in enumerate(batch):
            ids = encoded[i].prompt_ids
            input_ids[row, : len(ids)] = torch.tensor(ids)
            attention_mask[row, : len(ids)] = 1
        letter_ids = torch.tensor([encoded[i].letter_ids for i in batch], device=device)
        with torch.no_grad(), forward_context():
            logits = last_position_logits(model, input_ids.to(device), attention_mask.to(device), per_row)
        logprobs = logits.float().log_softmax(dim=-1).gather(1, letter_ids).cpu()
        for row, i in enumerate(batch):
            scores[i] = logprobs[row].tolist()
    return scores
