"""Check the CRC-32 of every record of a zip archive (a `torch.save` file) before anything reads it.

`torch.save` writes a zip archive whose records (the pickle, one per tensor storage)
each carry the CRC-32 of their bytes, but `torch.load` never checks them: a flipped
bit inside a tensor loads as a slightly different number and trains on. `check_zip_crcs`
reads every record once and compares, so a damaged file is refused by name.

Cost: one read of the file plus CRC-32 (zlib; it releases the GIL) over its bytes,
records spread over threads. The read also warms the page cache for the load that
follows. A file already checked in this process, unchanged since (same inode, size,
modification and change times), is not read again.

Plain Python (no torch), usable from scripts.
"""

from __future__ import annotations

import os
import struct
import threading
import zipfile
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Optional, Union

PathLike = Union[str, "os.PathLike[str]"]

_LOCAL_HEADER = struct.Struct("<4sHHHHHIIIHH")
_LOCAL_MAGIC = b"PK\x03\x04"
_BLOCK = 16 << 20
_checked: set[tuple] = set()
_checked_lock = threading.Lock()


class ZipCrcError(ValueError):
    """An archive whose bytes differ from what was written (`record` names the first bad one), or no archive."""

    def __init__(self, message: str, record: Optional[str] = None) -> None:
        super().__init__(message)
        self.record = record


@dataclass(frozen=True)
class _Record:
    name: str
    offset: int  # of the data, after the local header
    size: int
    crc: int


def _records(path: str) -> list[_Record]:
    try:
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as err:
        raise ZipCrcError(f"not a readable zip archive ({type(err).__name__}: {err})") from None
    records = []
    with open(path, "rb") as handle:
        for info in infos:
            if info.compress_type != zipfile.ZIP_STORED:
                raise ZipCrcError(f"record {info.filename} is compressed; torch.save never compresses", info.filename)
            handle.seek(info.header_offset)
            header = handle.read(_LOCAL_HEADER.size)
            if len(header) != _LOCAL_HEADER.size or header[:4] != _LOCAL_MAGIC:
                raise ZipCrcError(f"the local header of record {info.filename} is damaged", info.filename)
            name_len, extra_len = _LOCAL_HEADER.unpack(header)[-2:]
            offset = info.header_offset + _LOCAL_HEADER.size + name_len + extra_len
            records.append(_Record(info.filename, offset, info.file_size, info.CRC))
    return records


def _crc_of(path: str, record: _Record) -> int:
    crc = 0
    buffer = bytearray(min(_BLOCK, max(record.size, 1)))
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as handle:
        handle.seek(record.offset)
        left = record.size
        while left:
            got = handle.readinto(view[:min(left, len(buffer))])
            if not got:
                raise ZipCrcError(f"record {record.name} is cut short (the file ends inside it)", record.name)
            crc = zlib.crc32(view[:got], crc)
            left -= got
    return crc


def _stat_key(path: str) -> tuple:
    st = os.stat(path)
    return (os.path.realpath(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def check_zip_crcs(path: PathLike, threads: Optional[int] = None) -> bool:
    """Raise `ZipCrcError` unless every record of the archive at `path` matches its CRC-32.

    Returns False when the archive was written without CRCs (every non-empty record's
    CRC field is 0, as `torch.save` writes with `compute_crc32` off): nothing could be
    checked. True when every record was checked (now or earlier in this process).
    """
    where = os.fspath(path)
    key = _stat_key(where)
    with _checked_lock:
        if key in _checked:
            return True
    records = _records(where)
    filled = [r for r in records if r.size]
    if filled and all(r.crc == 0 for r in filled):
        return False
    workers = max(1, min(threads or os.cpu_count() or 1, len(filled) or 1, 16))
    # largest first, so one big record does not start last
    ordered = sorted(filled, key=lambda r: r.size, reverse=True)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        crcs = list(pool.map(lambda r: _crc_of(where, r), ordered))
    for record, crc in zip(ordered, crcs):
        if crc != record.crc:
            raise ZipCrcError(
                f"record {record.name} ({record.size:,} bytes) fails its CRC-32 check (0x{crc:08x}, written as "
                f"0x{record.crc:08x}): its bytes changed after it was written", record.name)
    with _checked_lock:
        _checked.add(key)
    return True
