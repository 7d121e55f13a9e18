"""Record CRC-32s of torch.save archives: a flipped bit anywhere in a record is found and named."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from medkor.run import zip_crc
from medkor.run.zip_crc import ZipCrcError, check_zip_crcs


def _saved(path: Path) -> Path:
    torch.save({"w": torch.arange(5000, dtype=torch.float32), "b": torch.ones(3), "note": "x"}, path)
    return path


def test_an_intact_archive_passes_and_is_not_read_twice(tmp_path, monkeypatch):
    path = _saved(tmp_path / "ok.ckpt")
    assert check_zip_crcs(path) is True
    monkeypatch.setattr(zip_crc, "_crc_of", lambda *a: pytest.fail("read again"))
    assert check_zip_crcs(path) is True


@pytest.mark.parametrize("where", ["first", "middle", "last"])
def test_one_flipped_bit_is_found_and_named(tmp_path, where):
    path = _saved(tmp_path / "bad.ckpt")
    record = max(zip_crc._records(str(path)), key=lambda r: r.size)
    at = {"first": 0, "middle": record.size // 2, "last": record.size - 1}[where]
    data = bytearray(path.read_bytes())
    data[record.offset + at] ^= 0x10
    path.write_bytes(bytes(data))
    with pytest.raises(ZipCrcError, match=f"record {record.name} .* fails its CRC-32 check") as info:
        check_zip_crcs(path)
    assert info.value.record == record.name


def test_a_file_that_is_no_archive_says_so_without_a_record(tmp_path):
    (tmp_path / "text.ckpt").write_text("not a checkpoint")
    with pytest.raises(ZipCrcError) as info:
        check_zip_crcs(tmp_path / "text.ckpt")
    assert info.value.record is None


def test_an_archive_written_without_crcs_cannot_be_checked(tmp_path):
    from torch.utils.serialization import config

    with config.patch({"save.compute_crc32": False}):  # torch's own switch, restored on exit
        path = _saved(tmp_path / "nocrc.ckpt")
    assert config.save.compute_crc32 is True
    assert check_zip_crcs(path) is False
