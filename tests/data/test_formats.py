"""Formats: every position of every packed row checked against an independent rendering.

Built through the real cache (read, check, tokenize, pack, Arrow, collate) with the
demo's Gemma-style tokenizer and its chat template. The expected text of the
learned and the ignored positions comes from the records and the tokenizer's own
calls, never from medkor's renderer.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from transformers import AutoTokenizer

from medkor.data.cache import CacheRequest, ensure_cache, open_cache
from medkor.data.collate import IGNORE_INDEX, Collator
from medkor.data.formats import FormatSpec
from medkor.data.sources import DataError, Selection
from medkor.eval.prompts import harness_prompt
from medkor.eval.questions import Question
from tests.data.conftest import write_jsonl

TOKENIZER = str(Path(__file__).resolve().parents[2] / "medkor/assets/demo/tokenizer-extended")
TERMS = [
    ("고혈압", "수축기 혈압이 140 mmHg 이상이거나 이완기 혈압이 90 mmHg 이상인 상태."),
    ("빈혈", "혈액의 헤모글로빈 농도가 정상보다 낮은 상태."),
    ("폐렴", "세균, 바이러스 또는 곰팡이에 의해 폐포에 염증이 생기는 질환으로 발열과 기침이 흔하다."),
    ("천식", "기도의 만성 염증으로 기관지가 좁아져 쌕쌕거림과 호흡곤란이 반복되는 질환."),
    ("당뇨병", "인슐린 분비나 작용의 이상으로 혈당이 높게 유지되는 대사 질환."),
    ("간경변", "만성 간 손상으로 간 조직이 섬유화되어 딱딱해지는 상태."),
] * 4
EXAM = {
    "subject": "nurse", "year": 2019, "period": 1, "q_number": 3,
    "question": "수술 후 첫날 환자에게 심호흡과 기침을 격려하는 주된 목적은?",
    "A": "통증 감소", "B": "무기폐 예방", "C": "식욕 증진", "D": "수면 유도", "E": "배뇨 촉진",
    "answer": 2, "cot": "수술 후 얕은 호흡은 폐포 허탈을 일으킨다. 심호흡과 기침은 이를 막는다.",
}


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(TOKENIZER)


def _rows(tmp_path, records, spec, max_length=96, packing=True, **request):
    path = write_jsonl(tmp_path / "train.jsonl", records)
    req = CacheRequest("train", Selection(files=[path], spec=spec), tmp_path, tmp_path / ".cache", TOKENIZER,
                       max_length=max_length, packing=packing, **request)
    result = ensure_cache(req)
    rows, manifest = open_cache(req)
    return [rows[i] for i in range(len(rows))], manifest, result


def _examples(rows, pad=0):
    """(ids, labels) of every example of every row, cut at the row's document starts, after collate."""
    batch = Collator(pad)(rows)
    out = []
    for i, (ids, starts, _) in enumerate(rows):
        bounds = list(starts) + [len(ids)]
        assert bounds[0] == 0  # every row starts with a whole example
        labels = batch["labels"][i].numpy()
        assert (labels[len(ids):] == IGNORE_INDEX).all()  # padding is never learned
        positions = batch["position_ids"][i].numpy()
        for a, b in zip(bounds[:-1], bounds[1:]):
            assert list(positions[a:b]) == list(range(b - a))  # positions restart at every example
            out.append((np.asarray(ids[a:b]), labels[a:b]))
    return out


@pytest.mark.parametrize("loss_on", ["all", "completion"])
def test_dictionary_labels_and_whole_examples(tmp_path, tokenizer, loss_on):
    records = [{"word": t, "meaning": d} for t, d in TERMS]
    spec = FormatSpec(format="dictionary", term_field="word", definition_field="meaning", loss_on=loss_on)
    rows, manifest, _ = _rows(tmp_path, records, spec)
    examples = _examples(rows)
    assert len(examples) == len(records) and manifest["documents"] == len(records)
    rendered = sorted(f"용어: {t}\n설명: {d}" for t, d in TERMS)
    got = []
    for ids, labels in examples:
        assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id
        body = tokenizer.decode(ids[1:-1])
        got.append(body)
        learned = labels != IGNORE_INDEX
        assert not learned[0] and learned[-1]  # BOS never, EOS always a target
        assert (labels[learned] == ids[learned]).all()
        if loss_on == "all":
            assert learned[1:].all()
        else:
            term = body.split("\n")[0].removeprefix("용어: ")
            definition = dict(TERMS)[term]
            assert tokenizer.decode(ids[~learned]) == f"<bos>용어: {term}\n설명:"
            assert tokenizer.decode(ids[learned]) == f" {definition}<eos>"
    assert sorted(got) == rendered  # whole examples, each exactly once
    assert manifest["fill_rate"] == pytest.approx(manifest["tokens"] / (manifest["rows"] * 96), abs=1e-6)
    assert manifest["learned_tokens"] == sum(int((lab != IGNORE_INDEX).sum()) for _, lab in examples)


