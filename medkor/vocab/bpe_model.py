"""The BPE inside a `tokenizer.json`: vocabulary, ranked merges and checks.

The extension edits the model itself (never `added_tokens`), so this module reads
the model section of a serialized `tokenizers.Tokenizer`, exposes it as plain
Python data and writes it back. Everything else in the JSON (normalizer, decoder,
special tokens, post-processor) is kept as it was.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from tokenizers import Tokenizer

from medkor.vocab.korean import SPACE

Merge = tuple[str, str]


class TokenizerFormatError(ValueError):
    """The base tokenizer is not a BPE with Gemma's `▁` convention."""


@dataclass
class BpeModel:
    """A BPE tokenizer as editable data.

    Attributes:
        vocab: token -> id of the model's vocabulary.
        merges: merge pairs, highest priority first (a merge's rank is its index).
        spec: the whole serialized tokenizer (`tokenizer.json` content); `vocab` and
            `merges` replace its model section when it is written back.
    """

    vocab: dict[str, int]
    merges: list[Merge]
    spec: dict[str, Any] = field(repr=False)

    @classmethod
    def from_json(cls, text: str, source: str = "tokenizer.json") -> "BpeModel":
        """Parse a serialized tokenizer; `source` names it in errors."""
        spec = json.loads(text)
        model = spec.get("model") or {}
        if model.get("type") != "BPE":
            raise TokenizerFormatError(
                f"{source}: model type is {model.get('type')!r}; extend-vocab needs a BPE tokenizer "
                "(Gemma 3 style) so that new tokens can be built by merges"
            )
        if SPACE not in model.get("vocab", {}):
            raise TokenizerFormatError(
                f"{source}: the vocabulary has no '{SPACE}' token; extend-vocab expects Gemma's "
                "convention of spaces replaced by '▁' before the BPE runs"
            )
        merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in model.get("merges", [])]
        return cls(vocab=dict(model["vocab"]), merges=merges, spec=spec)  # type: ignore[arg-type]

    @classmethod
    def from_tokenizer(cls, tokenizer: Tokenizer, source: str = "tokenizer") -> "BpeModel":
        return cls.from_json(tokenizer.to_str(), source)

    @property
    def byte_fallback(self) -> bool:
        """Whether characters outside the vocabulary are spelled in byte tokens (else `<unk>`)."""
        return bool(self.spec["model"].get("byte_fallback"))

    @property
    def unk_token(self) -> str | None:
        return self.spec["model"].get("unk_token")

    @property
    def size(self) -> int:
        """Number of ids in use: every id below it belongs to a model or added token."""
        added = [t["id"] for t in self.spec.get("added_tokens", [])]
        return max([*self.vocab.values(), *added], default=-1) + 1

    def special_contents(self) -> set[str]:
        """Text of the added (special) tokens, which new tokens must never shadow."""
        return {t["content"] for t in self.spec.get("added_tokens", [])}

    def added_outside_vocab(self) -> dict[str, int]:
        """Added tokens that the model's vocabulary lacks (Gemma 3's `<image_soft_token>`), token -> id.

        `tokenizers` gives such a token the first id after the model's vocabulary when
        it loads a file, whatever id the file says: once new tokens follow it, that id
        belongs to the last new token. Written into the vocabulary at its id, it keeps it.
        """
        return {t["content"]: t["id"] for t in self.spec.get("added_tokens", []) if t["content"] not in self.vocab}

    def to_json(self) -> str:
        """The serialized tokenizer with this vocabulary and these merges.

        Added tokens missing from the vocabulary are written into it at their ids
        (see `added_outside_vocab`); an id that a vocabulary token holds already is refused.
        """
        spec = dict(self.spec)
        model = dict(spec["model"])
        vocab = dict(self.vocab)
        added = self.added_outside_vocab()
        if added:
            wanted = set(added.values())
            holder = {i: t for t, i in vocab.items() if i in wanted}
            taken = [(t, i, holder[i]) for t, i in added.items() if i in holder]
            if taken:
                token, token_id, other = taken[0]
                raise TokenizerFormatError(
                    f"added token {token!r} has id {token_id}, which the vocabulary gives to {other!r}: "
                    "new ids must start after every base id, added tokens included"
                )
            vocab = dict(sorted({**vocab, **added}.items(), key=lambda item: item[1]))
        model["vocab"] = vocab
        # Pairs as lists: unambiguous even for tokens that contain spaces.
        model["merges"] = [list(m) for m in self.merges]
        spec["model"] = model
        return json.dumps(spec, ensure_ascii=False)

    def to_tokenizer(self) -> Tokenizer:
        return Tokenizer.from_str(self.to_json())
