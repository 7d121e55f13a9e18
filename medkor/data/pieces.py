"""Tokenized pieces: every good record of a chunk of whole lines, stored by content.

A data file is cut into pieces of whole lines at content-defined places: after a
line whose hash falls under a threshold proportional to its length (about one cut
per `piece_bytes`, none before a quarter of it, always one at four times it). A cut
depends only on the lines around it, so an edited line or an appended tail changes
the piece that holds it (and at most the next, until the cuts meet again), never the
rest of the file. A piece's key is how its lines are tokenized (`key.piece_context`)
plus the hash of its bytes; where the piece sits (file, offset, line number) is not in
it, so renamed, reordered or copied files reuse their pieces.

Layout under `<cache_dir>/.pieces/` (hidden: not a cache, never taken for one):
    <key32>.piece          one piece (written to `.tmp-<key32>-...` and renamed: whole or absent)
    plans/<hash>-<size>.json  the cuts of a file, by its content hash and `piece_bytes`
    claims/<id>.json, .lock   the piece keys a live build uses (`medkor cache gc` keeps them)

A piece file is `MAGIC`, a JSON header (counts, bad lines, array sizes, xxh3-64 of the
payload) and the arrays. The payload hash is checked on every read, so a flipped byte
is found before its tokens can reach a row; a damaged piece is rebuilt from its lines.
"""

from __future__ import annotations

import json
import logging
import mmap
import os
import secrets
import struct
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional

import numpy as np
import xxhash

from medkor.data.encode import ChunkEncoder, EncodedChunk, ordered_map, worker_count
from medkor.data.key import PIECE_BYTES, CacheError, CacheRequest, Resolved, piece_context, piece_key
from medkor.data.lock import BuildLock
from medkor.data.sources import LineSpan, check_file
from medkor.run.atomic import atomic_write_text, host_tag, writer_alive

log = logging.getLogger("medkor.data")

PIECES_DIR = ".pieces"
PIECE_SUFFIX = ".piece"
MAGIC = b"MKPIECE1"
TMP_PREFIX = ".tmp-"
STALE_TMP_SECONDS = 3600  # a temporary piece this old belongs to no live writer
_HEADER = struct.Struct("<8sI")


@dataclass(frozen=True)
class PieceRef:
    """Where a piece's lines are (file, byte range, first line) and its key."""

    key: str
    path: Path
    offset: int
    length: int
    first_line: int

    def span(self) -> LineSpan:
        """The piece's lines; numbered from 1 inside the piece (a piece does not know where it sits)."""
        return LineSpan(self.path, self.offset, self.length, 1)


class PieceDamaged(CacheError):
    """A piece file that is not what was written (checksum, size or header)."""


