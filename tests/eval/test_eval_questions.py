import csv
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from medkor.eval.questions import QuestionError, load_questions
from tests.eval.tiny_lm import question_record, write_jsonl


def test_folder_layout_loads_subsets_in_order(sample_dir):
    questions = load_questions(sample_dir)
    assert list(questions) == ["doctor", "nurse", "pharm", "dentist"]
    assert [len(v) for v in questions.values()] == [7, 6, 5, 4]
    first = questions["nurse"][2]
    assert (first.subset, first.index) == ("nurse", 2)
    assert first.answer == "CDEAB"[0]  # record 12 -> answer (12 % 5) + 1 = 3 -> C
    assert first.options[1] == "신장 질환"
    assert str(sample_dir / "nurse" / "test.jsonl") + ":3" == first.where


def test_subsets_and_max_samples(sample_dir):
    questions = load_questions(sample_dir, subsets=["pharm", "doctor"], max_samples=2)
    assert list(questions) == ["pharm", "doctor"]
    assert [q.index for q in questions["doctor"]] == [0, 1]


def test_fewshot_split_and_letter_answers(tmp_path):
    write_jsonl(tmp_path / "doctor" / "fewshot.jsonl", [question_record(i, answer="abcde"[i]) for i in range(5)])
    shots = load_questions(tmp_path, subsets=["doctor"], split="fewshot")["doctor"]
    assert [q.answer for q in shots] == list("ABCDE")


def test_csv_and_parquet_in_the_hub_schema(tmp_path):
    records = [question_record(i, answer=i % 5 + 1) for i in range(4)]
    with (tmp_path / "nurse.csv").open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(records[0]))
        writer.writeheader()
        writer.writerows(records)
    from_csv = load_questions(tmp_path / "nurse.csv")  # subject column says doctor
    assert list(from_csv) == ["doctor"] and [q.answer for q in from_csv["doctor"]] == list("ABCD")
    (tmp_path / "pq" / "dentist").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(records), tmp_path / "pq" / "dentist" / "test.parquet")
    from_parquet = load_questions(tmp_path / "pq", subsets=["dentist"])
    assert [q.question for q in from_parquet["dentist"]] == [r["question"] for r in records]
    assert from_parquet["dentist"][0].subset == "dentist"


def test_single_file_grouped_by_subject_or_named_by_file(tmp_path):
    mixed = [question_record(i, subject=["nurse", "pharm"][i % 2]) for i in range(6)]
    questions = load_questions(write_jsonl(tmp_path / "all.jsonl", mixed))
    assert list(questions) == ["nurse", "pharm"]
    assert [q.index for q in questions["pharm"]] == [0, 1, 2]
    unnamed = [{k: v for k, v in question_record(i).items() if k != "subject"} for i in range(3)]
    assert list(load_questions(write_jsonl(tmp_path / "dentist_2024.jsonl", unnamed))) == ["dentist"]
    with pytest.raises(QuestionError, match=r"misc\.jsonl:1: cannot tell the subset"):
        load_questions(write_jsonl(tmp_path / "misc.jsonl", unnamed))


@pytest.mark.parametrize(
    "change, message",
    [
        ({"answer": 6}, r"test\.jsonl:2: field 'answer' is 6; expected 1-5"),
        ({"answer": "F"}, r"test\.jsonl:2: field 'answer' is 'F'"),
        ({"answer": True}, r"field 'answer' is True"),
        ({"C": "  "}, r"test\.jsonl:2: field 'C' is empty"),
        ({"question": None}, r"test\.jsonl:2: field 'question' is empty"),
    ],
)
def test_bad_records_name_file_line_and_field(tmp_path, change, message):
    records = [question_record(0), question_record(1, **change)]
    write_jsonl(tmp_path / "doctor" / "test.jsonl", records)
    with pytest.raises(QuestionError, match=message):
        load_questions(tmp_path, subsets=["doctor"])


