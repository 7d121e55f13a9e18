"""Readers of a cache: a process that opens a cache to train or evaluate on marks it, so that
`medkor cache rm` leaves it (and `medkor cache gc` its rows) while the process runs.

Layout: `<cache_dir>/.readers/<cache name>@<host>-<pid>` (JSON: the command and when it
opened the cache), removed when the process exits. A mark whose process is gone from
this host is stale: ignored, and removed by the next look. A mark of another host counts
as live, since its process cannot be seen from here; the message names the file to
delete once that run is over.
"""

from __future__ import annotations

import atexit
import json
import os
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from medkor.run.atomic import host_tag, writer_alive

READERS_DIR = ".readers"
_marked: dict[Path, Path] = {}  # cache folder -> this process's mark


def mark_reader(folder: Path) -> None:
    """Mark this process as a reader of the cache `folder` until it exits (nothing where the directory
    is read-only: no one can remove the cache there either)."""
    folder = Path(folder)
    if folder in _marked:
        return
    mark = folder.parent / READERS_DIR / f"{folder.name}@{host_tag()}-{os.getpid()}"
    try:
        mark.parent.mkdir(exist_ok=True)
        mark.write_text(json.dumps({
            "command": " ".join(["medkor", *sys.argv[1:]]) if sys.argv else "",
            "opened": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }), encoding="utf-8")
    except OSError:
        return
    _marked[folder] = mark
    if len(_marked) == 1:
        atexit.register(_unmark_all)


def _unmark_all() -> None:
    for mark in _marked.values():
        try:
            mark.unlink(missing_ok=True)
        except OSError:
            pass
    _marked.clear()


def live_readers(folder: Path) -> list[dict[str, Any]]:
    """The processes reading the cache `folder` now: host, pid, command, opened, mark (the file)."""
    folder = Path(folder)
    readers = []
    root = folder.parent / READERS_DIR
    if not root.is_dir():
        return readers
    for mark in root.glob(f"{folder.name}@*"):
        host, _, pid = mark.name.split("@", 1)[1].rpartition("-")
        if not pid.isdigit():
            continue
        if not writer_alive(host, int(pid)) or (host == host_tag() and int(pid) == os.getpid() and folder not in _marked):
            mark.unlink(missing_ok=True)  # its process is gone
            continue
        try:
            facts = json.loads(mark.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            facts = {}
        readers.append({"host": host, "pid": int(pid), "command": facts.get("command", "?"),
                        "opened": facts.get("opened", "?"), "mark": str(mark)})
    return readers


def describe_readers(readers: list[dict[str, Any]]) -> str:
    """One phrase naming who reads a cache and how to free it."""
    first = readers[0]
    others = f" and {len(readers) - 1} more" if len(readers) > 1 else ""
    remote = "" if first["host"] == host_tag() else f" (another host: delete {first['mark']} once that run is over)"
    return (f"in use by pid {first['pid']} on host {first['host']} since {first['opened']}: "
            f"{first['command']}{others}{remote}")
