"""The tokenized-data cache: content key, atomic publish, lock, sweep, verify, load.

Layout under `cache_dir`:
    <split>-<key20>/rows.arrow, manifest.json   a published cache (manifest written last)
    <split>-<key20>.lock                        serialises builders of that key
    .tmp-<split>-<key20>-<host>-<pid>-<rand>/   a build in progress (or a dead one)
    .trash-<split>-<key20>-<rand>/              a replaced cache being removed
    fingerprints.json                           remembered content hashes (see fingerprint.py)

A folder at a published name only ever appears by renaming a finished temporary
folder whose manifest was written and synced last, so a build killed at any moment
leaves nothing that can be taken for a cache.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Optional

from filelock import FileLock, Timeout

from medkor.data.build import build_split, special_ids
from medkor.data.fingerprint import FingerprintMemo, file_fingerprints, hash_bytes_of, hash_text, tokenizer_fingerprint
from medkor.data.rows import ROWS_FILE, RowsFile
from medkor.data.sources import Selection

log = logging.getLogger("medkor.data")

CACHE_VERSION = 3  # 3: rows carry ignored spans (formats with prompts)
MANIFEST = "manifest.json"
TMP_PREFIX = ".tmp-"
TRASH_PREFIX = ".trash-"
DISK_FACTOR = 4.5  # staged text + tokenized shards + rows, per byte of JSONL (generous)


class CacheError(RuntimeError):
    """A cache that is missing, damaged, or cannot be built (the message says what to do)."""


@dataclass
class CacheRequest:
    """Everything that decides the rows of one split, and where they are cached."""

    split: str
    selection: Selection
    data_dir: Path
    cache_dir: Path
    tokenizer_path: str
    max_length: int = 2048
    packing: bool = True
    num_proc: Optional[int] = None
    overwrite: bool = False
    on_long_example: str = "error"  # formats with examples: one longer than a row is an error or skipped


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


def key_inputs(request: CacheRequest, memo: FingerprintMemo, load_tokenizer: Callable[[], Any]) -> dict[str, Any]:
    """What goes into the key: tokenizer content, data files' content, row parameters, version."""
    sel = request.selection
    return {
        "version": CACHE_VERSION,
        "tokenizer": tokenizer_fingerprint(request.tokenizer_path, memo, load_tokenizer),
        "files": file_fingerprints(sel.files, Path(request.data_dir), memo),
        "params": {
            "split": request.split,
            **sel.spec.key(),
            "max_length": request.max_length,
            "packing": request.packing,
            "max_samples": sel.max_samples,
            "val_fraction": sel.val_fraction,
            "from_train": sel.val_fraction > 0,
            "seed": sel.seed,
            "on_bad_record": sel.on_bad_record,
            **({"on_long_example": request.on_long_example} if sel.spec.examples else {}),
        },
    }


def cache_key(inputs: dict[str, Any]) -> str:
    return hash_text(json.dumps(inputs, sort_keys=True, ensure_ascii=False))


def folder_name(split: str, key: str) -> str:
    return f"{split}-{key[:20]}"


def read_manifest(folder: Path) -> dict[str, Any]:
    with open(folder / MANIFEST, encoding="utf-8") as handle:
        return json.load(handle)


def check_manifest(folder: Path, key: Optional[str] = None) -> Optional[str]:
    """Why `folder` is not a usable cache (for `key`), or None. Cheap: stats, no hashing."""
    if not folder.is_dir():
        return "no cache folder for this key"
    try:
        manifest = read_manifest(folder)
    except FileNotFoundError:
        return f"{folder / MANIFEST} is missing"
    except (OSError, ValueError) as err:
        return f"{folder / MANIFEST} is unreadable ({err})"
    if manifest.get("version") != CACHE_VERSION:
        return f"cache format version {manifest.get('version')} != {CACHE_VERSION}"
    if key is not None and manifest.get("key") != key:
        return "manifest key does not match"
    for name, info in manifest.get("files", {}).items():
        path = folder / name
        if not path.is_file():
            return f"{path} is missing"
        if path.stat().st_size != info.get("size"):
            return f"{path} has {path.stat().st_size} bytes, manifest says {info.get('size')}"
    if ROWS_FILE not in manifest.get("files", {}):
        return f"manifest lists no {ROWS_FILE}"
    return None


def _published(cache_dir: Path) -> list[Path]:
    if not cache_dir.is_dir():
        return []
    return sorted(p for p in cache_dir.iterdir() if p.is_dir() and not p.name.startswith("."))


