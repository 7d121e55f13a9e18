"""The tokenized-data cache: store (pieces -> row segments), lock, publish, check, open.

A request takes three steps, in this order: its key (`key.resolve`: key inputs, key,
folder), the store (a hit, or pieces tokenized where missing and packed into row
segments under the key's lock, then published) and the open (`open_cache`: manifest,
segments checked, memory-mapped).

Layout under `cache_dir`:
    <split>-<key20>/manifest.json, pieces.json  a published cache: its facts and row segments, in
                                                order (manifest written last), and its pieces
    <split>-<key20>.lock                        serialises builders of that key
    .<split>-<key20>.partial-<host>-<pid>-<rand>/  a build in progress (or a dead one's, swept)
    .trash-<split>-<key20>-rm/                  a cache `medkor cache rm` is removing
    .pieces/                                    tokenized pieces by content (see pieces.py)
    .segments/                                  packed rows of pieces, shared by caches (see segments.py)
    fingerprints.json                           remembered content hashes (see fingerprint.py)

A folder at a published name only ever appears by publishing a finished staging
folder whose manifest was written and synced last (`medkor.run.publish.publish_folder`:
one rename, or one atomic exchange with a damaged or overwritten cache), so a build killed at any moment
leaves nothing that can be taken for a cache, and the previous caches, pieces and segments
stay usable (segments are written whole and synced before a manifest names them).

Checked as read: a process that finds or opens a cache compares each segment's content
hash with its manifest. The hash is remembered with the file's (device, inode, size,
mtime, ctime), as data files' hashes are, so it is computed once per change of the
file: any write to it (flipped ids, same size) moves its ctime and is found before a
row is read, while a warm start only stats the segments.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Optional

from medkor.data.backends import stored_special_ids, text_backend
from medkor.data.build import build_split, special_ids, whole_documents
from medkor.data.encode import ChunkEncoder
from medkor.data.fingerprint import FingerprintMemo, hash_bytes_of
from medkor.data.key import (  # noqa: F401  (re-exported: the names callers know this module by)
    CACHE_VERSION, CacheError, CacheRequest, Resolved, TokenizerLoader, cache_key, folder_name, key_inputs, resolve,
    save_quietly,
)
from medkor.data.lock import DEFAULT_TIMEOUT, BuildLock, LockTimeout
from medkor.data.pieces import Claim, PieceRef, PieceStore, build_pieces, pieces_in_order, plan_pieces
from medkor.data.readers import mark_reader
from medkor.data.rows import CacheRows, unreadable
from medkor.data.segments import SegmentStore
from medkor.data.text_rows import write_segments
from medkor.run.atomic import human_size
from medkor.run.publish import OLD_MARK, STAGING_MARK, discard, publish_folder, staging_for, sweep_leftovers

log = logging.getLogger("medkor.data")

MANIFEST = "manifest.json"
PIECES_LIST = "pieces.json"
TMP_PREFIX = ".tmp-"
TRASH_PREFIX = ".trash-"
DISK_FACTOR = 4.5  # pieces + rows + temporaries, per byte of JSONL (generous)


@dataclass
class CacheResult:
    """The outcome of finding or building one split's cache."""

    split: str
    status: str  # "hit" | "built"
    path: Path
    key: str
    rows: int
    tokens: int
    seconds: float
    manifest: dict[str, Any] = field(repr=False, default_factory=dict)

    @property
    def fill_rate(self) -> float:
        """Useful tokens / row tokens (rows x max_length)."""
        return float(self.manifest.get("fill_rate", 0.0))

    def summary(self) -> dict[str, Any]:
        return {
            "split": self.split,
            "status": self.status,
            "path": str(self.path),
            "key": self.key,
            "rows": self.rows,
            "tokens": self.tokens,
            "fill_rate": round(self.fill_rate, 4),
            "seconds": round(self.seconds, 3),
        }


def read_manifest(folder: Path) -> dict[str, Any]:
    with open(folder / MANIFEST, encoding="utf-8") as handle:
        return json.load(handle)


def check_manifest(folder: Path, key: Optional[str] = None) -> Optional[str]:
    """Why `folder` is not a usable cache (for `key`), or None. Cheap: stats, no hashing."""
    return _checked_manifest(folder, key)[0]