def cut_file(path: Path, piece_bytes: int) -> tuple[list[tuple[int, int, int, str]], str]:
    """The file's pieces as (offset, length, first_line, xxh3-128 of the bytes), and the file's xxh3-128."""
    low, high = max(1, piece_bytes // 4), piece_bytes * 4
    scale = (1 << 64) // max(1, piece_bytes)
    line_hash = xxhash.xxh3_64_intdigest
    whole = xxhash.xxh3_128()
    cuts: list[tuple[int, int, int, str]] = []
    offset, first, size, count = 0, 1, 0, 0
    lines: list[bytes] = []

    def cut() -> None:
        nonlocal offset, first, size, count, lines
        data = b"".join(lines)
        whole.update(data)
        cuts.append((offset, size, first, xxhash.xxh3_128_hexdigest(data)))
        offset, first, size, count, lines = offset + size, first + count, 0, 0, []

    with open(path, "rb") as handle:
        for line in handle:
            lines.append(line)
            size += len(line)
            count += 1
            if size >= high or (size >= low and line_hash(line) < len(line) * scale):
                cut()
    if lines:
        cut()
    return cuts, whole.hexdigest()


class ContentStore:
    """Files named by their content key in one hidden folder of a cache directory, written whole
    (temporary name, then rename); pieces and row segments are two such stores."""

    folder = PIECES_DIR
    suffix = PIECE_SUFFIX

    def __init__(self, cache_dir: Path) -> None:
        self.root = Path(cache_dir) / self.folder

    def path(self, key: str) -> Path:
        return self.root / f"{key}{self.suffix}"

    def has(self, key: str) -> bool:
        return self.path(key).is_file()

    def keys(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name[: -len(self.suffix)] for p in self.root.iterdir()
                      if p.name.endswith(self.suffix) and not p.name.startswith("."))

    def temporary(self, key: str) -> Path:
        """A private name to write `key` under before renaming it into place (whose it is, for the sweep)."""
        self.root.mkdir(parents=True, exist_ok=True)
        return self.root / f"{TMP_PREFIX}{key}-{host_tag()}-{os.getpid()}-{secrets.token_hex(4)}"

    def remove_stale_temporaries(self, older_than: float = STALE_TMP_SECONDS) -> list[Path]:
        """Temporary files a killed writer left: its process is gone from this host, or the file is
        so old that no live writer owns it."""
        removed = []
        if not self.root.is_dir():
            return removed
        now = time.time()
        for path in self.root.iterdir():
            if not (path.name.startswith(TMP_PREFIX) and path.is_file()):
                continue
            parts = path.name.rsplit("-", 3)  # .tmp-<key>-<host>-<pid>-<rand>
            dead = len(parts) == 4 and parts[2].isdigit() and not writer_alive(parts[1], int(parts[2]))
            try:
                if dead or now - path.stat().st_mtime > older_than:
                    path.unlink()
                    removed.append(path)
            except FileNotFoundError:
                pass
        return removed


class PieceStore(ContentStore):
    """The pieces of one cache directory."""

    # --- cuts of a file, remembered by content -------------------------------------------------
    def cuts(self, path: Path, content_hash: str, piece_bytes: int) -> list[tuple[int, int, int, str]]:
        """The file's cuts, remembered by its content hash; a file read for them must still hash to it."""
        memo = self.root / "plans" / f"{content_hash[:32]}-{piece_bytes}.json"
        try:
            return [tuple(c) for c in json.loads(memo.read_text())]  # type: ignore[misc]
        except (OSError, ValueError):
            pass
        cuts, digest = cut_file(path, piece_bytes)
        if digest != content_hash:
            raise CacheError(f"{path} changed while it was being read; run again once nothing writes to it")
        try:
            memo.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(memo, json.dumps(cuts), what="piece plan")
        except OSError:
            pass  # only not remembered
        return cuts

    # --- one piece -------------------------------------------------------------------------------
    def write(self, key: str, chunk: EncodedChunk) -> Path:
        """Write a piece whole under its key (temporary name, then rename)."""
        arrays = [("lengths", chunk.lengths.astype(np.int64)), ("lines", chunk.line_numbers.astype(np.int64))]
        if chunk.draws is not None:
            arrays.append(("draws", chunk.draws.astype(np.uint64)))
        arrays.append(("values", chunk.values.astype(np.int32)))
        if chunk.ignored is not None:
            arrays.append(("ignored", chunk.ignored.astype(np.bool_)))
        payload = b"".join(a.tobytes() for _, a in arrays)
        header = json.dumps({
            "records": chunk.records,
            "problems": chunk.problems,
            "arrays": [[name, a.dtype.str, len(a)] for name, a in arrays],
            "xxh3": xxhash.xxh3_64_hexdigest(payload),
        }, ensure_ascii=False).encode("utf-8")
        header += b" " * (-(_HEADER.size + len(header)) % 8)
        final = self.path(key)
        tmp = self.temporary(key)
        try:
            with open(tmp, "wb") as handle:
                handle.write(_HEADER.pack(MAGIC, len(header)))
                handle.write(header)
                handle.write(payload)
            os.replace(tmp, final)  # no fsync: a piece torn by a power cut fails its checksum and is rebuilt
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return final

    def read(self, key: str) -> EncodedChunk:
        """A piece, its payload checked against the hash in its header."""
        path = self.path(key)
        with open(path, "rb") as handle:  # mapped, not read: the arrays are views of the page cache
            data = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) if os.fstat(handle.fileno()).st_size else b""
        try:
            magic, size = _HEADER.unpack_from(data)
            if magic != MAGIC:
                raise ValueError("not a piece file")
            header = json.loads(data[_HEADER.size : _HEADER.size + size])
            start = _HEADER.size + size
            payload = memoryview(data)[start:]
            need = sum(np.dtype(dtype).itemsize * count for _, dtype, count in header["arrays"])
            if len(payload) != need:
                raise ValueError(f"{len(payload)} payload bytes, header says {need}")
            if xxhash.xxh3_64_hexdigest(payload) != header["xxh3"]:
                raise ValueError("content hash differs from the one written")
        except (ValueError, KeyError, TypeError, struct.error) as err:
            raise PieceDamaged(f"{path}: damaged piece ({err})") from None
        arrays: dict[str, np.ndarray] = {}
        at = start
        for name, dtype, count in header["arrays"]:
            arrays[name] = np.frombuffer(data, dtype=np.dtype(dtype), count=count, offset=at)
            at += np.dtype(dtype).itemsize * count
        problems = [(int(line), str(text)) for line, text in header["problems"]]
        return EncodedChunk(arrays["values"], arrays["lengths"], arrays["lines"], int(header["records"]), problems,
                            arrays.get("ignored"), arrays.get("draws"))

    def plans(self) -> list[Path]:
        folder = self.root / "plans"
        return sorted(folder.glob("*.json")) if folder.is_dir() else []


