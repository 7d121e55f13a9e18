"""Tokenize the documents of a split into `<bos> document <eos>` tokens, on every core.

The parent cuts the files into spans of whole lines and hands them to worker
processes; each worker reads its lines, checks them, keeps the split's documents,
tokenizes them with a single-threaded tokenizer and returns flat int32 arrays. Results come back in
file order, so errors, skips and `max_samples` mean exactly what they mean in one
process, and the rows do not depend on the number of workers.

Processes rather than the tokenizer's own threads: in one process the Python side
(JSON, turning id lists into arrays) competes with the Rust threads for the same
cores; on 2 cores the two measured 1.2-1.45x and 1.1-1.25x the raw tokenizer time
(docs/benchmarks.md), and only processes keep scaling with the core count.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import sys
import traceback
import warnings
from dataclasses import dataclass
from itertools import chain
from multiprocessing.connection import wait
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Literal, Optional

import numpy as np

from medkor.data.formats import ExampleEncoder, flatten
from medkor.data.sources import (
    CHUNK_BYTES, DataError, LineSpan, ReadStats, Selection, check_file, line_spans, no_records_error, parse_chunk, read_span,
)

IN_FLIGHT_PER_WORKER = 2  # chunks queued per worker: enough to never idle, little memory
PARALLELISM = "TOKENIZERS_PARALLELISM"
PR_SET_PDEATHSIG = 1


@dataclass
class EncodedChunk:
    """A chunk's kept documents as flat tokens, with lengths and line numbers, and its bad lines."""

    path: Path
    values: np.ndarray  # int32 `<bos> ids <eos>` of every kept document, concatenated
    lengths: np.ndarray  # int64 tokens per kept document
    line_numbers: np.ndarray  # int64 line of each kept document
    records: int  # lines that passed the check, kept by the split or not
    problems: list[tuple[int, str]]
    ignored: Optional[np.ndarray] = None  # bool per token: never a target (None: `text`, all learned)


def with_bos_eos(encodings: list[Any], bos: int, eos: int) -> tuple[np.ndarray, np.ndarray]:
    """Flat int32 tokens of `<bos> ids <eos>` per encoded document, and each document's length.

    One pass over the tokenizer's id lists, each freed as soon as it is read: the
    cheapest way out of Python lists (about half the cost of collecting them first).
    """
    lengths = np.fromiter(map(len, encodings), dtype=np.int64, count=len(encodings)) + 2
    head, tail = [bos], [eos]
    pieces = chain.from_iterable(piece for e in encodings for piece in (head, e.ids, tail))
    return np.fromiter(pieces, dtype=np.int32, count=int(lengths.sum())), lengths


class ChunkEncoder:
    """Check, select and tokenize one chunk; the same function runs in a worker or in-process.

    `tokenizer` (the Hugging Face one) is needed by the formats that render with its
    chat template or the evaluation's encoding (`chat`, `mcq`); `backend` tokenizes the rest.
    """

    def __init__(self, selection: Selection, backend: Any, bos: int, eos: int, tokenizer: Any = None) -> None:
        self.selection = selection
        self.backend = backend  # a `tokenizers.Tokenizer`
        self.bos = bos
        self.eos = eos
        self.examples = ExampleEncoder(selection.spec, tokenizer, backend, bos, eos)

    def __call__(self, span: LineSpan) -> EncodedChunk:
        chunk = read_span(span)
        spec = self.selection.spec
        parsed = parse_chunk(chunk, spec)
        kept = [i for i, item in enumerate(parsed.texts) if self.selection.keeps(item)]
        items = [parsed.texts[i] for i in kept]
        lines = np.array([parsed.line_numbers[i] for i in kept], dtype=np.int64)
        if not spec.examples:
            encodings = self.backend.encode_batch_fast(items, add_special_tokens=False) if items else []
            values, lengths = with_bos_eos(encodings, self.bos, self.eos)
            return EncodedChunk(chunk.path, values, lengths, lines, len(parsed.texts), parsed.problems)
        values, lengths, ignored = flatten(*self.examples.encode(items))
        return EncodedChunk(chunk.path, values, lengths, lines, len(parsed.texts), parsed.problems, ignored)


