"""What is scored is what the files hold: no subset silently dropped, each question counted once,
and every unreadable file one error naming it."""

import csv
import json
import unicodedata

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from medkor.eval.kormedmcqa import EvalSettings, KorMedMCQAEvaluator
from medkor.eval.questions import QuestionError, load_question_set, load_questions, question_key
from tests.eval.tiny_lm import question_record, write_jsonl, write_sample


def _sample(tmp_path):
    return write_sample(tmp_path / "set", sizes={"doctor": 4, "nurse": 3, "pharm": 3, "dentist": 2})


@pytest.mark.parametrize("content", ["", "\n  \n"])
def test_an_empty_default_subset_is_an_error_naming_its_file(tmp_path, content):
    root = _sample(tmp_path)
    empty = root / "doctor" / "test.jsonl"
    empty.write_text(content, encoding="utf-8")
    for subsets in (None, ["doctor", "nurse"]):  # the default four, or asked for by name
        with pytest.raises(QuestionError) as err:
            load_questions(root, subsets=subsets)
        message = str(err.value)
        assert message.startswith(f"{empty}: no questions for subset 'doctor'"), message
        assert "subsets" in message and "fill the file" in message
    assert list(load_questions(root, subsets=["nurse", "pharm", "dentist"])) == ["nurse", "pharm", "dentist"]


def test_an_empty_csv_shard_or_single_file_is_named(tmp_path):
    root = _sample(tmp_path)
    (root / "pharm" / "test.jsonl").unlink()
    header_only = root / "pharm" / "test.csv"
    header_only.write_text("question,A,B,C,D,E,answer\n", encoding="utf-8")
    with pytest.raises(QuestionError, match=rf"^{header_only}: no questions for subset 'pharm'"):
        load_questions(root)
    lone = write_jsonl(tmp_path / "nurse.jsonl", [])
    with pytest.raises(QuestionError, match=rf"^{lone}: no questions"):
        load_questions(lone)


def test_a_question_repeated_five_times_counts_once_and_the_copies_are_named(tmp_path):
    root = _sample(tmp_path)
    path = root / "doctor" / "test.jsonl"
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    repeated = records[1]
    copy = dict(repeated, question=unicodedata.normalize("NFD", repeated["question"]) + "  ", A=f" {repeated['A']}")
    write_jsonl(path, records + [repeated, copy, repeated, repeated])  # lines 5-8 repeat line 2
    loaded = load_question_set(root)
    doctor = loaded.questions["doctor"]
    assert [q.index for q in doctor] == [0, 1, 2, 3]  # each question once, at its first position
    assert loaded.dropped() == {"doctor": 4, "nurse": 0, "pharm": 0, "dentist": 0}
    assert loaded.counts()["doctor"] == {"count": 4, "duplicates_dropped": 4, "files": [str(path)]}
    line = loaded.repeats_line()
    assert "\n" not in line and "4 repeated question(s) counted once (doctor 4;" in line
    assert f"{path}:2 again at :5, :6, :7, :8" in line

    evaluator = KorMedMCQAEvaluator(EvalSettings(source=str(root)))
    assert {s: len(q) for s, q in evaluator.questions.items()} == {"doctor": 4, "nurse": 3, "pharm": 3, "dentist": 2}
    assert evaluator.question_set.dropped()["doctor"] == 4


def test_only_the_same_subset_question_and_options_make_a_copy(tmp_path):
    base = question_record(0, subject="doctor")
    other_option = dict(base, E="다른 보기")
    other_subset = dict(base, subject="nurse")
    path = write_jsonl(tmp_path / "all.jsonl", [base, other_option, other_subset, dict(base, cot="풀이")])
    loaded = load_question_set(path)
    assert {s: len(q) for s, q in loaded.questions.items()} == {"doctor": 2, "nurse": 1}
    assert loaded.dropped() == {"doctor": 1, "nurse": 0}
    first, second = loaded.questions["doctor"]
    assert question_key(first) != question_key(second)


