"""`medkor cache ls|verify|rm|gc CACHE_DIR`: inspect and clean tokenized caches and their pieces."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="medkor cache", description="Inspect and clean tokenized caches.",
                                     allow_abbrev=False)
    sub = parser.add_subparsers(dest="action", required=True)
    ls = sub.add_parser("ls", allow_abbrev=False, help="List caches: size, rows, tokens, created, what went into the key.")
    ls.add_argument("cache_dir", type=Path, help="The cache directory (default of a run: <data_dir>/.cache).")
    ls.add_argument("--json", action="store_true", help="One JSON object per cache instead of text.")
    ls.add_argument("--pieces", action="store_true", help="Also list every tokenized piece and row segment, and the caches that use it.")
    verify = sub.add_parser("verify", allow_abbrev=False, help="Check manifests against the Arrow files (hashes, rows, tokens).")
    verify.add_argument("cache_dir", type=Path)
    verify.add_argument("names", nargs="*", help="Only these caches (name or prefix).")
    rm = sub.add_parser("rm", allow_abbrev=False, help="Remove named, old or damaged caches and leftover build folders.")
    rm.add_argument("cache_dir", type=Path)
    rm.add_argument("names", nargs="*", help="Caches to remove (name, prefix or key fragment).")
    rm.add_argument("--older-than", type=float, metavar="DAYS", help="Also remove caches built more than DAYS ago.")
    rm.add_argument("--all", action="store_true", help="Remove every cache in the directory.")
    rm.add_argument("--stale", action="store_true",
                    help="Also remove caches whose recorded input files are missing or changed (`ls` marks them stale).")
    rm.add_argument("--dry-run", action="store_true", help="Only print what would be removed.")
    gc = sub.add_parser("gc", allow_abbrev=False,
                        help="Remove tokenized pieces and row segments that no cache uses and no running build holds.")
    gc.add_argument("cache_dir", type=Path)
    gc.add_argument("--dry-run", action="store_true", help="Only print what would be removed.")
    return parser


def _count(number: int, thing: str) -> str:
    return f"{number} {thing}{'' if number == 1 else 's'}"


def _size(size: float) -> str:
    return f"{size / 2**20:.1f} MiB" if size >= 2**20 else f"{size / 2**10:.1f} KiB"


def _ls_stored(cache_dir: Path, as_json: bool, each: bool) -> None:
    """One line each for the pieces and the row segments (every one of them with --pieces)."""
    from medkor.data.inventory import list_stored

    for kind, title, folder in (("piece", "pieces", ".pieces"), ("segment", "row segments", ".segments")):
        stored = list_stored(cache_dir, kind)
        if as_json:
            for item in stored if each else []:
                print(json.dumps(item, ensure_ascii=False))
            continue
        if not stored:
            continue
        unused = [p for p in stored if not p["used_by"] and not p["claimed"]]
        users = sorted({name for p in stored for name in p["used_by"]})
        print(f"{title}: {len(stored)} in {cache_dir / folder} ({_size(sum(p['bytes'] for p in stored))}), "
              f"used by {len(users)} cache(s); {sum(p['claimed'] for p in stored)} held by a running build; "
              f"{len(unused)} unused ({_size(sum(p['bytes'] for p in unused))})"
              + (f": `medkor cache gc {cache_dir}` removes them" if unused else ""))
        for item in stored if each else []:
            where = ", ".join(item["used_by"]) or ("held by a running build" if item["claimed"] else "unused")
            print(f"    {item[kind]}  {_size(item['bytes'])}  {where}")


def _ls(cache_dir: Path, as_json: bool, each_piece: bool = False) -> int:
    from medkor.data.inventory import list_caches  # pyarrow: imported once the arguments are known

    entries = list_caches(cache_dir)
    for entry in entries:
        if as_json:
            print(json.dumps(entry, ensure_ascii=False))
            continue
        shared = f" ({_size(entry['own_bytes'])} its own)" if entry.get("own_bytes", entry["bytes"]) != entry["bytes"] else ""
        print(f"{entry['name']}  {_size(entry['bytes'])}{shared}  {entry['state']}")
        if "rows" in entry:
            print(f"    {entry['rows']} rows, {entry['tokens']} tokens, {entry['documents']} documents, "
                  f"{entry['skipped']} skipped, {_count(entry['pieces'], 'piece')}, "
                  f"{_count(entry['segments'], 'row segment')}, "
                  f"created {entry['created']}")
            print(f"    tokenizer {entry['tokenizer_path']}; files {', '.join(entry['files'])}")
            print(f"    {json.dumps(entry['params'], ensure_ascii=False)}")
    if not entries and not as_json:
        print(f"no caches in {cache_dir}")
    _ls_stored(cache_dir, as_json, each_piece)
    return 0


def _gc(cache_dir: Path, dry_run: bool) -> int:
    from medkor.data.inventory import collect_garbage

    removed, kept = collect_garbage(cache_dir, dry_run)
    for path, size in removed:
        print(f"{'would remove' if dry_run else 'removed'} {path} ({_size(size)})")
    print(f"{len(removed)} unused piece(s) and row segment(s) {'to remove' if dry_run else 'removed'} "
          f"({_size(sum(size for _, size in removed))}); {kept} in use kept")
    from medkor.data.inventory import list_caches

    if kept and any(entry["state"].startswith("stale") for entry in list_caches(cache_dir)):
        print(f"stale caches keep the pieces and row segments they were built from: "
              f"`medkor cache rm --stale {cache_dir}` (or `medkor cache rm {cache_dir} NAME`) removes caches, "
              "then gc frees what only they used")
    return 0


def _verify(cache_dir: Path, names: list[str]) -> int:
    from medkor.data.inventory import list_caches, verify_cache

    failed = 0
    for entry in list_caches(cache_dir):
        if entry["name"].startswith(".") or (names and not any(entry["name"].startswith(n) for n in names)):
            continue
        problems = verify_cache(Path(entry["path"]))
        print(f"{entry['name']}: {'ok' if not problems else 'FAILED'}")
        for problem in problems:
            print(f"    {problem}")
        failed += bool(problems)
    if failed:
        print(f"`medkor prepare --config ...` writes damaged row segments again from their pieces (and rebuilds a "
              f"removed cache); `medkor cache rm {cache_dir} NAME` removes a cache")
    return 1 if failed else 0


def _rm(cache_dir: Path, names: list[str], older_than: float | None, everything: bool, dry_run: bool,
        stale: bool = False) -> int:
    from medkor.data.inventory import CacheInUse, RemoveError, collect_garbage, remove_cache, select
    from medkor.data.readers import describe_readers, live_readers

    if not (names or older_than is not None or everything or stale):
        print("medkor cache rm: name caches, or give --older-than DAYS, --stale or --all (leftover build folders "
              "are removed in every case)", file=sys.stderr)
    busy = 0
    chosen = select(cache_dir, names, older_than, everything, stale)
    unmatched = [n for n in names if not any(f.name.startswith(n) or (len(n) >= 6 and n in f.name) for f in chosen)]
    for name in unmatched:
        print(f"medkor cache rm: no cache in {cache_dir} matches {name!r} (see `medkor cache ls {cache_dir}`)",
              file=sys.stderr)
    failed = 0
    for folder in chosen:
        link = f" (a link; its target {os.readlink(folder)} is kept)" if folder.is_symlink() else ""
        if dry_run:
            readers = [] if link else live_readers(folder)
            print(f"would skip {folder}: {describe_readers(readers)}" if readers else f"would remove {folder}{link}")
            continue
        try:
            removed = remove_cache(folder)
        except CacheInUse as err:
            print(f"skipped {err}", file=sys.stderr)  # the message says this cache was left as it is
            busy += 1
            continue
        except RemoveError as err:
            print(f"medkor cache rm: error: {err}", file=sys.stderr)
            failed += 1
            continue
        if removed:
            print(f"removed {folder}{link}")
        else:
            print(f"skipped {folder}: a build of this key is running", file=sys.stderr)
            busy += 1
    if chosen and not dry_run:  # their rows: the segments no other cache shares (pieces stay, for rebuilds)
        freed, _ = collect_garbage(cache_dir, kinds=("segment",))
        if freed:
            print(f"removed {len(freed)} row segment(s) no other cache uses ({_size(sum(s for _, s in freed))}); "
                  f"tokenized pieces stay until `medkor cache gc {cache_dir}`")
    return 1 if busy or unmatched or failed else 0


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    if not args.cache_dir.is_dir():
        print(f"medkor cache {args.action}: error: {args.cache_dir} is not a directory", file=sys.stderr)
        return 2
    if args.action == "ls":
        return _ls(args.cache_dir, args.json, args.pieces)
    if args.action == "verify":
        return _verify(args.cache_dir, args.names)
    if args.action == "gc":
        return _gc(args.cache_dir, args.dry_run)
    return _rm(args.cache_dir, args.names, args.older_than, args.all, args.dry_run, args.stale)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