def _checked_manifest(folder: Path, key: Optional[str]) -> tuple[Optional[str], dict[str, Any]]:
    """(why `folder` is not a usable cache, or None; its manifest): read once, for every check after."""
    if not folder.is_dir():
        return "no cache folder for this key", {}
    try:
        manifest = read_manifest(folder)
    except FileNotFoundError:
        return f"{folder / MANIFEST} is missing", {}
    except (OSError, ValueError) as err:
        return f"{folder / MANIFEST} is unreadable ({err})", {}
    if manifest.get("version") != CACHE_VERSION:
        return f"cache format version {manifest.get('version')} != {CACHE_VERSION}", manifest
    if key is not None and manifest.get("key") != key:
        return "manifest key does not match", manifest
    for name, info in manifest.get("files", {}).items():
        path = folder / name
        if not path.is_file():
            return f"{path} is missing", manifest
        if path.stat().st_size != info.get("size"):
            return f"{path} has {path.stat().st_size} bytes, manifest says {info.get('size')}", manifest
    if not isinstance(manifest.get("segments"), list):
        return f"{folder / MANIFEST} lists no row segments", manifest
    return None, manifest


def _published(cache_dir: Path) -> list[Path]:
    if not cache_dir.is_dir():
        return []
    return sorted(p for p in cache_dir.iterdir() if p.is_dir() and not p.name.startswith("."))


def explain_miss(cache_dir: Path, inputs: dict[str, Any]) -> str:
    """Compare with the other caches of the split: what changed since they were built."""
    split = inputs["params"]["split"]
    best: Optional[list[str]] = None
    candidates = []
    for folder in _published(cache_dir):
        try:
            manifest = read_manifest(folder)
            candidates.append((str(manifest.get("created", "")), folder, manifest["inputs"]))
        except (OSError, ValueError, KeyError):
            continue
    for _, folder, other in sorted(candidates, key=lambda c: c[0], reverse=True):  # newest first wins a tie
        if other.get("params", {}).get("split") != split:
            continue
        diffs = []
        if other.get("version") != inputs["version"]:
            diffs.append("cache format version")
        if other.get("tokenizer") != inputs["tokenizer"]:
            diffs.append("tokenizer content")
        old_files = {f["name"]: f for f in other.get("files", [])}
        new_files = {f["name"]: f for f in inputs["files"]}
        for name in sorted(set(old_files) | set(new_files)):
            if name not in old_files:
                diffs.append(f"new file {name}")
            elif name not in new_files:
                diffs.append(f"file {name} gone")
            elif old_files[name] != new_files[name]:
                diffs.append(f"{name} content changed ({old_files[name]['size']} -> {new_files[name]['size']} bytes)")
        for param, value in inputs["params"].items():
            if other.get("params", {}).get(param) != value:
                diffs.append(f"{param} {other.get('params', {}).get(param)!r} -> {value!r}")
        if best is None or len(diffs) < len(best):
            best = diffs
            best_name = folder.name
    if best is None:
        return f"no cache of split {split!r} in {cache_dir}"
    return f"closest cache {best_name} differs in: {', '.join(best) or 'nothing (damaged?)'}"


def sweep(cache_dir: Path, name: Optional[str] = None) -> list[Path]:
    """Remove leftover build and trash folders (of one key when `name` is given).

    Staging folders of builders that died on this host go (`publish.sweep_leftovers`);
    with the key's lock held no live builder owns a `.tmp-`/`.trash-` folder of it either.
    """
    if not cache_dir.is_dir():
        return []
    removed = sweep_leftovers(cache_dir, name)
    for path in cache_dir.iterdir():
        for prefix in (TMP_PREFIX, TRASH_PREFIX):
            if path.name.startswith(prefix) and (name is None or path.name.startswith(f"{prefix}{name}-")):
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path)
    return removed


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def _check_disk(request: CacheRequest) -> None:
    need = int(sum(Path(p).stat().st_size for p in request.selection.files) * DISK_FACTOR)
    free = shutil.disk_usage(request.cache_dir).free
    if free < need:
        raise CacheError(
            f"{request.cache_dir}: building the {request.split!r} cache needs about {human_size(need)} "
            f"free, only {human_size(free)} is; free space or set cache_dir to a larger disk"
        )


def segment_paths(folder: Path, manifest: dict[str, Any]) -> list[tuple[str, int]]:
    """(segment file, rows taken) of a cache, in row order."""
    store = SegmentStore(folder.parent)
    return [(store.name(key), int(rows)) for key, rows, _ in manifest["segments"]]


def check_rows(folder: Path, manifest: dict[str, Any], memo: FingerprintMemo) -> Optional[str]:
    """Why a segment of the cache differs from what was built, or None. Hashes one only when its stat
    changed since it was written or last found good."""
    store = SegmentStore(folder.parent, memo)
    for key, _, digest in manifest["segments"]:
        reason = store.check(key, digest)
        if reason is not None:
            return reason
    return None