def test_copies_with_different_answers_are_an_error_naming_both_lines(tmp_path):
    records = [question_record(i) for i in range(3)] + [question_record(1, answer=5)]
    path = write_jsonl(tmp_path / "doctor" / "test.jsonl", records)
    with pytest.raises(QuestionError) as err:
        load_questions(tmp_path, subsets=["doctor"])
    assert str(err.value).startswith(f"{path}:2 and {path}:4: the same doctor question with different answers (B and E)")


def test_max_samples_counts_questions_not_copies(tmp_path):
    records = [question_record(0), question_record(0), question_record(1), question_record(2), question_record(2)]
    write_jsonl(tmp_path / "doctor" / "test.jsonl", records)
    loaded = load_question_set(tmp_path, subsets=["doctor"], max_samples=2)
    assert [q.index for q in loaded.questions["doctor"]] == [0, 2]
    assert loaded.dropped() == {"doctor": 1}  # the repeat of question 2 is not among those scored


def test_a_non_utf8_file_is_one_error_with_line_offset_and_the_conversion(tmp_path):
    good = json.dumps(question_record(0), ensure_ascii=False) + "\n"
    bad = json.dumps(question_record(1), ensure_ascii=False) + "\n"
    path = tmp_path / "doctor" / "test.jsonl"
    path.parent.mkdir()
    path.write_bytes(good.encode("utf-8") + bad.encode("cp949"))  # a second line saved as CP949 (EUC-KR)
    with pytest.raises(QuestionError) as err:
        load_questions(tmp_path, subsets=["doctor"])
    offset = len(good.encode("utf-8")) + next(i for i, byte in enumerate(bad.encode("cp949")) if byte >= 0x80)
    message = str(err.value)
    assert message.startswith(f"{path}:2: not UTF-8 text (byte 0x") and f"at byte offset {offset}" in message
    assert "CP949" in message and "iconv -f CP949 -t UTF-8 test.jsonl" in message

    table = tmp_path / "nurse.csv"
    with table.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(question_record(0)))
        writer.writeheader()
        writer.writerows([question_record(0), question_record(1)])
    table.write_bytes(table.read_bytes() + "3번 문제".encode("utf-16"))
    with pytest.raises(QuestionError, match=rf"^{table}:4: not UTF-8 text \(byte 0xff at byte offset \d+"):
        load_questions(table)


def test_a_utf8_byte_order_mark_is_accepted(tmp_path):
    path = tmp_path / "pharm.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + "".join(json.dumps(question_record(i)) + "\n" for i in range(2)).encode())
    assert len(load_questions(path)["doctor"]) == 2


@pytest.mark.parametrize("damage", ["truncated", "empty", "not parquet", "damaged page"])
def test_an_unreadable_parquet_file_is_one_error_naming_it(tmp_path, damage):
    shard = tmp_path / "dentist" / "test-00000-of-00001.parquet"
    shard.parent.mkdir()
    pq.write_table(pa.Table.from_pylist([question_record(i) for i in range(20)]), shard)
    data = shard.read_bytes()
    shard.write_bytes({
        "truncated": data[: len(data) // 2],
        "empty": b"",
        "not parquet": json.dumps(question_record(0)).encode(),
        "damaged page": data[:100] + b"\xff" * 200 + data[300:],
    }[damage])
    with pytest.raises(QuestionError) as err:
        load_questions(tmp_path, subsets=["dentist"])
    message = str(err.value)
    assert message.startswith(f"{shard}: not a readable Parquet file (") and "\n" not in message
    assert "download or export it again" in message


def test_a_malformed_csv_line_is_named(tmp_path):
    path = tmp_path / "nurse.csv"
    path.write_text("question,A,B,C,D,E,answer\n질문,a,b,c,d,e,1\n\"" + "가" * 200_000 + "\",a,b,c,d,e,1\n",
                    encoding="utf-8")
    with pytest.raises(QuestionError, match=rf"^{path}:3: not valid CSV \(field larger than field limit"):
        load_questions(path)