def usable_cores() -> int:
    """Cores this process may run on (respects taskset, cgroups cpusets and SLURM binding)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def worker_count(num_proc: Optional[int], total_bytes: int, chunk_bytes: int = CHUNK_BYTES) -> int:
    """Tokenizer processes for a split: `num_proc` (default every usable core), at most one per chunk.

    1 means no worker processes: the split is tokenized in this process.
    """
    wanted = usable_cores() if num_proc is None else num_proc
    chunks = max(1, -(-total_bytes // chunk_bytes))
    return max(1, min(wanted, chunks))


OnLongExample = Literal["error", "skip"]


def _drop_long(result: EncodedChunk, limit: int, on_long: OnLongExample, selection: Selection,
               stats: ReadStats) -> EncodedChunk:
    """Examples longer than `limit` (never cut in two): an error naming the first, or skipped and counted."""
    long = result.lengths > limit
    if not long.any():
        return result
    first = int(result.line_numbers[int(np.argmax(long))])
    if on_long == "error":
        stats.record(result.path, [(line, p) for line, p in result.problems if line < first], selection.on_bad_record)
        size = int(result.lengths[int(np.argmax(long))])
        raise DataError(
            f"{result.path}:{first}: example has {size} tokens, more than max_length {limit}, and an example "
            "is never cut in two; raise max_length, shorten the record, or set on_long_example: skip"
        )
    for line, size in zip(result.line_numbers[long], result.lengths[long]):
        stats.record_long(result.path, int(line), int(size), limit)
    keep = np.repeat(~long, result.lengths)
    return EncodedChunk(result.path, result.values[keep], result.lengths[~long], result.line_numbers[~long],
                        result.records, result.problems, result.ignored[keep])


def encode_split(
    selection: Selection,
    backend: Any,
    bos: int,
    eos: int,
    num_proc: Optional[int],
    stats: ReadStats,
    on_documents: Callable[[int], Any] = lambda count: None,
    chunk_bytes: int = CHUNK_BYTES,
    tokenizer: Any = None,
    max_example: Optional[int] = None,
    on_long_example: OnLongExample = "error",
) -> Iterator[tuple[np.ndarray, np.ndarray, Optional[np.ndarray]]]:
    """The split's documents as (flat int32 tokens, lengths, ignored flags or None) batches, in file order.

    Bad lines raise `DataError` naming `file:line`, or are counted in `stats` when
    skipped; an example (any format but `text`) longer than `max_example` tokens is an
    error or skipped (`on_long_example`); reading stops after `max_samples` kept
    documents; a file without a single usable record is an error. `on_documents` is
    told each batch's size.
    """
    if on_long_example not in ("error", "skip"):
        raise ValueError(f"on_long_example must be 'error' or 'skip', got {on_long_example!r}")
    for path in selection.files:
        check_file(path)
    workers = worker_count(num_proc, sum(path.stat().st_size for path in selection.files), chunk_bytes)
    spans = (span for path in selection.files for span in line_spans(path, chunk_bytes))
    encoder = ChunkEncoder(selection, backend, bos, eos, tokenizer)
    results = ordered_map(encoder, spans, workers)
    records = {path: 0 for path in selection.files}
    kept, limit = 0, selection.max_samples
    try:
        for result in results:
            if result.ignored is not None and max_example is not None:
                result = _drop_long(result, max_example, on_long_example, selection, stats)
            values, lengths, problems, ignored = result.values, result.lengths, result.problems, result.ignored
            full = limit is not None and kept + len(lengths) >= limit
            if full:  # take the first documents only; lines after the last one taken are not read
                take = limit - kept
                last_line = int(result.line_numbers[take - 1])
                problems = [(line, problem) for line, problem in problems if line < last_line]
                tokens = int(lengths[:take].sum())
                values, lengths = values[:tokens], lengths[:take]
                ignored = None if ignored is None else ignored[:tokens]
            stats.record(result.path, problems, selection.on_bad_record)
            records[result.path] += result.records
            kept += len(lengths)
            on_documents(len(lengths))
            if len(lengths):
                yield values, lengths, ignored
            if full:
                return
    finally:
        results.close()
    for path, count in records.items():
        if count == 0:
            raise no_records_error(path)


def ordered_map(function: ChunkEncoder, spans: Iterable[LineSpan], workers: int) -> Iterator[EncodedChunk]:
    """`map(function, spans)` over `workers` processes, in order, with a bounded queue.

    Each worker has its own pipe and reads its lines from the file itself, so the
    parent only sends small span descriptions (a send never blocks) and a worker that
    dies (killed, out of memory) shows up at once as the end of its pipe, never as a hang.
    """
    if workers <= 1:
        yield from map(function, spans)
        return
    # fork shares the loaded tokenizer with the workers at no cost; elsewhere it is pickled once each
    context = multiprocessing.get_context("fork" if sys.platform.startswith("linux") else "spawn")
    saved = os.environ.get(PARALLELISM)
    os.environ[PARALLELISM] = "false"  # one core per worker; also no fork warning from tokenizers
    processes: list[Any] = []
    pipes: list[Any] = []
    finished = False
    try:
        for index in range(workers):
            ours, theirs = context.Pipe()
            process = context.Process(target=_worker_main, args=(function, theirs, os.getpid()),
                                      name=f"medkor-tokenizer-{index}", daemon=True)
            with warnings.catch_warnings():
                # Python 3.12+ warns on fork in a threaded process; the workers only run the
                # tokenizer and numpy, and take no lock another thread could hold
                warnings.filterwarnings("ignore", message=".*fork", category=DeprecationWarning)
                process.start()
            theirs.close()  # before the next fork: the worker alone holds its end
            processes.append(process)
            pipes.append(ours)
        yield from _dispatch(iter(spans), processes, pipes)
        finished = True
    finally:
        for process, pipe in zip(processes, pipes):
            if finished:
                try:
                    pipe.send(None)  # done: the worker returns
                except OSError:
                    pass
            else:
                process.kill()  # an error or Ctrl-C: nothing the workers do is needed any more
        for process in processes:
            process.join(timeout=10)
            if process.is_alive():
                process.kill()
                process.join()
        for pipe in pipes:
            pipe.close()
        if saved is None:
            os.environ.pop(PARALLELISM, None)
        else:
            os.environ[PARALLELISM] = saved


def _dispatch(spans: Iterator[LineSpan], processes: list[Any], pipes: list[Any]) -> Iterator[EncodedChunk]:
    """Keep every worker busy, at most IN_FLIGHT_PER_WORKER spans each; yield results in order."""
    limit = len(pipes) * IN_FLIGHT_PER_WORKER
    busy = [0] * len(pipes)
    ready: dict[int, EncodedChunk] = {}
    sent = done = 0
    exhausted = False
    while True:
        for index, pipe in enumerate(pipes):
            while not exhausted and busy[index] < IN_FLIGHT_PER_WORKER and sent - done < limit:
                span = next(spans, None)
                if span is None:
                    exhausted = True
                    break
                pipe.send((sent, span))
                busy[index] += 1
                sent += 1
        if done == sent:
            return
        while done not in ready:
            for pipe in wait([pipe for index, pipe in enumerate(pipes) if busy[index]]):
                index = pipes.index(pipe)
                try:
                    number, ok, payload = pipe.recv()
                except (EOFError, OSError):  # the worker's end closed: it died
                    code = processes[index].exitcode
                    processes[index].join(timeout=1)
                    code = processes[index].exitcode if code is None else code
                    raise RuntimeError(
                        f"tokenizer worker {index} died (exit code {code}); if it was killed for memory, "
                        "lower data.num_proc"
                    ) from None
                busy[index] -= 1
                if not ok:
                    raise RuntimeError(f"tokenizer worker {index} failed:\n{payload}")
                ready[number] = payload
        yield ready.pop(done)
        done += 1


def _worker_main(function: ChunkEncoder, pipe: Any, parent_pid: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle; it stops the workers
    _exit_with_parent(parent_pid)
    while True:
        try:
            message = pipe.recv()
        except EOFError:
            return
        if message is None:
            return
        number, span = message
        try:
            reply = (number, True, function(span))
        except BaseException:
            reply = (number, False, traceback.format_exc())
        pipe.send(reply)


def _exit_with_parent(parent_pid: int) -> None:
    """Have the kernel kill this worker when the parent dies (Linux), so a SIGKILLed build
    leaves no orphan processes."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        except (AttributeError, OSError):
            pass
    if os.getppid() != parent_pid:  # the parent died before the request took effect
        os._exit(1)
