"""Grow a model's embeddings to an extended tokenizer and initialise every new row.

Row layout after growth (n_base = the checkpoint tokenizer's length, n_tok = the
extended tokenizer's length, n_rows = embedding rows, a multiple of 64 by default):

    [0, n_base)        old rows: bit-identical to the checkpoint
    [n_base, n_tok)    new tokens: subword mean (or mean / random)
    [n_tok, n_rows)    padding rows no tokenizer id reaches: mean of the old rows

Gemma 3 ships padding rows past its tokenizer (262,145 tokens, 262,208 rows). New
tokens land on those rows first, so every row from n_base on is (re)initialised,
not only the rows that growth appends.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

NewTokenInit = Literal["subword_mean", "mean", "random"]
OutputInit = Literal["subword_mean", "first_piece"]
METASPACE = "▁"  # SentencePiece word-boundary marker used by Gemma tokenizers


class TokenizerMismatchError(ValueError):
    """The training tokenizer does not belong to (or extend) the checkpoint."""


@dataclass(frozen=True)
class EmbeddingPlan:
    """Where old, new and padding rows sit.

    Attributes:
        n_base: tokens of the checkpoint's own tokenizer; rows below are kept.
        n_tokenizer: tokens of the tokenizer used for training.
        rows_before: embedding rows of the checkpoint.
        rows_after: embedding rows after growth.
    """

    n_base: int
    n_tokenizer: int
    rows_before: int
    rows_after: int

    @property
    def extended(self) -> bool:
        """True when rows from `n_base` on were (re)initialised."""
        return self.n_tokenizer > self.n_base


def plan_growth(n_base: int, n_tokenizer: int, rows: int, pad_to_multiple_of: Optional[int] = 64) -> EmbeddingPlan:
    """Decide the final row count; raise when the sizes cannot belong together."""
    if n_base > rows:
        raise TokenizerMismatchError(
            f"the checkpoint's tokenizer has {n_base} tokens but its embedding only {rows} rows: "
            "the tokenizer saved with the checkpoint does not belong to its weights"
        )
    if n_tokenizer < n_base:
        raise TokenizerMismatchError(
            f"the tokenizer has {n_tokenizer} tokens, fewer than the checkpoint's own ({n_base}): it is not an "
            "extension of the checkpoint's tokenizer; load the tokenizer from the checkpoint folder"
        )
    rows_after = rows
    if n_tokenizer > rows:
        multiple = pad_to_multiple_of or 1
        rows_after = -(-n_tokenizer // multiple) * multiple
    return EmbeddingPlan(n_base, n_tokenizer, rows, rows_after)


def check_extends(base: PreTrainedTokenizerBase, extended: PreTrainedTokenizerBase, base_name: str, name: str) -> None:
    """Raise unless `extended` keeps every id of `base` for the same token.

    Comparing the whole base vocabulary (262k strings) takes a fraction of a
    second and catches a tokenizer from another model family before it trains.
    """
    n_base = len(base)
    if len(extended) < n_base:
        raise TokenizerMismatchError(
            f"tokenizer {name!r} ({len(extended)} tokens) is smaller than the checkpoint's tokenizer "
            f"{base_name!r} ({n_base}); load the tokenizer from the checkpoint folder"
        )
    ids = list(range(n_base))
    old = base.convert_ids_to_tokens(ids)
    new = extended.convert_ids_to_tokens(ids)
    if old != new:
        first = next(i for i, (a, b) in enumerate(zip(old, new)) if a != b)
        differ = sum(a != b for a, b in zip(old, new))
        raise TokenizerMismatchError(
            f"tokenizer {name!r} does not extend the checkpoint's tokenizer {base_name!r}: "
            f"{differ} of its first {n_base} ids differ (id {first} is {old[first]!r} in the checkpoint, "
            f"{new[first]!r} here). Load the tokenizer from the checkpoint folder, or extend that one "
            "with `medkor extend-vocab`."
        )
    vocab_ids = extended.get_vocab().values()
    top = max(vocab_ids) if vocab_ids else -1
    if top >= len(extended):
        raise TokenizerMismatchError(
            f"tokenizer {name!r} uses id {top} but has only {len(extended)} tokens; its ids are not contiguous"
        )


def token_text(tokenizer: PreTrainedTokenizerBase, token_id: int) -> str:
    """The text a token stands for, with its word-boundary marker as a space.

    `▁당뇨병` is " 당뇨병": encoding that text with the base tokenizer yields the
    pieces the token replaces. Decoders that strip a leading space would lose the
    boundary, so it is restored from the raw token.
    """
    raw = tokenizer.convert_ids_to_tokens(token_id)
    text = tokenizer.decode([token_id], skip_special_tokens=False, clean_up_tokenization_spaces=False)
    if raw is not None and raw.startswith(METASPACE) and not text.startswith(" "):
        text = " " + text.lstrip(METASPACE)
    return text


def base_pieces(
    base: PreTrainedTokenizerBase, extended: PreTrainedTokenizerBase, token_ids: range
) -> list[list[int]]:
    """For each new token id: the base tokenizer's ids for that token's text."""
    texts = [token_text(extended, i) for i in token_ids]
    if not texts:
        return []
    encoded = base(texts, add_special_tokens=False)["input_ids"]
    return [list(ids) for ids in encoded]


def _segment_mean(weight: torch.Tensor, pieces: list[list[int]], fallback: torch.Tensor) -> torch.Tensor:
    """Row i = mean of weight[pieces[i]] (float32 sums), or `fallback` for empty pieces."""
    out = fallback.expand(len(pieces), -1).clone()
    flat = [p for ids in pieces for p in ids]
    if not flat:
        return out
    owner = torch.tensor([i for i, ids in enumerate(pieces) for _ in ids], device=weight.device)
    sums = torch.zeros(len(pieces), weight.shape[1], dtype=torch.float32, device=weight.device)
    sums.index_add_(0, owner, weight[torch.tensor(flat, device=weight.device)].float())
    counts = torch.tensor([len(ids) for ids in pieces], dtype=torch.float32, device=weight.device)
    has = counts > 0
    out[has] = sums[has] / counts[has, None]
    return out


def new_rows(
    weight: torch.Tensor,
    plan: EmbeddingPlan,
    pieces: list[list[int]],
    init: str,
    generator: Optional[torch.Generator] = None,
) -> torch.Tensor:
    """Float32 values for rows [n_base, rows_after) of one embedding matrix `weight`."""
    old = weight[: plan.n_base].float()
    mean = old.mean(0)
    n_new = plan.n_tokenizer - plan.n_base
    if init == "subword_mean":
        tokens = _segment_mean(weight, pieces, mean)
    elif init == "first_piece":
        tokens = _segment_mean(weight, [ids[:1] for ids in pieces], mean)
    elif init == "mean":
        tokens = mean.expand(n_new, -1).clone()
    elif init == "random":
        std = old.std(0)
        noise = torch.randn(n_new, weight.shape[1], generator=generator, dtype=torch.float32)
        tokens = mean + noise.to(weight.device) * std
    else:
        raise ValueError(f"new_token_init {init!r} is not one of subword_mean, mean, random")
    padding = mean.expand(plan.rows_after - plan.n_tokenizer, -1)
    return torch.cat([tokens, padding], 0)


def extend_embeddings(
    model: PreTrainedModel,
    base: PreTrainedTokenizerBase,
    extended: PreTrainedTokenizerBase,
    *,
    init: NewTokenInit = "subword_mean",
    output_init: OutputInit = "subword_mean",
    pad_to_multiple_of: Optional[int] = 64,
    base_name: str = "checkpoint",
    name: str = "tokenizer",
) -> EmbeddingPlan:
    """Grow `model`'s embeddings to `extended` and initialise rows from `len(base)` on.

    `base` must be the checkpoint's own tokenizer. When both tokenizers have the
    same length (the checkpoint was extended already) nothing is touched.
    """
    if base is not extended:
        check_extends(base, extended, base_name, name)
    rows = model.get_input_embeddings().weight.shape[0]
    plan = plan_growth(len(base), len(extended), rows, pad_to_multiple_of)
    if not plan.extended:
        return plan
    if plan.rows_after != rows:
        # Rows are filled below; mean_resizing would spend time on a covariance it throws away.
        model.resize_token_embeddings(plan.rows_after, mean_resizing=False)
    pieces = base_pieces(base, extended, range(plan.n_base, plan.n_tokenizer))
    bad = [(plan.n_base + i, ids) for i, ids in enumerate(pieces) if any(p >= plan.n_base for p in ids)]
    if bad:
        raise TokenizerMismatchError(f"base tokenizer {base_name!r} produced ids beyond its own size: {bad[:3]}")
    inputs = model.get_input_embeddings().weight
    outputs = model.get_output_embeddings()
    with torch.no_grad():
        inputs[plan.n_base :] = new_rows(inputs, plan, pieces, init).to(inputs.dtype)
        if outputs is not None and outputs.weight is not inputs:
            out_init = output_init if init == "subword_mean" else init
            outputs.weight[plan.n_base :] = new_rows(outputs.weight, plan, pieces, out_init).to(outputs.weight.dtype)
    return plan
