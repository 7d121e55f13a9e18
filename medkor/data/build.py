"""Build the rows of one split into a folder: read -> tokenize (all cores) -> pack -> Arrow.

The caller owns the folder (a temporary one inside the cache directory); this module
knows nothing about keys, locks or publishing.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import chain, islice
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np
import pyarrow as pa
import xxhash
from tqdm.auto import tqdm

from medkor.data.packing import Packer
from medkor.data.rows import ROWS_FILE, write_rows
from medkor.data.sources import OnBadRecord, ReadStats, read_texts

TEXT_BATCH = 4096  # texts per Arrow batch while staging the corpus
TOKENIZE_BATCH = 1000  # texts per tokenizer call


@dataclass
class Selection:
    """Which documents of the source files make up a split."""

    files: list[Path]
    text_field: str = "text"
    on_bad_record: OnBadRecord = "error"
    max_samples: Optional[int] = None
    val_fraction: float = 0.0  # > 0: the split is carved from the files by a content hash
    take_validation: bool = False  # with val_fraction: keep the validation share, else the rest
    seed: int = 0


@dataclass
class BuildStats:
    """Counts of one build; `tokens` equals the sum of document lengths (checked)."""

    documents: int = 0
    rows: int = 0
    tokens: int = 0
    skipped: int = 0
    skipped_examples: list[str] = field(default_factory=list)


def in_validation(text: str, seed: int, fraction: float) -> bool:
    """Deterministic split by content: a document's side never depends on the others."""
    draw = xxhash.xxh3_64_intdigest(text.encode("utf-8"), seed=seed) / 2.0**64
    return draw < fraction


def iter_documents(selection: Selection, stats: ReadStats) -> Iterator[str]:
    """The split's document texts, validated, in file order, capped at max_samples."""
    kept = 0
    for path in selection.files:
        for text in read_texts(path, selection.text_field, selection.on_bad_record, stats):
            if selection.val_fraction > 0:
                if in_validation(text, selection.seed, selection.val_fraction) != selection.take_validation:
                    continue
            if selection.max_samples is not None and kept >= selection.max_samples:
                return
            kept += 1
            yield text


def stage_texts(texts: Iterator[str], path: Path) -> int:
    """Write texts to an Arrow stream file that `datasets` can memory-map; returns the count."""
    schema = pa.schema([("text", pa.string())])
    count = 0
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
        batch: list[str] = []
        for text in texts:
            batch.append(text)
            if len(batch) == TEXT_BATCH:
                writer.write_batch(pa.record_batch([pa.array(batch, pa.string())], schema=schema))
                count += len(batch)
                batch = []
        if batch:
            writer.write_batch(pa.record_batch([pa.array(batch, pa.string())], schema=schema))
            count += len(batch)
    return count


class Encoder:
    """Picklable batch function for `datasets.map`: BOS + tokens + EOS per document."""

    def __init__(self, backend: Any, bos_id: int, eos_id: int) -> None:
        self.backend = backend
        self.bos_id = bos_id
        self.eos_id = eos_id

    def __call__(self, batch: dict[str, list[str]]) -> dict[str, list[list[int]]]:
        encode = getattr(self.backend, "encode_batch_fast", self.backend.encode_batch)
        encodings = encode(batch["text"], add_special_tokens=False)
        bos, eos = [self.bos_id], [self.eos_id]
        return {"input_ids": [bos + e.ids + eos for e in encodings]}


def with_bos_eos(ids: list[list[int]], bos: int, eos: int) -> tuple[np.ndarray, np.ndarray]:
    """Flat int32 tokens of `<bos> ids <eos>` per document, and each document's length."""
    lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids)) + 2
    ends = np.cumsum(lengths)
    values = np.empty(int(ends[-1]) if len(ends) else 0, dtype=np.int32)
    body = np.ones(len(values), dtype=bool)
    body[ends - lengths] = False
    body[ends - 1] = False
    values[~body] = np.tile(np.array([bos, eos], dtype=np.int32), len(ids))
    values[body] = np.fromiter(chain.from_iterable(ids), dtype=np.int32, count=int(body.sum()))
    return values, lengths