def check_cache(folder: Path, key: Optional[str], memo: FingerprintMemo) -> tuple[Optional[str], dict[str, Any]]:
    """(why `folder` is not a usable cache for `key`, or None; its manifest): manifest, file sizes,
    segments' content."""
    reason, manifest = _checked_manifest(folder, key)
    if reason is not None:
        return reason, manifest
    return check_rows(folder, manifest, memo), manifest


@dataclass
class _Built:
    index: int
    tmp: Path
    final: Path
    manifest: dict[str, Any]
    seconds: float


def _encoder_factory(request: CacheRequest, load_tokenizer: Callable[[], Any],
                     fingerprint: str) -> Callable[[], ChunkEncoder]:
    """Makes the encoder of the request's pieces, loading what it needs only then: for plain text the
    stored backend of this tokenizer content (`backends.py`), for the other formats the tokenizer."""
    selection = request.selection
    draw_seed = selection.seed if selection.val_fraction > 0 else None

    def make() -> ChunkEncoder:
        if not selection.spec.examples:
            backend, (bos, eos, _) = text_backend(Path(request.cache_dir), fingerprint, load_tokenizer)
            return ChunkEncoder(selection.spec, backend, bos, eos, None, draw_seed)
        tokenizer = load_tokenizer()
        bos, eos, _ = special_ids(tokenizer)
        return ChunkEncoder(selection.spec, whole_documents(tokenizer), bos, eos, tokenizer, draw_seed)

    return make


def _special_ids(request: CacheRequest, resolved: Resolved, load_tokenizer: Callable[[], Any]) -> tuple[int, int, int]:
    """(bos, eos, pad), without loading the tokenizer where this tokenizer content was seen before."""
    stored = stored_special_ids(Path(request.cache_dir), resolved.inputs["tokenizer"])
    return stored if stored is not None else special_ids(load_tokenizer())


def _build(request: CacheRequest, resolved: Resolved, load_tokenizer: Callable[[], Any], claims: ExitStack,
           memo: FingerprintMemo) -> tuple[Path, dict[str, Any]]:
    """Build into a temporary folder next to the final one; returns (folder, manifest), not yet published.

    The pieces and segments it uses stay claimed (`claims`) until the caller has published.
    """
    final = resolved.folder
    store = PieceStore(request.cache_dir)
    segments = SegmentStore(request.cache_dir, memo)
    store.remove_stale_temporaries()
    segments.remove_stale_temporaries()
    refs = plan_pieces(request, resolved, store)
    claims.enter_context(Claim(store, final.name, [ref.key for ref in refs]))
    segment_claim = claims.enter_context(Claim(segments, final.name, []))
    tmp = staging_for(final)  # .<name>.partial-<host>-<pid>-<rand>: whose it is, for the sweep
    start = time.perf_counter()
    counts = {"read": 0, "tokenized": 0}
    missing = {ref.key for ref in refs if not store.has(ref.key)}
    rebuilt: set[str] = set()  # stored pieces found damaged and tokenized again

    def source(wanted: list[PieceRef]):
        encoder = _encoder_factory(request, load_tokenizer, resolved.inputs["tokenizer"])
        for ref, chunk in pieces_in_order(wanted, store, encoder, request.num_proc, request.piece_bytes, rebuilt):
            counts["tokenized" if ref.key in missing or ref.key in rebuilt else "read"] += 1
            missing.discard(ref.key)
            yield ref, chunk

    try:
        stats = build_split(request, refs, source, segments, segment_claim.add, examples_key=resolved.key[:32],
                            reuse=not request.overwrite)
        bos, eos, pad = _special_ids(request, resolved, load_tokenizer)
        used = list(dict.fromkeys(ref.key for ref in refs))
        (tmp / PIECES_LIST).write_text(json.dumps(used), encoding="utf-8")
        manifest = {
            "version": CACHE_VERSION,
            "key": resolved.key,
            "inputs": resolved.inputs,
            "split": request.split,
            "tokenizer_path": request.tokenizer_path,
            "data_dir": str(request.data_dir),
            "rows": stats.rows,
            "tokens": stats.tokens,
            "learned_tokens": stats.learned,
            "fill_rate": round(stats.fill_rate, 6),
            "documents": stats.documents,
            "skipped": stats.skipped,
            "skipped_examples": stats.skipped_examples,
            "long_skipped": stats.long_skipped,
            "long_examples": stats.long_examples,
            "max_length": request.max_length,
            "packing": request.packing,
            "bos_token_id": bos,
            "eos_token_id": eos,
            "pad_token_id": pad,
            "pieces": {"used": len(used), "tokenized": counts["tokenized"],
                       "reused": len(used) - counts["tokenized"]},
            "segments_built": {"written": stats.segments_written, "reused": stats.segments_reused},
            "segments": [[key, rows, digest] for key, rows, digest in stats.segments],
            "files": {
                PIECES_LIST: {"size": (tmp / PIECES_LIST).stat().st_size, "xxh3": hash_bytes_of(tmp / PIECES_LIST)},
            },
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "build_seconds": round(time.perf_counter() - start, 3),
        }
        manifest_tmp = tmp / f".{MANIFEST}.partial"
        manifest_tmp.write_text(json.dumps(manifest, indent=1, ensure_ascii=False), encoding="utf-8")
        _fsync_file(manifest_tmp)
        os.rename(manifest_tmp, tmp / MANIFEST)  # the manifest appears last, whole
        _fsync_dir(tmp)
        log.info("%s: pieces: %d tokenized, %d reused; row segments: %d written, %d reused", request.split,
                 counts["tokenized"], len(used) - counts["tokenized"], stats.segments_written, stats.segments_reused)
        if stats.skipped:
            log.warning(
                "%s: skipped %d bad records (on_bad_record: skip), e.g. %s",
                request.split, stats.skipped, stats.skipped_examples[0],
            )
        if stats.long_skipped:
            log.warning(
                "%s: skipped %d examples longer than max_length (on_long_example: skip), e.g. %s",
                request.split, stats.long_skipped, stats.long_examples[0],
            )
        return tmp, manifest
    except BaseException:
        discard(tmp)
        raise


