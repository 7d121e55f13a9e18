"""Evaluation leak: planted questions are found (exact and reworded), reported by file:line, refused."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from medkor.data import MedKorDataModule
from medkor.data.formats import FormatSpec
from medkor.data.leak import LeakCheck, QuestionIndex, leak_report, ngram_hashes, normalize, _codes
from medkor.data.sources import DataError
from medkor.eval.questions import load_questions
from tests.data.conftest import korean_docs, write_jsonl

ROOT = Path(__file__).resolve().parents[2]
EVAL = ROOT / "medkor/assets/demo/kormedmcqa"
TOKENIZER = str(ROOT / "medkor/assets/demo/tokenizer-extended")


@pytest.fixture(scope="module")
def questions():
    return load_questions(EVAL, split="test")


def test_normalize_and_hashes():
    assert normalize("Ａ형　간염,  B형-간염!") == "a형간염b형간염"
    codes = _codes("가나다라마바")
    hashes = ngram_hashes(codes, 4)
    assert len(hashes) == 3 and len(set(hashes.tolist())) == 3
    assert ngram_hashes(_codes("가나다라"), 4)[0] == hashes[0]


def _plant(tmp_path, questions):
    nurse = questions["nurse"][3]
    doctor = questions["doctor"][5]
    reworded = doctor.question.replace("?", "").split()
    reworded = " ".join(reworded[: int(len(reworded) * 0.8)]) + " 무엇인가"  # 80 % of the stem, new ending
    docs = korean_docs(40)
    docs[7] = {"text": "다음은 기출 문제이다. " + nurse.question.replace(" ", "  ") + " 해설은 생략한다."}
    docs[21] = {"text": reworded}
    write_jsonl(tmp_path / "data" / "train.jsonl", docs)
    return nurse, doctor


def test_planted_questions_are_found_by_file_and_line(tmp_path, questions):
    nurse, doctor = _plant(tmp_path, questions)
    check = LeakCheck(str(EVAL))
    report, path = leak_report([tmp_path / "data/train.jsonl"], FormatSpec(), check, tmp_path / "cache", tmp_path)
    assert report.records == 40 and report.questions == sum(len(q) for q in questions.values())
    found = {(h.where.rsplit("/", 1)[1], h.subset, h.index, h.exact) for h in report.hits}
    assert found == {("train.jsonl:8", "nurse", nurse.index, True), ("train.jsonl:22", "doctor", doctor.index, False)}
    assert 0.5 <= [h for h in report.hits if not h.exact][0].overlap < 1.0
    assert json.loads(path.read_text(encoding="utf-8"))["hits"][0]["where"].endswith("train.jsonl:8")
    again, _ = leak_report([tmp_path / "data/train.jsonl"], FormatSpec(), check, tmp_path / "cache", tmp_path)
    assert again.hits == report.hits  # remembered


def test_mcq_records_are_checked_by_their_question(tmp_path, questions):
    q = questions["pharm"][0]
    record = {"question": q.question, **dict(zip("ABCDE", q.options)), "answer": 1}
    write_jsonl(tmp_path / "train.jsonl", [record])
    report, _ = leak_report([tmp_path / "train.jsonl"], FormatSpec(format="mcq"), LeakCheck(str(EVAL)),
                            tmp_path / "cache", tmp_path)
    assert [(h.subset, h.index, h.exact) for h in report.hits] == [("pharm", 0, True)]


def test_fit_refuses_exact_overlap_and_prepare_reports_it(tmp_path, questions, caplog):
    nurse, _ = _plant(tmp_path, questions)
    kwargs = dict(data_dir=str(tmp_path / "data"), tokenizer_path=TOKENIZER, max_length=64, eval_source=str(EVAL))
    dm = MedKorDataModule(**kwargs)
    logger = logging.getLogger("medkor")  # prints itself (propagate off): listen to it directly
    logger.addHandler(caplog.handler)
    try:
        dm.prepare_caches()  # what `medkor prepare` runs: reports, refuses nothing
    finally:
        logger.removeHandler(caplog.handler)
    text = caplog.text
    assert "1 hold a question, 1 overlap" in text and "train.jsonl:8: holds KorMedMCQA nurse question" in text
    with pytest.raises(DataError, match=r"train\.jsonl:8: holds KorMedMCQA nurse question #\d+ .*allow_eval_overlap"):
        dm.prepare_data()
    MedKorDataModule(**kwargs, allow_eval_overlap=True).prepare_data()


def test_training_on_the_evaluated_files_is_refused(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "train.jsonl").symlink_to(EVAL / "doctor" / "test.jsonl")
    dm = MedKorDataModule(data_dir=str(data), tokenizer_path=TOKENIZER, format="mcq", max_length=512,
                          eval_source=str(EVAL), eval_split="test")
    with pytest.raises(DataError, match="this training file is the KorMedMCQA 'test' split the evaluation scores"):
        dm.prepare_caches()


def test_index_skips_nothing_long_enough():
    from medkor.eval.questions import Question

    short = Question("nurse", 0, "빈혈?", ("a", "b", "c", "d", "e"), "A")
    index = QuestionIndex([short], 13)
    assert index.short == [0] and len(index.sorted) == 0
    from medkor.data.leak import _hits

    hits = _hits(index, ["정상", "이것은 빈혈 이다"], ["f:1", "f:2"], 0.5)
    assert [(h.where, h.exact) for h in hits] == [("f:2", True)]
    assert np.isfinite(hits[0].overlap)


def test_replay_data_is_checked_too(tmp_path, questions):
    nurse, _ = _plant(tmp_path, questions)  # planted in data/train.jsonl, used here as the replay data
    write_jsonl(tmp_path / "stage" / "train.jsonl", [{"term": "빈혈", "definition": "헤모글로빈이 부족한 상태."}])
    dm = MedKorDataModule(data_dir=str(tmp_path / "stage"), tokenizer_path=TOKENIZER, format="dictionary",
                          max_length=64, eval_source=str(EVAL),
                          replay={"path": str(tmp_path / "data"), "ratio": 0.3})
    report = dm.check_leaks()
    assert report.records == 41 and [h.where.rsplit("/", 1)[1] for h in report.exact] == ["train.jsonl:8"]
    with pytest.raises(DataError, match=rf"data/train\.jsonl:8: holds KorMedMCQA nurse question #{nurse.index}"):
        dm.prepare_data()