def explain_miss(cache_dir: Path, inputs: dict[str, Any]) -> str:
    """Compare with the other caches of the split: what changed since they were built."""
    split = inputs["params"]["split"]
    best: Optional[list[str]] = None
    for folder in _published(cache_dir):
        try:
            other = read_manifest(folder)["inputs"]
        except (OSError, ValueError, KeyError):
            continue
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
    """Remove leftover temporary and trash folders (of one key when `name` is given).

    Call with the key's lock held: then no live builder owns a temporary folder of it.
    """
    removed = []
    if not cache_dir.is_dir():
        return removed
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
            f"{request.cache_dir}: building the {request.split!r} cache needs about {need / 2**30:.2f} GiB "
            f"free, only {free / 2**30:.2f} GiB is; free space or set cache_dir to a larger disk"
        )


def _publish(tmp: Path, final: Path) -> bool:
    """Rename the finished build into place; False when another builder published first."""
    trash = None
    if final.exists():
        # overwrite: move the old cache aside (its memory-maps stay valid), then swap in
        trash = final.with_name(f"{TRASH_PREFIX}{final.name}-{uuid.uuid4().hex[:8]}")
        os.rename(final, trash)
    try:
        os.rename(tmp, final)
    except OSError:
        if final.is_dir() and check_manifest(final) is None:
            shutil.rmtree(tmp, ignore_errors=True)  # lock not honoured (e.g. NFS): rename decided
            return False
        raise
    _fsync_dir(final.parent)
    if trash is not None:
        shutil.rmtree(trash, ignore_errors=True)
    return True


def _build(
    request: CacheRequest, inputs: dict[str, Any], key: str, final: Path, tokenizer: Any
) -> tuple[Path, dict[str, Any]]:
    """Build into a temporary folder next to `final`; returns (folder, manifest), not yet published."""
    tmp = request.cache_dir / f"{TMP_PREFIX}{final.name}-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    start = time.perf_counter()
    try:
        stats = build_split(
            request.selection,
            tokenizer,
            tmp,
            request.max_length,
            request.packing,
            request.num_proc,
            request.split,
            request.on_long_example,  # type: ignore[arg-type]
        )
        bos, eos, pad = special_ids(tokenizer)
        rows_path = tmp / ROWS_FILE
        _fsync_file(rows_path)
        manifest = {
            "version": CACHE_VERSION,
            "key": key,
            "inputs": inputs,
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
            "files": {ROWS_FILE: {"size": rows_path.stat().st_size, "xxh3": hash_bytes_of(rows_path)}},
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "build_seconds": round(time.perf_counter() - start, 3),
        }
        manifest_tmp = tmp / f".{MANIFEST}.partial"
        manifest_tmp.write_text(json.dumps(manifest, indent=1, ensure_ascii=False), encoding="utf-8")
        _fsync_file(manifest_tmp)
        os.rename(manifest_tmp, tmp / MANIFEST)  # the manifest appears last, whole
        _fsync_dir(tmp)
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
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _hit(request: CacheRequest, folder: Path, key: str, start: float) -> CacheResult:
    manifest = read_manifest(folder)
    return CacheResult(
        request.split, "hit", folder, key, manifest["rows"], manifest["tokens"], time.perf_counter() - start, manifest
    )