def _hit(request: CacheRequest, folder: Path, key: str, start: float, manifest: dict[str, Any]) -> CacheResult:
    return CacheResult(
        request.split, "hit", folder, key, manifest["rows"], manifest["tokens"], time.perf_counter() - start, manifest
    )


def _sweep_if_idle(cache_dir: Path, name: str) -> None:
    """Remove a key's leftover build folders when no builder of that key is running."""
    marks = (f"{TMP_PREFIX}{name}-", f"{TRASH_PREFIX}{name}-", f".{name}{STAGING_MARK}", f".{name}{OLD_MARK}")
    if not any(p.name.startswith(marks) for p in cache_dir.iterdir()):
        return
    lock = BuildLock(cache_dir / f"{name}.lock", what=name)
    if not lock.try_acquire():
        return  # a live builder owns them
    try:
        for stale in sweep(cache_dir, name):
            log.info("removed stale build folder %s", stale)
    finally:
        lock.release()


class _Memos:
    """One remembered-hash memo per cache directory, loaded once and saved at the end."""

    def __init__(self) -> None:
        self.memos: dict[Path, FingerprintMemo] = {}

    def __call__(self, cache_dir: Path) -> FingerprintMemo:
        cache_dir = Path(cache_dir)
        if cache_dir not in self.memos:
            self.memos[cache_dir] = FingerprintMemo(cache_dir)
        return self.memos[cache_dir]

    def save(self) -> None:
        for memo in self.memos.values():
            save_quietly(memo)


def ensure_cache(request: CacheRequest, load_tokenizer: Optional[Callable[[], Any]] = None) -> CacheResult:
    """Find the split's cache or build it (one builder per key; others wait, then load)."""
    return ensure_caches([request], load_tokenizer)[0]


