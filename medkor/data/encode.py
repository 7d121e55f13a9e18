"""Tokenize chunks of whole lines into `<bos> document <eos>` tokens, on every core.

The parent hands spans of whole lines to worker processes; each worker reads its
lines, checks them, tokenizes every good record with a single-threaded tokenizer and
returns flat int32 arrays (and writes the piece, see `pieces`). Results come back in
the order the spans were given, so whatever consumes them sees the files in order and
the result never depends on the number of workers. Which documents a split keeps,
`max_samples` and bad-record policies act later, on these results (`build`).

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
from typing import Any, Callable, Iterable, Iterator, Literal, Optional

import numpy as np

from medkor.data.formats import ExampleEncoder, FormatSpec, flatten, item_key
from medkor.data.sources import CHUNK_BYTES, LineSpan, parse_chunk, read_span, validation_draw

IN_FLIGHT_PER_WORKER = 2  # chunks queued per worker: enough to never idle, little memory
PARALLELISM = "TOKENIZERS_PARALLELISM"
PR_SET_PDEATHSIG = 1
OnLongExample = Literal["error", "skip"]


@dataclass
class EncodedChunk:
    """Every good record of a chunk as flat tokens, with lengths and line numbers, and its bad lines.

    Line numbers count from the span's `first_line`.
    """

    values: np.ndarray  # int32 `<bos> ids <eos>` (or an example's ids) of every good record, concatenated
    lengths: np.ndarray  # int64 tokens per record
    line_numbers: np.ndarray  # int64 line of each record
    records: int  # lines that passed the check
    problems: list[tuple[int, str]]
    ignored: Optional[np.ndarray] = None  # bool per token: never a target (None: `text`, all learned)
    draws: Optional[np.ndarray] = None  # uint64 `validation_draw` per record (None: no seed given)


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
    """Check and tokenize every record of a span; the same function runs in a worker or in-process.

    `tokenizer` (the Hugging Face one) is needed by the formats that render with its
    chat template or the evaluation's encoding (`chat`, `mcq`); `backend` tokenizes the
    rest. With a `draw_seed` each record also gets its seeded validation draw.
    """

    def __init__(self, spec: FormatSpec, backend: Any, bos: int, eos: int, tokenizer: Any = None,
                 draw_seed: Optional[int] = None) -> None:
        self.spec = spec
        self.backend = backend  # a `tokenizers.Tokenizer`
        self.bos = bos
        self.eos = eos
        self.draw_seed = draw_seed
        self.examples = ExampleEncoder(spec, tokenizer, backend, bos, eos)

    def __call__(self, span: LineSpan) -> EncodedChunk:
        parsed = parse_chunk(read_span(span), self.spec)
        items = parsed.texts
        lines = np.array(parsed.line_numbers, dtype=np.int64)
        draws = None
        if self.draw_seed is not None:
            draws = np.fromiter((validation_draw(item_key(i), self.draw_seed) for i in items), dtype=np.uint64,
                                count=len(items))
        if not self.spec.examples:
            encodings = self.backend.encode_batch_fast(items, add_special_tokens=False) if items else []
            values, lengths = with_bos_eos(encodings, self.bos, self.eos)
            return EncodedChunk(values, lengths, lines, len(items), parsed.problems, None, draws)
        values, lengths, ignored = flatten(*self.examples.encode(items))
        return EncodedChunk(values, lengths, lines, len(items), parsed.problems, ignored, draws)


def usable_cores() -> int:
    """Cores this process may run on (respects taskset, cgroups cpusets and SLURM binding)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def worker_count(num_proc: Optional[int], total_bytes: int, chunk_bytes: int = CHUNK_BYTES) -> int:
    """Tokenizer processes for `total_bytes` of lines: `num_proc` (default every usable core), at most one
    per chunk. 1 means no worker processes: the lines are tokenized in this process.
    """
    wanted = usable_cores() if num_proc is None else num_proc
    chunks = max(1, -(-total_bytes // chunk_bytes))
    return max(1, min(wanted, chunks))


def ordered_map(function: Callable[[Any], Any], spans: Iterable[Any], workers: int) -> Iterator[Any]:
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


def _dispatch(spans: Iterator[Any], processes: list[Any], pipes: list[Any]) -> Iterator[Any]:
    """Keep every worker busy, at most IN_FLIGHT_PER_WORKER spans each; yield results in order."""
    limit = len(pipes) * IN_FLIGHT_PER_WORKER
    busy = [0] * len(pipes)
    ready: dict[int, Any] = {}
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


def _worker_main(function: Callable[[Any], Any], pipe: Any, parent_pid: int) -> None:
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
