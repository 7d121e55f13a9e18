"""Content fingerprints of data files and tokenizers, the inputs of a cache key.

Hashing a 1.5 GB corpus at every start would make warm starts grow with the corpus,
so a content hash is remembered next to the caches together with the file's
(device, inode, size, mtime, ctime). Any write to a file changes its ctime, which no
user tool can set back, so an unchanged stat means unchanged content. As git does for
"racily clean" files, a hash is only remembered when the file was last changed well
before it was read, so a write in the same clock tick as the read cannot be missed.
"""

from __future__ import annotations

import fcntl
import functools
import json
import logging
import mmap
import os
import time
from pathlib import Path
from typing import Any, Callable, Optional

import xxhash

from medkor.run.atomic import atomic_write_text

log = logging.getLogger("medkor.data")

MEMO_NAME = "fingerprints.json"
_RACY_NS = 2_000_000_000  # a change this close before a read is not trusted to be seen


def hash_bytes_of(path: Path, chunk: int = 1 << 22) -> str:
    """xxh3-128 of a file's bytes."""
    digest = xxhash.xxh3_128()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def hash_mapped(path: Path) -> str:
    """xxh3-128 of a file's bytes (as `hash_bytes_of`), hashed in place through a read-only mapping:
    no copy of a rows file of hundreds of MB into fresh memory."""
    with open(path, "rb") as handle:
        if not os.fstat(handle.fileno()).st_size:
            return hash_bytes_of(path)
        populate = getattr(mmap, "MAP_POPULATE", 0)  # Linux: map every page at once, not one fault each
        with mmap.mmap(handle.fileno(), 0, flags=mmap.MAP_SHARED | populate, prot=mmap.PROT_READ) as mapped:
            return xxhash.xxh3_128_hexdigest(mapped)


def hash_text(*parts: str) -> str:
    digest = xxhash.xxh3_128()
    for part in parts:
        digest.update(part.encode("utf-8"))
        digest.update(b"\x00")
    return digest.hexdigest()


def stat_tuple(path: str | Path) -> list[int]:
    st = os.stat(path)
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