def plan_pieces(request: CacheRequest, resolved: Resolved, store: PieceStore) -> list[PieceRef]:
    """The split's pieces in file order (the files are only read when their cuts are not remembered)."""
    selection = request.selection
    for path in selection.files:
        check_file(Path(path))
    context = piece_context(resolved.inputs, selection)
    refs = []
    for path, info in zip(selection.files, resolved.inputs["files"]):
        for offset, length, first, bytes_hash in store.cuts(Path(path), info["xxh3"], request.piece_bytes):
            refs.append(PieceRef(piece_key(context, bytes_hash), Path(path), offset, length, first))
    return refs


class PieceBuilder:
    """Tokenize one piece's lines and store the piece (runs in a worker process or in-process)."""

    def __init__(self, encoder: ChunkEncoder, store: PieceStore, keep: bool = True) -> None:
        self.encoder = encoder
        self.store = store
        self.keep = keep

    def __call__(self, ref: PieceRef) -> Optional[EncodedChunk]:
        chunk = self.encoder(ref.span())
        self.store.write(ref.key, chunk)
        return chunk if self.keep else None


def _unique_missing(refs: Iterable[PieceRef], store: PieceStore) -> list[PieceRef]:
    seen: set[str] = set()
    missing = []
    for ref in refs:
        if ref.key not in seen:
            seen.add(ref.key)
            if not store.has(ref.key):
                missing.append(ref)
    return missing


def build_pieces(refs: list[PieceRef], store: PieceStore, make_encoder: Callable[[], ChunkEncoder],
                 num_proc: Optional[int], only: Optional[Callable[[int], bool]] = None,
                 piece_bytes: int = PIECE_BYTES) -> int:
    """Build the missing pieces among `refs` (those whose index in `refs` `only` accepts); how many were built.

    Processes that build disjoint selections of the same `refs` at once share the work
    (a piece is written whole under its key, by whoever builds it).
    """
    chosen = [ref for index, ref in enumerate(refs) if only is None or only(index)]
    missing = _unique_missing(chosen, store)
    if not missing:
        return 0
    builder = PieceBuilder(make_encoder(), store, keep=False)
    workers = min(worker_count(num_proc, sum(ref.length for ref in missing), piece_bytes), len(missing))
    results = ordered_map(builder, missing, workers)
    try:
        for _ in results:
            pass
    finally:
        results.close()
    return len(missing)