def ensure_caches(requests: list[CacheRequest], load_tokenizer: Optional[Callable[[], Any]] = None) -> list[CacheResult]:
    """Find or build the caches of several splits, all or nothing.

    Hits are served without a lock. The missing splits are built under their keys'
    locks (taken in name order, so builders of overlapping sets cannot deadlock),
    smallest input first so that bad data in a small split fails fast, and are
    published only once every one of them built: bad input in any split leaves
    nothing published (pieces tokenized on the way are kept; the next build reuses them).
    """
    start = time.perf_counter()
    loaders: dict[str, Callable[[], Any]] = {}
    memos = _Memos()

    def loader_of(request: CacheRequest) -> Callable[[], Any]:
        if load_tokenizer is not None:
            return load_tokenizer
        return loaders.setdefault(request.tokenizer_path, TokenizerLoader(request.tokenizer_path))

    results: dict[int, CacheResult] = {}
    misses: list[tuple[int, Resolved, str]] = []
    for index, request in enumerate(requests):
        request.cache_dir = Path(request.cache_dir)
        request.cache_dir.mkdir(parents=True, exist_ok=True)
        memo = memos(request.cache_dir)
        resolved = resolve(request, loader_of(request), memo)
        final = resolved.folder
        if not request.overwrite:
            reason, manifest = check_cache(final, resolved.key, memo)
            if reason is None:
                log.info("cache hit for %s: %s", request.split, final)
                _sweep_if_idle(request.cache_dir, final.name)
                results[index] = _hit(request, final, resolved.key, start, manifest)
                continue
            why = reason if final.exists() else explain_miss(request.cache_dir, resolved.inputs)
        else:
            why = "overwrite_cache is set"
        misses.append((index, resolved, why))
    if not misses:
        memos.save()
        return [results[i] for i in range(len(requests))]

    locks = []
    built: list[_Built] = []
    try:
        with ExitStack() as claims:
            for index, resolved, why in sorted(misses, key=lambda m: m[1].name):
                request = requests[index]
                lock = BuildLock(request.cache_dir / f"{resolved.name}.lock", what=resolved.name)
                if not lock.try_acquire():
                    log.info("cache for %s is being built by another process; waiting for %s", request.split, lock.path)
                    try:
                        lock.acquire(timeout=DEFAULT_TIMEOUT if request.lock_timeout is None else request.lock_timeout)
                    except LockTimeout as err:
                        raise CacheError(str(err)) from None
                locks.append(lock)
            by_size = sorted(misses, key=lambda m: sum(Path(f).stat().st_size for f in requests[m[0]].selection.files))
            for index, resolved, why in by_size:
                request = requests[index]
                final = resolved.folder
                memo = memos(request.cache_dir)
                if not request.overwrite:  # another builder may have published it meanwhile
                    reason, manifest = check_cache(final, resolved.key, memo)
                    if reason is None:
                        log.info("cache hit for %s after waiting: %s", request.split, final)
                        results[index] = _hit(request, final, resolved.key, start, manifest)
                        continue
                for stale in sweep(request.cache_dir, final.name):
                    log.info("removed stale build folder %s", stale)
                if final.exists() and not request.overwrite:
                    # a damaged folder at the published name: replace it like an overwrite
                    log.warning("replacing damaged cache %s (%s)", final, why)
                log.info("cache miss for %s (%s); building %s", request.split, why, final)
                _check_disk(request)
                split_start = time.perf_counter()
                tmp, manifest = _build(request, resolved, loader_of(request), claims, memo)
                built.append(_Built(index, tmp, final, manifest, time.perf_counter() - split_start))
            # every split built: publish them all (the claims end once they are published)
            while built:
                item = built.pop(0)
                request = requests[item.index]
                manifest = item.manifest
                publish_folder(item.tmp, item.final)  # an old folder at the name (damaged, overwritten) goes last
                results[item.index] = CacheResult(
                    request.split, "built", item.final, manifest["key"], manifest["rows"], manifest["tokens"],
                    item.seconds, manifest,
                )
    finally:
        for item in built:  # a later split failed: publish none of the finished ones
            discard(item.tmp)
        for lock in reversed(locks):
            lock.release()
        memos.save()
    return [results[i] for i in range(len(requests))]


def share_out(sizes: list[int], world: int) -> list[int]:
    """The rank of each unit of work of these sizes: largest first, each to the least loaded rank.

    Pieces vary from a quarter to four times their average size, so taking every n-th one
    could leave one rank with much more to do; this is the same on every rank.
    """
    load = [0] * world
    owner = [0] * len(sizes)
    for index in sorted(range(len(sizes)), key=lambda i: (-sizes[i], i)):
        rank = min(range(world), key=lambda r: (load[r], r))
        owner[index] = rank
        load[rank] += sizes[index]
    return owner


