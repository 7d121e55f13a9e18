"""The bundled stage samples: original, disjoint from the evaluation sample, packed >= 95 % full."""

from __future__ import annotations

from pathlib import Path

import pytest

from medkor.data import MedKorDataModule
from medkor.data.formats import FormatSpec
from medkor.data.leak import LeakCheck, QuestionIndex, scan
from medkor.eval.questions import load_questions

DEMO = Path(__file__).resolve().parents[2] / "medkor/assets/demo"


@pytest.mark.parametrize("split", ["test", "fewshot"])
def test_exam_and_dictionary_samples_share_no_question_with_the_evaluation(split):
    index = QuestionIndex(LeakCheck(str(DEMO / "kormedmcqa"), split=split).questions(), 13)
    for folder, spec in (("exam", FormatSpec(format="mcq")), ("dictionary", FormatSpec(format="dictionary"))):
        report = scan(sorted((DEMO / folder).glob("*.jsonl")), spec, index, 0.5)
        assert report.records > 0 and report.hits == [], report.lines()


def test_exam_sample_is_in_the_evaluation_schema():
    questions = load_questions(DEMO / "exam" / "train.jsonl")
    assert sum(map(len, questions.values())) == 243 and set(questions) == {"doctor", "nurse", "pharm", "dentist"}
    assert all(q.cot for qs in questions.values() for q in qs)


@pytest.mark.parametrize("folder, fmt, max_length", [("dictionary", "dictionary", 256), ("exam", "mcq", 1024),
                                                     ("data", "text", 256)])
def test_bundled_training_samples_pack_at_least_95_percent_full(tmp_path, folder, fmt, max_length):
    dm = MedKorDataModule(data_dir=str(DEMO / folder), tokenizer_path=str(DEMO / "tokenizer-extended"), format=fmt,
                          loss_on="completion", max_length=max_length, cache_dir=str(tmp_path))
    train = dm.prepare_caches()[0]
    assert train.split == "train" and train.fill_rate >= 0.95