def test_missing_columns_and_missing_files(tmp_path):
    record = question_record(0)
    del record["E"], record["answer"]
    write_jsonl(tmp_path / "doctor" / "test.jsonl", [record])
    with pytest.raises(QuestionError, match=r"test\.jsonl:1: missing field\(s\) E, answer"):
        load_questions(tmp_path, subsets=["doctor"])
    with pytest.raises(QuestionError, match=r"no file for subset .nurse.*tried nurse/test\.\*"):
        load_questions(tmp_path, subsets=["nurse"])
    with pytest.raises(QuestionError, match="no such file or folder"):
        load_questions(tmp_path / "absent.jsonl")
    with pytest.raises(QuestionError, match="unknown subset"):
        load_questions(tmp_path, subsets=["surgeon"])
    (tmp_path / "doctor_bad.jsonl").write_text(json.dumps(question_record(0)) + "\n{oops\n", encoding="utf-8")
    with pytest.raises(QuestionError, match=r"doctor_bad\.jsonl:2: not valid JSON"):
        load_questions(tmp_path / "doctor_bad.jsonl")


def test_csv_error_names_the_line(tmp_path):
    path = tmp_path / "doctor.csv"
    records = [question_record(0), question_record(1, answer=0)]
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(records[0]))
        writer.writeheader()
        writer.writerows(records)
    with pytest.raises(QuestionError, match=r"doctor\.csv:3: field 'answer' is '0'"):
        load_questions(path)


def test_hub_id_goes_through_datasets(monkeypatch):
    import datasets

    calls = []

    def fake_load_dataset(path, name, split):
        calls.append((path, name, split))
        return [question_record(i, subject=name) for i in range(2)]

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    questions = load_questions("sean0042/KorMedMCQA", subsets=["doctor", "pharm"], split="dev")
    assert calls == [("sean0042/KorMedMCQA", "doctor", "dev"), ("sean0042/KorMedMCQA", "pharm", "dev")]
    assert questions["pharm"][1].where == "sean0042/KorMedMCQA[pharm/dev] row 1"

    def failing(path, name, split):
        raise ConnectionError("offline")

    monkeypatch.setattr(datasets, "load_dataset", failing)
    with pytest.raises(QuestionError, match="not a local path and loading it from the hub"):
        load_questions("someone/KorMedMCQA", subsets=["doctor"])


def _texts(questions):
    return {subset: [(q.index, q.question, q.answer) for q in qs] for subset, qs in questions.items()}


def test_flat_subset_split_files_and_hub_snapshot_shards_load_as_the_folder_layout(sample_dir, tmp_path):
    expected = _texts(load_questions(sample_dir))
    flat, snapshot = tmp_path / "flat", tmp_path / "snapshot"
    flat.mkdir()
    for subset in expected:
        records = [json.loads(line) for line in (sample_dir / subset / "test.jsonl").read_text(encoding="utf-8").splitlines()]
        write_jsonl(flat / f"{subset}-test.jsonl", records)
        half = len(records) // 2  # two shards, as the hub writes a large split
        (snapshot / subset).mkdir(parents=True)
        for n, part in enumerate((records[:half], records[half:])):
            pq.write_table(pa.Table.from_pylist(part), snapshot / subset / f"test-0000{n}-of-00002.parquet")
    assert _texts(load_questions(flat)) == expected
    assert _texts(load_questions(snapshot)) == expected  # indices run on across shards


def test_missing_subset_error_lists_the_layouts_tried(tmp_path):
    write_jsonl(tmp_path / "doctor" / "test.jsonl", [question_record(i) for i in range(2)])
    with pytest.raises(QuestionError) as err:
        load_questions(tmp_path, subsets=["doctor", "nurse"])
    message = str(err.value)
    for layout in ("nurse/test.*", "nurse-test.*", "nurse/test-*.parquet", "subject column"):
        assert layout in message, message
