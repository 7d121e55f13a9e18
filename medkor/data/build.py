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

from medkor.data.encode import encode_split
from medkor.data.packing import Packer
from medkor.data.rows import ROWS_FILE, rows_per_batch, write_rows
from medkor.data.sources import ReadStats, Selection


@dataclass
class BuildStats:
    """Counts of one build; `tokens` equals the sum of document lengths (checked)."""

    documents: int = 0
    rows: int = 0
    tokens: int = 0
    skipped: int = 0
    skipped_examples: list[str] = field(default_factory=list)


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
) -> BuildStats:
    """Tokenize and pack one split into `folder/rows.arrow`."""
    bos, eos, _ = special_ids(tokenizer)
    read = ReadStats()
    stats = BuildStats()
    packer = Packer(max_length, packing)
    expected = 0
    with tqdm(desc=f"Tokenizing {split}", unit=" docs") as progress:
        encoded = encode_split(selection, whole_documents(tokenizer), bos, eos, num_proc, read, progress.update)

        def batches():
            nonlocal expected
            for values, lengths in encoded:
                stats.documents += len(lengths)
                expected += len(values)
                yield from packer.add(values, lengths)
            yield from packer.finish()

        stats.rows, stats.tokens = write_rows(folder / ROWS_FILE, batches(), rows_per_batch(max_length))
    stats.skipped, stats.skipped_examples = read.skipped, read.skipped_examples
    if stats.documents == 0:
        raise ValueError(f"split {split!r} has no documents (max_samples, val_fraction or skipped records left none)")
    if stats.tokens != expected:  # every token of every document must be in the rows
        raise RuntimeError(f"packing lost tokens: {expected} tokenized, {stats.tokens} written")
    return stats
