"""Reading JSONL: every kind of bad input gets an error naming file and line."""

from __future__ import annotations

import pytest

from medkor.data.sources import DataError, ReadStats, read_texts, require_train_files, split_files
from tests.data.conftest import write_jsonl


def _read(path, **kw):
    return list(read_texts(path, **kw))


@pytest.mark.parametrize(
    "line, expected",
    [
        ('{"text": "정상"', "malformed JSON"),
        ('["not", "an object"]', "expected a JSON object"),
        ('{"body": "본문"}', "missing field 'text'"),
        ('{"text": 42}', "is int, not a string"),
        ('{"text": "   "}', "is empty"),
        # valid JSON, but an unpaired surrogate escape is no text (it failed later, deep in the build)
        ('{"text": "a\\ud800b"}', "unpaired surrogate"),
    ],
)
def test_bad_line_names_file_and_line(tmp_path, line, expected):
    path = write_jsonl(tmp_path / "train.jsonl", ['{"text": "고혈압"}', "", line], raw=True)
    with pytest.raises(DataError) as err:
        _read(path)
    assert f"{path}:3:" in str(err.value) and expected in str(err.value)


def test_non_utf8_bytes(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_bytes('{"text": "좋음"}\n'.encode() + b'{"text": "\xff\xfe"}\n')
    with pytest.raises(DataError, match=r"train.jsonl:2: bytes that are not UTF-8"):
        _read(path)


def test_empty_and_missing_files(tmp_path):
    empty = tmp_path / "train.jsonl"
    empty.write_text("")
    with pytest.raises(DataError, match="is empty"):
        _read(empty)
    with pytest.raises(DataError, match="not found"):
        _read(tmp_path / "nope.jsonl")
    blank = tmp_path / "blank.jsonl"
    blank.write_text("\n\n")
    with pytest.raises(DataError, match="no usable records"):
        _read(blank)


def test_skip_counts_bad_records(tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", ['{"text": "가"}', "{oops", '{"text": null}', '{"text": "나"}'], raw=True)
    stats = ReadStats()
    assert _read(path, on_bad_record="skip", stats=stats) == ["가", "나"]
    assert stats.documents == 2 and stats.skipped == 2
    assert stats.skipped_examples[0].startswith(f"{path}:2:")


def test_custom_text_field(tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", [{"body": "내용", "text": 1}])
    assert _read(path, text_field="body") == ["내용"]


def test_split_files_patterns_and_empty_dir(tmp_path):
    with pytest.raises(DataError, match="empty folder"):
        require_train_files(tmp_path)
    with pytest.raises(DataError, match="does not exist"):
        split_files(tmp_path / "absent", "train")
    for name in ["train.jsonl", "train-00001.jsonl", "train-00000.jsonl", "train/b.jsonl", "train/a.jsonl"]:
        write_jsonl(tmp_path / name, [{"text": name}])
    names = [str(p.relative_to(tmp_path)) for p in require_train_files(tmp_path)]
    assert names == ["train.jsonl", "train-00000.jsonl", "train-00001.jsonl", "train/a.jsonl", "train/b.jsonl"]
    assert split_files(tmp_path, "validation") == []