class FingerprintMemo:
    """Remembered content hashes, keyed by kind and absolute path, valid while the stat holds."""

    def __init__(self, folder: Optional[Path]) -> None:
        self.path = Path(folder) / MEMO_NAME if folder is not None else None
        self.entries: dict[str, Any] = self._load()
        self.changed: set[str] = set()  # names remembered by this process, merged into the file on save

    def _load(self) -> dict[str, Any]:
        if self.path is None or not self.path.is_file():
            return {}
        try:
            entries = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}  # a damaged memo only costs a rehash
        return entries if isinstance(entries, dict) else {}

    def get(self, name: str, stats: list[list[int]]) -> Optional[str]:
        entry = self.entries.get(name)
        if entry and entry.get("stat") == stats:
            return entry["hash"]
        return None

    def put(self, name: str, stats: list[list[int]], digest: str, read_start_ns: int) -> None:
        if all(s[4] < read_start_ns - _RACY_NS and s[3] < read_start_ns - _RACY_NS for s in stats):
            self.remember(name, stats, digest)

    def remember(self, name: str, stats: list[list[int]], digest: str) -> None:
        """Record a hash without the racy-stat rule: for a file this process wrote privately and renamed."""
        self.entries[name] = {"stat": stats, "hash": digest}
        self.changed.add(name)

    def save(self) -> None:
        """Write atomically, merged with what other processes saved since this one loaded the file
        (ranks that pack row segments for rank 0 to reuse); two saves at once may still lose one's
        entries, which only costs a rehash."""
        if not self.changed or self.path is None:
            return
        with open(self.path.with_name(f".{MEMO_NAME}.merge"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # one merge at a time on this node (elsewhere: a lost entry is rehashed)
            merged = self._load()
            merged.update({name: self.entries[name] for name in self.changed if name in self.entries})
            atomic_write_text(self.path, json.dumps(merged, sort_keys=True), what="fingerprint memo")
        self.entries = merged
        self.changed = set()

    def content_hash(self, name: str, paths: list[Path], compute: Callable[[], str]) -> str:
        """The remembered hash of `paths` under `name`, or `compute()` (remembered if safe)."""
        stats = [stat_tuple(p) for p in paths]
        cached = self.get(name, stats)
        if cached is not None:
            return cached
        start = time.time_ns()
        digest = compute()
        if [stat_tuple(p) for p in paths] == stats:
            self.put(name, stats, digest, start)
        return digest


def file_fingerprints(files: list[Path], data_dir: Path, memo: FingerprintMemo) -> list[dict[str, Any]]:
    """Name (relative to data_dir), size and content hash of every data file, in order."""
    out = []
    for path in files:
        path = Path(path)
        digest = memo.content_hash(f"file:{path.resolve()}", [path], lambda p=path: hash_bytes_of(p))
        try:
            name = str(path.relative_to(data_dir))
        except ValueError:
            name = str(path)
        out.append({"name": name, "size": path.stat().st_size, "xxh3": digest})
    return out


def tokenizer_state(tokenizer: Any) -> str:
    """Everything about a fast tokenizer that changes the ids it produces or renders.

    The backend's serialized state holds normaliser, pre-tokenizer, model (vocab and
    merges), added tokens, post-processor and decoder; the chat template and special
    token ids live on the Python wrapper.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise TypeError(f"{type(tokenizer).__name__} is not a fast tokenizer; medkor needs a tokenizers-backed one")
    specials = {
        "bos": tokenizer.bos_token_id,
        "eos": tokenizer.eos_token_id,
        "pad": tokenizer.pad_token_id,
        "unk": tokenizer.unk_token_id,
        "all": sorted(str(t) for t in tokenizer.all_special_tokens),
    }
    template = tokenizer.chat_template
    if not isinstance(template, (str, type(None))):
        template = json.dumps(template, sort_keys=True)
    return hash_text(backend.to_str(), json.dumps(specials, sort_keys=True), template or "")


def hub_snapshot(repo_id: str) -> Optional[Path]:
    """The cached snapshot folder of `repo_id`'s `main` in the local hub cache, or None. Never asks the hub."""
    if repo_id.count("/") != 1 or Path(repo_id).exists():
        return None
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    found = try_to_load_from_cache(repo_id, "tokenizer_config.json")
    return Path(found).parent if isinstance(found, str) else None


# the files a tokenizer is loaded from (config.json names the tokenizer class of some checkpoints)
TOKENIZER_FILES = ["tokenizer*", "special_tokens_map.json", "added_tokens.json", "chat_template*", "*.jinja",
                   "config.json", "vocab*", "merges*", "*.model", "*.tiktoken"]


@functools.lru_cache(maxsize=None)
def resolve_tokenizer(tokenizer_path: str) -> str:
    """The local folder a tokenizer is loaded and keyed from, resolved once per process.

    A folder is itself (nothing is asked). A hub id becomes the snapshot folder of the
    hub's current commit, its tokenizer files downloaded if missing: one question to the
    hub per process, none with `HF_HUB_OFFLINE=1` (the cached `main`). Without an answer
    (no network) the cached `main` is used, as loading would; an id the cache does not
    hold stays as given (loading it then says why it cannot).
    """
    if Path(tokenizer_path).expanduser().is_dir() or tokenizer_path.count("/") != 1:
        return tokenizer_path
    try:
        from huggingface_hub import constants, snapshot_download
    except ImportError:
        return tokenizer_path
    if not constants.HF_HUB_OFFLINE:
        try:
            return snapshot_download(tokenizer_path, allow_patterns=TOKENIZER_FILES)
        except Exception as err:  # noqa: BLE001 - unknown, gated, unreachable: the cached main, or loading's own error
            log.info("tokenizer %s: the hub did not answer (%s); using the cached snapshot", tokenizer_path,
                     type(err).__name__)
    snapshot = hub_snapshot(tokenizer_path)
    return str(snapshot) if snapshot is not None else tokenizer_path


def _tokenizer_files(tokenizer_path: str) -> tuple[Optional[Path], list[Path]]:
    """The folder whose files' stats vouch for a remembered tokenizer hash, and those files."""
    root = Path(tokenizer_path)
    if not root.is_dir():
        root = hub_snapshot(tokenizer_path)
        if root is None:
            return None, []
    return root, sorted(p for p in root.iterdir() if p.is_file() and not p.name.startswith("."))


def tokenizer_fingerprint(tokenizer_path: str, memo: FingerprintMemo, load: Callable[[], Any]) -> str:
    """Hash of the tokenizer's content; loads it only when its files changed since last time.

    A hub id is remembered by the files of its cached `main` snapshot (callers pass the
    folder `resolve_tokenizer` found); one that is not cached is loaded to be hashed.
    """
    root, files = _tokenizer_files(tokenizer_path)
    if root is None or not files:
        return tokenizer_state(_load_named(load, tokenizer_path))
    return memo.content_hash(f"tokenizer:{root.resolve()}", files, lambda: tokenizer_state(_load_named(load, tokenizer_path)))


def _load_named(load: Callable[[], Any], tokenizer_path: str) -> Any:
    """`load()`; a damaged tokenizer file (cut short, not UTF-8) is raised as one line naming it."""
    from medkor.vocab.files import TokenizerFileError, tokenizer_file_error

    try:
        return load()
    except TokenizerFileError:
        raise
    except Exception as err:  # noqa: BLE001 - only a damaged file is renamed; anything else is raised as it was
        named = tokenizer_file_error(tokenizer_path)
        if named is None:
            raise
        raise named from err
