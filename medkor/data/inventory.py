"""Operations on a cache directory: list, verify, remove, collect unused pieces and segments (behind `medkor cache`)."""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any, Optional

from medkor.data.cache import (
    MANIFEST, PIECES_LIST, TMP_PREFIX, TRASH_PREFIX, check_manifest, read_manifest, segment_paths,
)
from medkor.data.fingerprint import FingerprintMemo, hash_bytes_of
from medkor.data.lock import BuildLock
from medkor.data.pieces import ContentStore, PieceStore, claimed_keys
from medkor.data.readers import describe_readers, live_readers
from medkor.data.rows import CacheRows
from medkor.data.segments import SegmentStore


# what medkor itself creates in a cache directory: <split>-<key20>, .tmp-<split>-<key20>-..., .trash-...;
# a split is a plain name or `val-<name>` of a named validation set, whose name may hold '-'
_SPLIT = r"(?:[A-Za-z0-9_.]+|val-[A-Za-z0-9][A-Za-z0-9_.-]*?)"
_PUBLISHED = re.compile(rf"^{_SPLIT}-[0-9a-f]{{20}}$")
_LEFTOVER = re.compile(rf"^\.(?:tmp|trash)-(?P<name>{_SPLIT}-[0-9a-f]{{20}})(?:-|$)")


def is_cache_folder(folder: Path) -> bool:
    """True for folders medkor made: a published cache or a build/trash leftover.

    Anything else in the directory (a cache_dir shared with other tools) is never
    listed as a cache, verified or removed.
    """
    name = folder.name
    if name.startswith((TMP_PREFIX, TRASH_PREFIX)):
        return bool(_LEFTOVER.match(name)) or bool(re.match(r"^\.(?:tmp|trash)-[A-Za-z0-9_.]+-[0-9a-f]+(-|$)", name))
    return bool(_PUBLISHED.match(name))


def key_name(folder: Path) -> str:
    """The `<split>-<key20>` a published, temporary or trash folder belongs to: the name of its lock.

    Split names may hold '-' (`val-plain-text`) and so may host names, so a leftover's
    name is matched against the locks present (the longest that prefixes it), and
    otherwise read up to its 20-hex key.
    """
    name = folder.name
    if not name.startswith((TMP_PREFIX, TRASH_PREFIX)):
        return name
    rest = name.split("-", 1)[1]
    locks = [p.name[: -len(".lock")] for p in folder.parent.glob("*.lock")]
    held = [lock for lock in locks if rest.startswith(lock + "-") or rest == lock]
    if held:
        return max(held, key=len)
    match = _LEFTOVER.match(name) or re.match(r"^\.(?:tmp|trash)-(?P<name>.+?-[0-9a-f]+)(?:-|$)", name)
    return match.group("name") if match else rest


def _folders(cache_dir: Path) -> list[Path]:
    if not Path(cache_dir).is_dir():
        return []
    return sorted(p for p in Path(cache_dir).iterdir() if p.is_dir() and is_cache_folder(p))