def test_chat_learns_assistant_turns_only(tmp_path, tokenizer):
    records = [
        {"prompt": "고혈압의 기준은?", "completion": "140/90 mmHg 이상입니다."},
        {"messages": [
            {"role": "system", "content": "당신은 의료 상담가입니다."},
            {"role": "user", "content": "빈혈의 흔한 원인은?"},
            {"role": "assistant", "content": "철 결핍이 가장 흔합니다."},
            {"role": "user", "content": "치료는?"},
            {"role": "assistant", "content": "철분을 보충합니다."},
        ]},
    ] * 3
    rows, manifest, _ = _rows(tmp_path, records, FormatSpec(format="chat"), max_length=128)
    texts = {}
    for ids, labels in _examples(rows):
        learned = labels != IGNORE_INDEX
        full = tokenizer.decode(ids)
        runs = np.split(np.arange(len(ids)), np.flatnonzero(np.diff(learned.astype(int))) + 1)
        learned_runs = [tokenizer.decode(ids[r]) for r in runs if learned[r[0]]]
        texts.setdefault(full, learned_runs)
    first = tokenizer.apply_chat_template(
        [{"role": "user", "content": "고혈압의 기준은?"}, {"role": "assistant", "content": "140/90 mmHg 이상입니다."}],
        tokenize=False)
    second = tokenizer.apply_chat_template(records[1]["messages"], tokenize=False)
    assert texts == {
        first: ["140/90 mmHg 이상입니다.<end_of_turn>\n"],
        second: ["철 결핍이 가장 흔합니다.<end_of_turn>\n", "철분을 보충합니다.<end_of_turn>\n"],
    }


@pytest.mark.parametrize("cot", [False, True])
def test_mcq_is_the_evaluation_prompt_then_the_letter(tmp_path, tokenizer, cot):
    rows, _, _ = _rows(tmp_path, [EXAM] * 3, FormatSpec(format="mcq", cot=cot), max_length=256)
    question = Question("nurse", 0, EXAM["question"], tuple(EXAM[k] for k in "ABCDE"), "B", EXAM["cot"])
    prompt = harness_prompt(question)
    prompt_ids = tokenizer(prompt)["input_ids"]  # the evaluation tokenizes the harness prompt with special tokens
    # the evaluation's spelling: the first whose five letters are each one token after the prompt
    spelling = next(s for s in (" {}", "{}") if all(
        tokenizer(prompt + s.format(x))["input_ids"][:-1] == prompt_ids for x in "ABCDE"))
    examples = _examples(rows)
    assert len(examples) == 3
    for ids, labels in examples:
        learned = labels != IGNORE_INDEX
        assert list(ids[: len(prompt_ids)]) == prompt_ids and not learned[: len(prompt_ids)].any()
        assert learned[len(prompt_ids):].all()
        if cot:
            assert tokenizer.decode(ids[learned]) == f" {EXAM['cot']}\n정답：{spelling.format('B')}<eos>"
        else:  # the very token the evaluation scores for B, then EOS
            letter = tokenizer(prompt + spelling.format("B"))["input_ids"][-1]
            assert list(ids[learned]) == [letter, tokenizer.eos_token_id]


def test_mcq_chat_prompt_matches_the_evaluation(tmp_path, tokenizer):
    rows, _, _ = _rows(tmp_path, [EXAM], FormatSpec(format="mcq", prompt_style="chat"), max_length=256)
    question = Question("nurse", 0, EXAM["question"], tuple(EXAM[k] for k in "ABCDE"), "B")
    from medkor.eval.prompts import chat_prompt

    prompt_ids = tokenizer(chat_prompt(question, tokenizer), add_special_tokens=False)["input_ids"]
    ((ids, labels),) = _examples(rows)
    learned = labels != IGNORE_INDEX
    assert list(ids[: len(prompt_ids)]) == prompt_ids and not learned[: len(prompt_ids)].any()
    assert tokenizer.decode(ids[learned]) == "B<end_of_turn>\n"