class _Tokenizer:
    """Loads the tokenizer once, and only if something needs it."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.value: Any = None

    def __call__(self) -> Any:
        if self.value is None:
            from transformers import AutoTokenizer

            self.value = AutoTokenizer.from_pretrained(self.path)
        return self.value


def resolve(request: CacheRequest, load_tokenizer: Optional[Callable[[], Any]] = None) -> tuple[dict[str, Any], str, Path]:
    """(key inputs, key, folder) of a request; loads the tokenizer only if its files changed."""
    memo = FingerprintMemo(request.cache_dir)
    inputs = key_inputs(request, memo, load_tokenizer or _Tokenizer(request.tokenizer_path))
    try:
        memo.save()
    except OSError:
        pass  # a read-only cache dir still serves hits
    key = cache_key(inputs)
    return inputs, key, Path(request.cache_dir) / folder_name(request.split, key)


def _sweep_if_idle(cache_dir: Path, name: str) -> None:
    """Remove a key's leftover build folders when no builder of that key is running."""
    if not any(p.name.startswith((f"{TMP_PREFIX}{name}-", f"{TRASH_PREFIX}{name}-")) for p in cache_dir.iterdir()):
        return
    lock = FileLock(str(cache_dir / f"{name}.lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        return  # a live builder owns them
    try:
        for stale in sweep(cache_dir, name):
            log.info("removed stale build folder %s", stale)
    finally:
        lock.release()


def ensure_cache(request: CacheRequest, load_tokenizer: Optional[Callable[[], Any]] = None) -> CacheResult:
    """Find the split's cache or build it (one builder per key; others wait, then load)."""
    return ensure_caches([request], load_tokenizer)[0]


def ensure_caches(requests: list[CacheRequest], load_tokenizer: Optional[Callable[[], Any]] = None) -> list[CacheResult]:
    """Find or build the caches of several splits, all or nothing.

    Hits are served without a lock. The missing splits are built under their keys'
    locks (taken in name order, so builders of overlapping sets cannot deadlock),
    smallest input first so that bad data in a small split fails fast, and are
    published only once every one of them built: bad input in any split leaves
    nothing published.
    """
    start = time.perf_counter()
    loaders: dict[str, Callable[[], Any]] = {}

    def loader_of(request: CacheRequest) -> Callable[[], Any]:
        if load_tokenizer is not None:
            return load_tokenizer
        return loaders.setdefault(request.tokenizer_path, _Tokenizer(request.tokenizer_path))

    results: dict[int, CacheResult] = {}
    misses: list[tuple[int, dict[str, Any], str, Path, str]] = []
    for index, request in enumerate(requests):
        request.cache_dir = Path(request.cache_dir)
        request.cache_dir.mkdir(parents=True, exist_ok=True)
        inputs, key, final = resolve(request, loader_of(request))
        if not request.overwrite:
            reason = check_manifest(final, key)
            if reason is None:
                log.info("cache hit for %s: %s", request.split, final)
                _sweep_if_idle(request.cache_dir, final.name)
                results[index] = _hit(request, final, key, start)
                continue
            why = reason if final.exists() else explain_miss(request.cache_dir, inputs)
        else:
            why = "overwrite_cache is set"
        misses.append((index, inputs, key, final, why))
    if not misses:
        return [results[i] for i in range(len(requests))]

    locks = []
    built: list[tuple[int, Path, Path, dict[str, Any], float]] = []  # index, tmp, final, manifest, seconds
    try:
        for index, inputs, key, final, why in sorted(misses, key=lambda m: m[3].name):
            lock = FileLock(str(requests[index].cache_dir / f"{final.name}.lock"))
            try:
                lock.acquire(timeout=0)
            except Timeout:
                log.info(
                    "cache for %s is being built by another process; waiting for %s",
                    requests[index].split, lock.lock_file,
                )
                lock.acquire()
            locks.append(lock)
        by_size = sorted(misses, key=lambda m: sum(Path(f).stat().st_size for f in requests[m[0]].selection.files))
        for index, inputs, key, final, why in by_size:
            request = requests[index]
            if not request.overwrite and check_manifest(final, key) is None:
                log.info("cache hit for %s after waiting: %s", request.split, final)
                results[index] = _hit(request, final, key, start)
                continue
            for stale in sweep(request.cache_dir, final.name):
                log.info("removed stale build folder %s", stale)
            if final.exists() and not request.overwrite:
                # a damaged folder at the published name: replace it like an overwrite
                log.warning("replacing damaged cache %s (%s)", final, why)
            log.info("cache miss for %s (%s); building %s", request.split, why, final)
            _check_disk(request)
            split_start = time.perf_counter()
            tmp, manifest = _build(request, inputs, key, final, loader_of(request)())
            built.append((index, tmp, final, manifest, time.perf_counter() - split_start))
        # every split built: publish them all
        while built:
            index, tmp, final, manifest, seconds = built.pop(0)
            request = requests[index]
            if not _publish(tmp, final):
                manifest = read_manifest(final)
            results[index] = CacheResult(
                request.split, "built", final, manifest["key"], manifest["rows"], manifest["tokens"], seconds, manifest
            )
    finally:
        for _, tmp, _, _, _ in built:  # a later split failed: publish none of the finished ones
            shutil.rmtree(tmp, ignore_errors=True)
        for lock in reversed(locks):
            lock.release()
    return [results[i] for i in range(len(requests))]


def open_cache(request: CacheRequest) -> tuple[RowsFile, dict[str, Any]]:
    """Verify the manifest and memory-map the rows; never tokenizes (for `setup` on every rank)."""
    inputs, key, final = resolve(request)
    reason = check_manifest(final, key)
    if reason is not None:
        why = reason if final.exists() else explain_miss(Path(request.cache_dir), inputs)
        raise CacheError(
            f"no valid {request.split!r} cache at {final} ({why}); run `medkor prepare --config ...` "
            "or let prepare_data build it"
        )
    manifest = read_manifest(final)
    rows = RowsFile(final / ROWS_FILE)
    if len(rows) != manifest["rows"]:
        raise CacheError(f"{final}: {len(rows)} rows on disk, manifest says {manifest['rows']}; remove the folder")
    log.info("loaded %s cache %s: %d rows, %d tokens (memory-mapped)", request.split, final, len(rows), manifest["tokens"])
    return rows, manifest