def _bytes(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def _size(folder: Path) -> int:
    """Bytes of the folder and of the row segments its manifest lists (a segment two caches share counts in both)."""
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    try:
        paths = [Path(path) for path, _ in segment_paths(folder, read_manifest(folder))]
    except (OSError, ValueError, KeyError, TypeError):
        return size
    return size + sum(path.stat().st_size for path in paths if path.is_file())


def _lock_of(folder: Path) -> BuildLock:
    name = key_name(folder)
    return BuildLock(folder.parent / f"{name}.lock", what=name)


def _memo_entries(memo: FingerprintMemo) -> dict[str, Any]:
    """The directory's remembered file hashes (`fingerprints.json`): absolute path -> {stat, hash}."""
    entries = memo.entries
    return {k[len("file:"):]: v for k, v in entries.items() if k.startswith("file:") and isinstance(v, dict)}


def stale_inputs(manifest: dict[str, Any], memo: dict[str, Any]) -> list[str]:
    """What no longer matches among a cache's recorded input files, from stats only (no hashing, no tokenizer).

    Each recorded file is found where a build hashed it (the directory's fingerprints: the
    path that ends with `<data_dir>/<name>`). It is missing when that path is gone, and
    changed when its size differs from the recorded one or a later build hashed the same
    stat to another content. A file edited in place to the same size and not hashed since
    cannot be told from its stat, nor can a file no fingerprint names: neither is reported.
    """
    data_dir = str(manifest.get("data_dir") or "").rstrip("/")
    problems = []
    for info in manifest.get("inputs", {}).get("files", []):
        name = str(info.get("name", ""))
        wanted = name if Path(name).is_absolute() else f"{data_dir}/{name}" if data_dir else name
        if Path(wanted).is_absolute():
            places = [wanted]
        else:
            places = [p for p in memo if p.endswith("/" + wanted.lstrip("./"))]
        found = []
        for place in places:
            try:
                st = Path(place).stat()
            except OSError:
                found.append("missing")
                continue
            entry = memo.get(place) or memo.get(str(Path(place).resolve())) or {}
            now = [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]
            changed = st.st_size != info.get("size") or (entry.get("stat") == [now] and entry.get("hash") != info.get("xxh3"))
            found.append("changed" if changed else "current")
        if found and "current" not in found:
            problems.append(f"{name} {'missing' if all(f == 'missing' for f in found) else 'changed'}")
    return problems


def list_caches(cache_dir: Path) -> list[dict[str, Any]]:
    """Every folder in `cache_dir`: published caches with their manifest facts (`stale: ...` when an input
    file they were built from is missing or changed), and leftovers."""
    out: list[dict[str, Any]] = []
    remembered = FingerprintMemo(cache_dir)  # loaded once: file hashes for `stale`, segment hashes for `changed`
    memo = _memo_entries(remembered)
    users = segment_users(cache_dir)
    store = SegmentStore(cache_dir, remembered)
    for folder in _folders(cache_dir):
        entry: dict[str, Any] = {"name": folder.name, "path": str(folder), "bytes": _size(folder)}
        if folder.name.startswith(TMP_PREFIX):
            entry["state"] = "building or abandoned"
        elif folder.name.startswith(TRASH_PREFIX):
            entry["state"] = "being removed"
        else:
            problem = check_manifest(folder)
            entry["state"] = "ok" if problem is None else f"invalid: {problem}"
            if problem is None:
                manifest = read_manifest(folder)
                stale = stale_inputs(manifest, memo)
                if stale:
                    entry["state"] = "stale: " + ", ".join(stale)
                entry.update(
                    split=manifest["split"],
                    rows=manifest["rows"],
                    tokens=manifest["tokens"],
                    documents=manifest.get("documents"),
                    skipped=manifest.get("skipped", 0),
                    created=manifest.get("created"),
                    key=manifest["key"],
                    tokenizer_path=manifest.get("tokenizer_path"),
                    files=[f"{f['name']} ({f['size']} B)" for f in manifest["inputs"]["files"]],
                    params=manifest["inputs"]["params"],
                    pieces=len(cache_pieces(folder)),
                    segments=len(manifest["segments"]),
                    # what removing it frees: its folder and the segments no other cache lists
                    own_bytes=entry["bytes"] - sum(_bytes(store.name(key)) for key, *_ in manifest["segments"]
                                                   if len(users.get(key, [])) > 1),
                )
                changed = [key for key, _, digest in manifest["segments"] if store.trusted(key) != digest]
                if changed:  # a segment's stat differs from when it was written or last checked
                    found = (f"changed: {len(changed)} row segment(s) differ from when they were written or last "
                             f"checked; `medkor cache verify {cache_dir} {folder.name}` hashes them")
                    entry["state"] = found if entry["state"] == "ok" else f"{entry['state']}; {found}"
                readers = live_readers(folder)
                if readers:
                    entry["state"] += f"; {describe_readers(readers)}"
        out.append(entry)
    return out


def cache_pieces(folder: Path) -> list[str]:
    """The piece keys a published cache was assembled from (none for a cache without a list)."""
    try:
        return list(json.loads((folder / PIECES_LIST).read_text(encoding="utf-8")))
    except (OSError, ValueError):
        return []


def _published_manifests(cache_dir: Path) -> list[tuple[Path, dict[str, Any]]]:
    out = []
    for folder in _folders(cache_dir):
        if folder.name.startswith((TMP_PREFIX, TRASH_PREFIX)) or check_manifest(folder) is not None:
            continue
        try:
            out.append((folder, read_manifest(folder)))
        except (OSError, ValueError):
            continue
    return out


def piece_users(cache_dir: Path) -> dict[str, list[str]]:
    """Piece key -> the published caches that use it."""
    users: dict[str, list[str]] = {}
    for folder, _ in _published_manifests(cache_dir):
        for key in cache_pieces(folder):
            users.setdefault(key, []).append(folder.name)
    return users


def segment_users(cache_dir: Path) -> dict[str, list[str]]:
    """Row segment key -> the published caches whose rows it holds."""
    users: dict[str, list[str]] = {}
    for folder, manifest in _published_manifests(cache_dir):
        for key, *_ in manifest["segments"]:
            if folder.name not in users.setdefault(key, []):
                users[key].append(folder.name)
    return users


def _stores(cache_dir: Path) -> list[tuple[str, ContentStore, dict[str, list[str]]]]:
    return [("piece", PieceStore(cache_dir), piece_users(cache_dir)),
            ("segment", SegmentStore(cache_dir), segment_users(cache_dir))]


def list_stored(cache_dir: Path, kind: str = "piece") -> list[dict[str, Any]]:
    """Every stored piece (or row segment): key, bytes, and which caches use it (claimed: a live build holds it)."""
    store, users = next((store, users) for name, store, users in _stores(cache_dir) if name == kind)
    claimed = claimed_keys(store)
    out = []
    for key in store.keys():
        try:
            size = store.path(key).stat().st_size
        except FileNotFoundError:
            continue
        out.append({kind: key, "bytes": size, "used_by": users.get(key, []), "claimed": key in claimed})
    return out


def list_pieces(cache_dir: Path) -> list[dict[str, Any]]:
    """Every stored piece: key, bytes, and which caches use it (claimed: a live build holds it)."""
    return list_stored(cache_dir, "piece")


def collect_garbage(cache_dir: Path, dry_run: bool = False,
                    kinds: tuple[str, ...] = ("piece", "segment")) -> tuple[list[tuple[Path, int]], int]:
    """Remove the pieces and row segments (`kinds`) no published cache uses and no live build has
    claimed; ([(path, bytes)], kept).

    Runs under the pieces' own lock, so two collections never race; a build that starts
    meanwhile and finds a piece or segment gone tokenizes or packs it again (never a wrong row).
    Temporary files of killed writers (over an hour old) go too.
    """
    pieces = PieceStore(cache_dir)
    if not pieces.root.is_dir() and not SegmentStore(cache_dir).root.is_dir():
        return [], 0
    removed: list[tuple[Path, int]] = []
    kept = 0
    pieces.root.mkdir(parents=True, exist_ok=True)
    with BuildLock(pieces.root / "gc.lock", what="medkor cache gc"):
        for kind, store, users in _stores(cache_dir):
            if kind not in kinds:
                continue
            keep = set(users) | claimed_keys(store)
            for key in store.keys():
                if key in keep:
                    kept += 1
                    continue
                path = store.path(key)
                try:
                    size = path.stat().st_size
                    if not dry_run:
                        path.unlink()
                except FileNotFoundError:
                    continue
                removed.append((path, size))
            if not dry_run:
                removed += [(p, 0) for p in store.remove_stale_temporaries()]
        if not dry_run and "piece" in kinds:
            files = _file_hashes(cache_dir)
            for plan in pieces.plans():  # the cuts of file versions no cache was built from
                if plan.name.split("-")[0] not in files:
                    plan.unlink(missing_ok=True)
    return removed, kept


def _file_hashes(cache_dir: Path) -> set[str]:
    """Content hashes (first 32 hex) of the data files the published caches were built from."""
    hashes = set()
    for _, manifest in _published_manifests(cache_dir):
        try:
            hashes.update(f["xxh3"][:32] for f in manifest["inputs"]["files"])
        except (KeyError, TypeError):
            continue
    return hashes


def verify_cache(folder: Path) -> list[str]:
    """Full check of one cache: manifest, file sizes and hashes, every segment's hash, row and token counts."""
    problem = check_manifest(folder)
    if problem is not None:
        return [problem]
    manifest = read_manifest(folder)
    problems = []
    for name, info in manifest["files"].items():
        digest = hash_bytes_of(folder / name)
        if digest != info.get("xxh3"):
            problems.append(f"{folder / name}: content hash {digest} != manifest {info.get('xxh3')}")
    segments = segment_paths(folder, manifest)
    for (name, _), (_, _, expected) in zip(segments, manifest["segments"]):
        path = Path(name)
        if not path.is_file():
            problems.append(f"{path}: row segment missing")
            continue
        digest = hash_bytes_of(path)
        if digest != expected:
            problems.append(f"{path}: content hash {digest} != manifest {expected}")
    if problems:
        return problems
    try:
        rows = CacheRows(segments, folder)
        lengths = rows.row_lengths()
    except Exception as err:  # any Arrow error means a segment is unusable
        return [f"{folder}: a row segment is unreadable ({err})"]
    if len(rows) != manifest["rows"]:
        problems.append(f"{len(rows)} rows in the segments, manifest says {manifest['rows']}")
    if int(lengths.sum()) != manifest["tokens"]:
        problems.append(f"{int(lengths.sum())} tokens in the segments, manifest says {manifest['tokens']}")
    if len(lengths) and (lengths.max() > manifest["max_length"] or lengths.min() < 1):
        problems.append(f"row lengths outside 1..{manifest['max_length']}")
    text = manifest["inputs"]["params"].get("format", "text") == "text"  # whole examples leave rows short
    if text and manifest.get("packing") and len(lengths) > 1 and (lengths[:-1] != manifest["max_length"]).any():
        problems.append("a packed text row other than the last is shorter than max_length")
    return problems


class RemoveError(OSError):
    """A cache folder could not be removed whole; the message names what is left and why."""


class CacheInUse(RuntimeError):
    """A cache a running process reads (`readers.py`); the message names it."""


def remove_cache(folder: Path, wait: bool = False) -> bool:
    """Remove one folder; a published one only while no builder holds its lock.

    False when a build of its key is running. A symbolic link is removed as a link: what
    it points at is never entered. A folder that cannot be removed whole raises
    `RemoveError` naming what is left, so nothing is reported removed that stays.
    """
    if folder.is_symlink():
        folder.unlink()
        return True
    readers = live_readers(folder) if not folder.name.startswith(".") else []
    if readers:
        raise CacheInUse(f"{folder}: {describe_readers(readers)}; this cache was left as it is (stop that run first)")
    lock = _lock_of(folder)
    if wait:
        lock.acquire(timeout=None)
    elif not lock.try_acquire():
        return False  # a build of this key is running
    try:
        # rename first so a reader never sees a half-deleted cache under its real name
        doomed = folder.with_name(f"{TRASH_PREFIX}{folder.name.lstrip('.')}-rm") if not folder.name.startswith(".") else folder
        if doomed != folder:
            folder.rename(doomed)
        failures: list[str] = []
        shutil.rmtree(doomed, onerror=lambda _fn, path, info: failures.append(f"{path}: {info[1]}"))
        if doomed.exists() or doomed.is_symlink():
            shown = "; ".join(failures[:3]) or "it still exists"
            raise RemoveError(f"{folder}: could not remove it whole ({shown}); what is left is {doomed}: "
                              "fix the permissions and run medkor cache rm again")
        if not any(f.name != folder.name and key_name(f) == lock.what for f in _folders(folder.parent)):
            # held here, so no process is inside; one already queued on the unlinked file's flock still
            # meets the owner file (`.lock.owner`, removed by release), which alone decides who holds the key
            lock.path.unlink(missing_ok=True)
        return True
    finally:
        lock.release()


def select(cache_dir: Path, names: list[str], older_than_days: Optional[float], everything: bool,
           stale: bool = False) -> list[Path]:
    """The folders `medkor cache rm` acts on: named ones (prefixes), old ones, stale ones (`stale_inputs`), leftovers."""
    chosen = []
    now = time.time()
    memo = _memo_entries(FingerprintMemo(cache_dir)) if stale else {}
    for folder in _folders(cache_dir):
        leftover = folder.name.startswith((TMP_PREFIX, TRASH_PREFIX))
        # a name matches as a prefix; a key fragment (6+ characters) anywhere in the name
        named = any(folder.name.startswith(n) or (len(n) >= 6 and n in folder.name) for n in names)
        old = False
        if older_than_days is not None and (folder / MANIFEST).is_file():
            old = now - (folder / MANIFEST).stat().st_mtime > older_than_days * 86400
        invalid = not leftover and check_manifest(folder) is not None
        if stale and not leftover and not invalid and stale_inputs(read_manifest(folder), memo):
            named = True
        if everything or named or old or leftover or invalid:
            chosen.append(folder)
    return chosen