def test_packing_fills_rows_best_fit(tmp_path, tokenizer):
    records = [{"term": t, "definition": d} for t, d in TERMS] * 5
    rows, manifest, result = _rows(tmp_path, records, FormatSpec(format="dictionary"), max_length=256)
    unpacked, one, _ = _rows(tmp_path / "one", records, FormatSpec(format="dictionary"), max_length=256, packing=False)
    assert manifest["tokens"] == one["tokens"] and len(unpacked) == len(records)
    assert all(len(r[0]) <= 256 for r in rows)
    # best-fit decreasing needs no more rows than the token count forces, plus one
    assert manifest["rows"] <= -(-manifest["tokens"] // 256) + 1
    assert manifest["fill_rate"] > 0.9 and result.fill_rate == manifest["fill_rate"]
    assert one["fill_rate"] < 0.5


def test_long_example_is_named_or_skipped_and_counted(tmp_path):
    records = [{"term": t, "definition": d} for t, d in TERMS[:3]] + [{"term": "긴 항목", "definition": "가 " * 200}]
    with pytest.raises(DataError, match=r"train\.jsonl:4: example has \d+ tokens, more than max_length 64"):
        _rows(tmp_path, records, FormatSpec(format="dictionary"), max_length=64)
    assert not any(p.is_dir() and p.name.startswith("train-") for p in (tmp_path / ".cache").iterdir())  # none published
    _, manifest, _ = _rows(tmp_path, records, FormatSpec(format="dictionary"), max_length=64, on_long_example="skip")
    assert manifest["documents"] == 3 and manifest["long_skipped"] == 1
    assert manifest["long_examples"][0].startswith(f"{tmp_path / 'train.jsonl'}:4:")


@pytest.mark.parametrize(
    "spec, record, expected",
    [
        (FormatSpec(format="dictionary"), {"term": "빈혈"}, "missing field 'definition'"),
        (FormatSpec(format="dictionary", term_field="word"), {"term": "a", "definition": "b"}, "missing field 'word'"),
        (FormatSpec(format="dictionary"), {"term": "빈혈", "definition": 3}, "field 'definition' is int"),
        (FormatSpec(format="chat"), {"prompt": "질문"}, "missing field 'completion'"),
        (FormatSpec(format="chat"), {"messages": [{"role": "user", "content": "질문"}]}, "no assistant turn"),
        (FormatSpec(format="chat"), {"messages": [{"role": "doctor", "content": "x"}]}, r"messages\[0\]\.role"),
        (FormatSpec(format="mcq"), {**EXAM, "answer": 7}, "field 'answer' is 7"),
        (FormatSpec(format="mcq"), {k: v for k, v in EXAM.items() if k != "C"}, "missing field.*C"),
    ],
)
def test_bad_records_are_named_by_line_and_field(tmp_path, spec, record, expected):
    good = {"text": "x", "term": "고혈압", "word": "고혈압", "definition": "높은 혈압.", "prompt": "질문", "completion": "답"}
    good = EXAM if spec.format == "mcq" else good
    with pytest.raises(DataError, match=rf"train\.jsonl:2: .*{expected}"):
        _rows(tmp_path, [good, record], spec, max_length=256)


def test_format_options_are_in_the_cache_key(tmp_path):
    records = [{"term": t, "definition": d, "word": t} for t, d in TERMS]
    base = FormatSpec(format="dictionary")
    _, _, first = _rows(tmp_path, records, base)
    assert _rows(tmp_path, records, base)[2].status == "hit"
    for changed in (FormatSpec(format="dictionary", template="{term} = {definition}"),
                    FormatSpec(format="dictionary", loss_on="completion"),
                    FormatSpec(format="dictionary", term_field="word")):
        assert _rows(tmp_path, records, changed)[2].status == "built"
    # an option the format does not read changes nothing
    assert _rows(tmp_path, records, FormatSpec(format="dictionary", prompt_field="q"))[2].status == "hit"
    with pytest.raises(ValueError, match="exactly the fields"):
        FormatSpec(format="dictionary", template="{term}: {meaning}")


def test_mcq_key_follows_the_evaluation_prompt(monkeypatch):
    import medkor.eval.prompts as prompts

    before = FormatSpec(format="mcq").key()
    assert FormatSpec(format="mcq").key() == before
    monkeypatch.setattr(prompts, "ANSWER_CUE", "답:")  # the evaluation's prompt text changes: the rows must too
    assert FormatSpec(format="mcq").key() != before
