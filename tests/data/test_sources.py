"""Reading JSONL: chunks of whole lines, and every kind of bad line named by file and line."""

from __future__ import annotations

import pytest

from medkor.data.sources import (
    DataError, ReadStats, Selection, check_file, line_spans, parse_chunk, read_span, require_train_files, split_files,
)
from tests.data.conftest import write_jsonl


def read_chunks(path, chunk_bytes=1 << 20):
    return map(read_span, line_spans(path, chunk_bytes))


def _problems(path, text_field="text"):
    return [problem for chunk in read_chunks(path) for problem in parse_chunk(chunk, text_field).problems]


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
    problems = _problems(path)
    assert [number for number, _ in problems] == [3]
    with pytest.raises(DataError) as err:
        ReadStats().record(path, problems, "error")
    assert f"{path}:3:" in str(err.value) and expected in str(err.value) and "--data.on_bad_record skip" in str(err.value)


def test_non_utf8_bytes(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_bytes('{"text": "좋음"}\n'.encode() + b'{"text": "\xff\xfe"}\n')
    with pytest.raises(DataError, match=r"train.jsonl:2: bytes that are not UTF-8"):
        ReadStats().record(path, _problems(path), "error")


def test_empty_and_missing_files(tmp_path):
    empty = tmp_path / "train.jsonl"
    empty.write_text("")
    with pytest.raises(DataError, match="is empty"):
        check_file(empty)
    with pytest.raises(DataError, match="not found"):
        check_file(tmp_path / "nope.jsonl")


def test_chunks_hold_whole_lines_numbered_from_one(tmp_path):
    lines = [f'{{"text": "문서 {i} ' + "가" * (i % 7) + '"}' for i in range(50)]
    path = write_jsonl(tmp_path / "t.jsonl", lines, raw=True)
    chunks = list(read_chunks(path, chunk_bytes=100))
    assert len(chunks) > 5
    assert [line.decode().rstrip("\n") for chunk in chunks for line in chunk.lines] == lines
    assert [chunk.first_line for chunk in chunks] == [1 + sum(len(c.lines) for c in chunks[:i]) for i in range(len(chunks))]
    parsed = [parse_chunk(chunk, "text") for chunk in chunks]
    assert [n for p in parsed for n in p.line_numbers] == list(range(1, 51))


def test_skip_counts_bad_records(tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", ['{"text": "가"}', "{oops", '{"text": null}', "", '{"text": "나"}'], raw=True)
    (chunk,) = read_chunks(path)
    parsed = parse_chunk(chunk, "text")
    assert parsed.texts == ["가", "나"] and parsed.line_numbers == [1, 5]
    stats = ReadStats()
    stats.record(path, parsed.problems, "skip")
    assert stats.skipped == 2 and stats.skipped_examples[0].startswith(f"{path}:2:")


def test_custom_text_field(tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", [{"body": "내용", "text": 1}])
    (chunk,) = read_chunks(path)
    assert parse_chunk(chunk, "body").texts == ["내용"]


def test_selection_rejects_an_unknown_bad_record_policy(tmp_path):
    with pytest.raises(ValueError, match="on_bad_record must be 'error' or 'skip'"):
        Selection(files=[], on_bad_record="ignore")


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


def test_malformed_json_names_the_column_of_the_error_not_of_the_line_break():
    from medkor.data.sources import read_json_line

    line = '{"text": "abc def ghi jkl mno pqr st"\n'  # the closing brace is missing at column 38
    record, problem, blank = read_json_line(line.encode())
    assert record is None and not blank
    assert "at column 38" in problem, problem
