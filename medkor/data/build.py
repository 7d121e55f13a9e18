"""Build the rows of one split into a folder: read -> tokenize (every core) -> pack -> Arrow.

The caller owns the folder (a temporary one inside the cache directory); this module
knows nothing about keys, locks or publishing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from tokenizers import Tokenizer
from tqdm.auto import tqdm

from medkor.data.encode import OnLongExample, encode_split
from medkor.data.example_packing import ExamplePacker
from medkor.data.packing import Packer, learned_tokens
from medkor.data.rows import ROWS_FILE, rows_per_batch, write_rows
from medkor.data.sources import DataError, ReadStats, Selection


@dataclass
class BuildStats:
    """Counts of one build; `tokens` equals the sum of document lengths (checked)."""

    documents: int = 0
    rows: int = 0
    tokens: int = 0
    learned: int = 0  # positions that are targets (not a document start, prompt or template)
    skipped: int = 0
    skipped_examples: list[str] = field(default_factory=list)
    long_skipped: int = 0
    long_examples: list[str] = field(default_factory=list)
    max_length: int = 0

    @property
    def fill_rate(self) -> float:
        """Useful tokens / row tokens: how much of `rows x max_length` holds data, not padding."""
        return self.tokens / (self.rows * self.max_length) if self.rows else 0.0


def special_ids(tokenizer: Any) -> tuple[int, int, int]:
    """(bos, eos, pad) ids; pad falls back to eos. A tokenizer without BOS or EOS cannot pack."""
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    if bos is None or eos is None:
        raise ValueError(
            f"tokenizer {getattr(tokenizer, 'name_or_path', '')!r} has no {'BOS' if bos is None else 'EOS'} token; "
            "set bos_token and eos_token in its tokenizer_config.json"
        )
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    return int(bos), int(eos), int(pad)


def whole_documents(tokenizer: Any) -> Any:
    """A copy of the Rust tokenizer without the truncation or padding its tokenizer.json
    may carry: either would silently cut or pad every cached document."""
    backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    backend.no_truncation()
    backend.no_padding()
    return backend


def build_split(
    selection: Selection,
    tokenizer: Any,
    folder: Path,
    max_length: int,
    packing: bool,
    num_proc: Optional[int],
    split: str,
    on_long_example: OnLongExample = "error",
) -> BuildStats:
    """Tokenize and pack one split into `folder/rows.arrow`.

    Plain text streams into rows cut at `max_length`; every other format is packed
    as whole examples (best-fit decreasing), an example longer than a row being an
    error or skipped (`on_long_example`).
    """
    bos, eos, _ = special_ids(tokenizer)
    read = ReadStats()
    stats = BuildStats(max_length=max_length)
    examples = selection.spec.examples
    packer = ExamplePacker(max_length, packing) if examples else Packer(max_length, packing)
    expected = 0
    with tqdm(desc=f"Tokenizing {split}", unit=" docs") as progress:
        encoded = encode_split(
            selection, whole_documents(tokenizer), bos, eos, num_proc, read, progress.update,
            tokenizer=tokenizer, max_example=max_length if examples else None, on_long_example=on_long_example,
        )

        def batches():
            nonlocal expected
            for values, lengths, ignored in encoded:
                stats.documents += len(lengths)
                expected += len(values)
                yield from counted(packer.add(values, lengths, ignored) if examples else packer.add(values, lengths))
            yield from counted(packer.finish())

        def counted(rows):
            for batch in rows:
                stats.learned += learned_tokens(batch)
                yield batch

        stats.rows, stats.tokens = write_rows(folder / ROWS_FILE, batches(), rows_per_batch(max_length))
    stats.skipped, stats.skipped_examples = read.skipped, read.skipped_examples
    stats.long_skipped, stats.long_examples = read.long_skipped, read.long_examples
    if stats.documents == 0:
        raise DataError(
            f"split {split!r} of {', '.join(map(str, selection.files))} has no documents "
            "(max_samples, val_fraction or skipped records left none)"
        )
    if stats.tokens != expected:  # every token of every document must be in the rows
        raise RuntimeError(f"packing lost tokens: {expected} tokenized, {stats.tokens} written")
    return stats