def build_pieces_for(requests: list[CacheRequest], rank: int = 0, world: int = 1,
                     num_proc: Optional[int] = None, load_tokenizer: Optional[Callable[[], Any]] = None) -> int:
    """Tokenize this rank's share of the missing pieces of several splits, then pack the row segments
    of those pieces; how many pieces were built.

    The pieces of all requests form one list, in request order and file order, each key
    once; it is the same in every process that sees the same files, and `share_out`
    gives each of `world` ranks its pieces, so ranks share the work. Each text split's
    segment of a piece is packed by the rank that owns the piece (a split under
    max_samples packs its own, in `ensure_caches`). `ensure_caches` then only reads
    segment facts and packs the tail.
    """
    memos = _Memos()
    loaders: dict[str, Callable[[], Any]] = {}
    unique: dict[str, PieceRef] = {}
    fingerprints: dict[str, str] = {}  # split -> its tokenizer's content fingerprint
    groups: list[tuple[CacheRequest, list[PieceRef]]] = []
    for request in requests:
        request.cache_dir = Path(request.cache_dir)
        request.cache_dir.mkdir(parents=True, exist_ok=True)
        loader = load_tokenizer or loaders.setdefault(request.tokenizer_path, TokenizerLoader(request.tokenizer_path))
        resolved = resolve(request, loader, memos(request.cache_dir))
        fingerprints[request.split] = resolved.inputs["tokenizer"]
        refs = plan_pieces(request, resolved, PieceStore(request.cache_dir))
        for ref in refs:
            unique.setdefault(ref.key, ref)
        groups.append((request, refs))
    memos.save()
    owners = dict(zip(unique, share_out([ref.length for ref in unique.values()], world)))
    mine = {key for key, owner in owners.items() if owner == rank}
    count = 0
    built: set[str] = set()
    for request, refs in groups:
        chosen = [ref for ref in refs if ref.key in mine and ref.key not in built]
        built.update(ref.key for ref in chosen)
        if not chosen:
            continue
        loader = load_tokenizer or loaders[request.tokenizer_path]
        store = PieceStore(request.cache_dir)
        with Claim(store, f"pieces-{request.split}", [ref.key for ref in chosen]):
            count += build_pieces(chosen, store, _encoder_factory(request, loader, fingerprints[request.split]),
                                  num_proc or request.num_proc, piece_bytes=request.piece_bytes)
    for request, refs in groups:
        if request.selection.spec.examples or request.selection.max_samples is not None or request.overwrite:
            continue
        segments = SegmentStore(request.cache_dir, memos(request.cache_dir))
        with Claim(segments, f"segments-{request.split}", []) as claim:
            write_segments(request, [ref for ref in refs if ref.key in mine], PieceStore(request.cache_dir),
                           segments, claim.add)
    memos.save()  # merged with the other ranks': rank 0 finds these segments trusted
    return count


def open_folder(folder: Path) -> tuple[CacheRows, dict[str, Any]]:
    """A published cache's rows and manifest by its folder (for scripts: no request, no tokenizer),
    checked as `open_cache` checks them: `rows[i]` is (input_ids, doc_starts, ignored_spans)."""
    folder = Path(folder)
    memo = FingerprintMemo(folder.parent)
    reason, manifest = check_cache(folder, None, memo)
    save_quietly(memo)
    if reason is not None:
        raise CacheError(f"{folder}: not a usable cache ({reason}); `medkor cache verify {folder.parent} {folder.name}`")
    return CacheRows(segment_paths(folder, manifest), folder), manifest


def open_cache(request: CacheRequest) -> tuple[CacheRows, dict[str, Any]]:
    """Check the manifest and the rows' content and memory-map the rows; never tokenizes (for `setup`).

    The rows' content hash is only computed when the file changed since it was last
    checked (see the module's notes); a changed file is an error naming it.
    """
    memo = FingerprintMemo(request.cache_dir)
    resolved = resolve(request, memo=memo)
    final = resolved.folder
    reason, manifest = _checked_manifest(final, resolved.key)
    if reason is None:
        reason = check_rows(final, manifest, memo)
        if reason is not None:
            save_quietly(memo)
            path = Path(reason.split(" ", 1)[0])
            raise unreadable(path, reason.split(" (content hash")[0].removeprefix(f"{path} "), final)
    save_quietly(memo)
    if reason is not None:
        why = reason if final.exists() else explain_miss(Path(request.cache_dir), resolved.inputs)
        raise CacheError(
            f"no valid {request.split!r} cache at {final} ({why}); run `medkor prepare --config ...` "
            "or let prepare_data build it"
        )
    rows = CacheRows(segment_paths(final, manifest), final)
    mark_reader(final)  # `medkor cache rm` leaves it while this process runs
    if len(rows) != manifest["rows"]:
        raise CacheError(f"{final}: {len(rows)} rows on disk, manifest says {manifest['rows']}; remove the folder")
    log.info("loaded %s cache %s: %d rows, %d tokens (memory-mapped)", request.split, final, len(rows), manifest["tokens"])
    return rows, manifest
