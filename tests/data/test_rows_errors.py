"""A damaged rows file is one `medkor ...: error:` line naming the file and the commands that repair it."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from medkor.cli import user_errors
from medkor.commands import cache as cache_cmd
from medkor.data.cache import CacheRequest, ensure_cache, open_cache
from medkor.data.packing import Packer
from medkor.data.rows import SCHEMA, ROWS_PER_BATCH_KEY, RowsFile, RowsFileError, write_rows
from tests.data.conftest import segments_of
from medkor.data.sources import DataError, Selection, split_files


def _request(data_dir: Path, tokenizer_dir: Path) -> CacheRequest:
    return CacheRequest(split="train", selection=Selection(files=split_files(data_dir, "train")), data_dir=data_dir,
                        cache_dir=data_dir / ".cache", tokenizer_path=str(tokenizer_dir), max_length=32, num_proc=1)


def _rows_file(path: Path) -> Path:
    packer = Packer(8, packing=True)
    values = np.arange(100, dtype=np.int32)
    write_rows(path, [*packer.add(values, np.array([30, 30, 40])), *packer.finish()], per_batch=4)
    return path


def _damage_footer(path: Path) -> None:
    """Same size, footer bytes overwritten: the manifest's size check passes, Arrow cannot open it."""
    data = bytearray(path.read_bytes())
    data[-40:-20] = b"\xff" * 20
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", ["footer", "magic", "truncated", "empty", "missing"])
def test_damaged_rows_file_is_a_data_error_naming_file_and_commands(tmp_path, damage):
    folder = tmp_path / "cache" / "train-0123456789abcdef0123"
    folder.mkdir(parents=True)
    path = _rows_file(folder / "rows.arrow")
    assert len(RowsFile(path)) == 13
    if damage == "footer":
        _damage_footer(path)
    elif damage == "magic":
        path.write_bytes(path.read_bytes()[:-6] + b"XXXXXX")
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif damage == "empty":
        path.write_bytes(b"")
    else:
        path.unlink()
    with pytest.raises(RowsFileError) as err:
        RowsFile(path)
    message = str(err.value)
    assert isinstance(err.value, DataError) and isinstance(err.value, user_errors())  # one line, exit 1
    assert message.startswith(f"{path}: cannot read") and "\n" not in message
    assert f"medkor cache verify {folder.parent} {folder.name}" in message
    assert f"medkor cache rm {folder.parent} {folder.name}" in message and "medkor prepare" in message


def test_rows_file_of_another_layout_is_the_same_one_line(tmp_path):
    path = tmp_path / "rows.arrow"
    schema = SCHEMA.with_metadata({ROWS_PER_BATCH_KEY: b"many"})
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, schema):
        pass
    with pytest.raises(RowsFileError, match=r"rows_per_batch 'many' is not a number.*medkor cache rm"):
        RowsFile(path)


def test_record_batch_with_offsets_past_its_data_is_named_not_sliced(tmp_path):
    # a flipped byte in a list column's offsets: the last offset points past the values
    path = tmp_path / "rows.arrow"
    ids = pa.array([list(range(333)), list(range(444))], pa.list_(pa.int32()))
    empty = pa.array([[], []], pa.list_(pa.int32()))
    schema = SCHEMA.with_metadata({ROWS_PER_BATCH_KEY: b"2"})
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, schema) as writer:
        writer.write_batch(pa.record_batch([ids, empty, empty], schema=schema))
    assert len(RowsFile(path)) == 2
    offsets = np.array([0, 333, 777], np.int32).tobytes()
    data = path.read_bytes()
    assert data.count(offsets) == 1
    path.write_bytes(data.replace(offsets, np.array([0, 333, 7777], np.int32).tobytes()))
    with pytest.raises(RowsFileError, match=r"rows\.arrow: cannot read .*record batch 0: .*medkor cache verify"):
        RowsFile(path)


def test_damaged_cache_footer_in_setup_then_the_named_commands_repair_it(data_dir, tokenizer_dir, capsys):
    built = ensure_cache(_request(data_dir, tokenizer_dir))
    segment = segments_of(built.path)[0]
    _damage_footer(segment)
    with pytest.raises(RowsFileError) as err:
        open_cache(_request(data_dir, tokenizer_dir))  # the manifest's sizes still match
    message = str(err.value)
    assert str(segment) in message
    verify, remove = (shlex.split(m) for m in re.findall(r"`medkor cache ((?:verify|rm) [^`]+)`", message))
    capsys.readouterr()
    assert cache_cmd.main(verify) == 1  # `medkor cache verify` reports it too
    out = capsys.readouterr().out
    assert f"{built.path.name}: FAILED" in out and segment.name in out
    assert cache_cmd.main(remove) == 0 and not built.path.exists()
    assert ensure_cache(_request(data_dir, tokenizer_dir)).status == "built"
    rows, manifest = open_cache(_request(data_dir, tokenizer_dir))
    assert len(rows) == manifest["rows"] > 0