def pieces_in_order(refs: list[PieceRef], store: PieceStore, make_encoder: Callable[[], ChunkEncoder],
                    num_proc: Optional[int], piece_bytes: int = PIECE_BYTES,
                    rebuilt: Optional[set[str]] = None) -> Iterator[tuple[PieceRef, EncodedChunk]]:
    """Every piece of `refs` in order: stored ones read (checked), missing ones built on the way.

    Missing pieces are built by worker processes just ahead of the reader, so a
    consumer that stops early (`max_samples`) leaves the rest of the corpus untokenized.
    A stored piece that is damaged or vanished (`medkor cache gc` in between) is rebuilt
    here, with a warning, and its key added to `rebuilt` (so the build counts it as tokenized).
    """
    missing = _unique_missing(refs, store)
    pending = {ref.key for ref in missing}
    encoder: Optional[ChunkEncoder] = None
    built: Iterator[Any] = iter(())
    if missing:
        encoder = make_encoder()
        workers = min(worker_count(num_proc, sum(r.length for r in missing), piece_bytes), len(missing))
        built = ordered_map(PieceBuilder(encoder, store), missing, workers)
    try:
        for ref in refs:
            if ref.key in pending:
                pending.discard(ref.key)
                yield ref, next(built)  # type: ignore[misc]
                continue
            try:
                chunk = store.read(ref.key)
            except (PieceDamaged, FileNotFoundError) as err:
                if isinstance(err, PieceDamaged):
                    log.warning("%s; tokenizing %s lines %d.. again", err, ref.path, ref.first_line)
                encoder = encoder or make_encoder()
                chunk = PieceBuilder(encoder, store)(ref)  # type: ignore[assignment]
                if rebuilt is not None:
                    rebuilt.add(ref.key)
            yield ref, chunk  # type: ignore[misc]
    finally:
        close = getattr(built, "close", None)
        if close is not None:
            close()


# --- claims: the pieces a live build uses ------------------------------------------------------
class Claim:
    """While held, `medkor cache gc` keeps `keys` (a lock file shows the claim is live)."""

    def __init__(self, store: ContentStore, name: str, keys: Iterable[str]) -> None:
        self.folder = store.root / "claims"
        self.stem = f"{name}-{host_tag()}-{os.getpid()}-{secrets.token_hex(4)}"
        self.keys = sorted(set(keys))
        self.lock: Optional[BuildLock] = None

    def __enter__(self) -> "Claim":
        self.folder.mkdir(parents=True, exist_ok=True)
        self.lock = BuildLock(self.folder / f"{self.stem}.lock", what=f"pieces of {self.stem}")
        self.lock.acquire()
        self._write()
        return self

    def add(self, keys: Iterable[str]) -> None:
        """Claim more keys (before writing or reusing them, so a collection in between keeps them)."""
        new = set(keys) - set(self.keys)
        if new:
            self.keys = sorted(set(self.keys) | new)
            self._write()

    def _write(self) -> None:
        atomic_write_text(self.folder / f"{self.stem}.json", json.dumps({"keys": self.keys}), what="claim")

    def __exit__(self, *exc: Any) -> None:
        (self.folder / f"{self.stem}.json").unlink(missing_ok=True)
        if self.lock is not None:
            self.lock.release()
            self.lock.path.unlink(missing_ok=True)


def claimed_keys(store: ContentStore) -> set[str]:
    """Piece keys of live claims; claims whose builder is gone are removed."""
    folder = store.root / "claims"
    keys: set[str] = set()
    if not folder.is_dir():
        return keys
    for record in sorted(folder.glob("*.json")):
        lock = BuildLock(record.with_suffix(".lock"), quiet=True)
        if not lock.try_acquire():
            try:
                keys.update(json.loads(record.read_text())["keys"])
            except (OSError, ValueError, KeyError):
                pass
            continue
        try:  # nobody holds it: the build that claimed these is gone
            record.unlink(missing_ok=True)
        finally:
            lock.release()
            lock.path.unlink(missing_ok=True)
    return keys