def encode_stream(texts: Iterator[str], backend: Any, bos: int, eos: int, progress: Any) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Tokenize batches as they are read, in this process, with no intermediate copy.

    The Rust tokenizer spreads each batch over all cores and releases the GIL, so the
    next batch is parsed from JSONL, and the last one turned into arrays, meanwhile.
    """
    def read() -> list[str]:
        return list(islice(texts, TOKENIZE_BATCH))

    with ThreadPoolExecutor(1, thread_name_prefix="medkor-tokenize") as pool:
        batch = read()
        pending = pool.submit(backend.encode_batch_fast, batch, add_special_tokens=False) if batch else None
        while pending is not None:
            size = len(batch)
            batch = read()
            encodings = pending.result()
            pending = pool.submit(backend.encode_batch_fast, batch, add_special_tokens=False) if batch else None
            yield with_bos_eos([e.ids for e in encodings], bos, eos)
            progress.update(size)


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


def build_split(
    selection: Selection,
    tokenizer: Any,
    folder: Path,
    max_length: int,
    packing: bool,
    num_proc: Optional[int],
    split: str,
    fingerprint: str,
) -> BuildStats:
    """Tokenize and pack one split into `folder/rows.arrow`; intermediate files are removed."""
    bos, eos, _ = special_ids(tokenizer)
    read = ReadStats()
    stats = BuildStats()
    packer = Packer(max_length, packing)
    expected = 0
    if (num_proc or 1) > 1:
        encoded = _encode_in_processes(selection, tokenizer, read, folder, bos, eos, num_proc, split, fingerprint)
    else:
        progress = tqdm(desc=f"Tokenizing {split}", unit=" docs", disable=False)
        encoded = encode_stream(iter_documents(selection, read), tokenizer.backend_tokenizer, bos, eos, progress)

    def batches():
        nonlocal expected
        for values, lengths in encoded:
            stats.documents += len(lengths)
            expected += len(values)
            yield from packer.add(values, lengths)
        yield from packer.finish()

    try:
        stats.rows, stats.tokens = write_rows(folder / ROWS_FILE, batches())
    finally:
        if (num_proc or 1) == 1:
            progress.close()
    stats.skipped, stats.skipped_examples = read.skipped, read.skipped_examples
    if stats.documents == 0:
        raise ValueError(f"split {split!r} has no documents (max_samples, val_fraction or skipped records left none)")
    if stats.tokens != expected:  # every token of every document must be in the rows
        raise RuntimeError(f"packing lost tokens: {expected} tokenized, {stats.tokens} written")
    for path in folder.iterdir():
        if path.name != ROWS_FILE:
            path.unlink()
    return stats


def _encode_in_processes(
    selection: Selection, tokenizer: Any, read: ReadStats, folder: Path, bos: int, eos: int,
    num_proc: int, split: str, fingerprint: str,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Several tokenizer processes through `datasets.map`: pays off where the Python-side
    work, not the Rust tokenizer, is the limit (many cores). Texts are staged to Arrow first."""
    from datasets import Dataset, Features, Sequence, Value

    texts_path = folder / "texts.arrow"
    documents = stage_texts(iter_documents(selection, read), texts_path)
    if documents == 0:
        return iter(())
    texts = Dataset.from_file(str(texts_path))
    workers = max(1, min(num_proc, documents // TOKENIZE_BATCH + 1))
    # the forked workers take one core each and must not start their own thread pools
    saved = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    try:
        tokens = texts.map(
            Encoder(tokenizer.backend_tokenizer, bos, eos),
            batched=True,
            batch_size=TOKENIZE_BATCH,
            num_proc=workers if workers > 1 else None,
            remove_columns=["text"],
            features=Features({"input_ids": Sequence(Value("int32"))}),
            cache_file_name=str(folder / "tokens.arrow"),
            load_from_cache_file=False,
            new_fingerprint=fingerprint,  # skip hashing the tokenizer-bearing function
            desc=f"Tokenizing {split}",
        )
    finally:
        if saved is None:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = saved

    def batches() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for record_batch in tokens.data.to_batches():
            column = record_batch.column(0)
            yield column.flatten().to_numpy(zero_copy_only=False), np.diff(column.offsets.to_numpy(zero_copy_only=False))

    return batches()
