"""Stage 01 and 02 demo samples from the fact tables: a dictionary and exam-style training questions.

Original text written for medkor from ``facts_*``; the questions are built from
templates over the tables, so none is a question of the bundled evaluation sample
(``mcqa.py``), which `make_stage_data.py` checks with medkor's own leak check.
"""

from __future__ import annotations

import random

SUBJECT = {"dis": "doctor", "dent": "dentist", "drug": "pharm", "nurse": "nurse", "pub": "nurse"}

# (fact field, question template, what the explanation says)
DISEASE_ITEMS = (
    ("sx", "다음 중 {n}에서 흔히 나타나는 증상은?", "{n}의 흔한 증상에는 {all}이(가) 있다."),
    ("dx", "{n}이(가) 의심될 때 진단에 도움이 되는 검사로 가장 적절한 것은?", "{n}의 진단에는 {all}을(를) 시행한다."),
    ("tx", "{n}의 치료 또는 관리로 가장 적절한 것은?", "{n}의 치료와 관리에는 {all}이(가) 쓰인다."),
    ("cx", "{n}을(를) 제대로 관리하지 않았을 때 생길 수 있는 합병증은?", "{n}의 합병증으로 {all}이(가) 있다."),
    ("ca", "다음 중 {n}의 원인 또는 위험 요인에 해당하는 것은?", "{n}의 원인과 위험 요인에는 {all}이(가) 있다."),
)
DRUG_ITEMS = (
    ("ind", "{n}의 주된 적응증으로 가장 적절한 것은?", "{n}은(는) {all}에 사용한다."),
    ("se", "{n} 복용 환자에게서 나타날 수 있는 부작용은?", "{n}의 부작용으로 {all}이(가) 알려져 있다."),
    ("mon", "{n} 투여 중 정기적으로 확인해야 하는 항목은?", "{n} 투여 중에는 {all}을(를) 확인한다."),
)
NURSE_ITEMS = (
    ("obs", "{n} 후 간호사가 관찰해야 할 항목으로 가장 적절한 것은?", "{n} 후에는 {all}을(를) 관찰한다."),
    ("tg", "{n}의 주요 대상으로 가장 적절한 것은?", "{n}의 주요 대상은 {all}이다."),
)


# short entries for the tests, treatments and complications the tables name: (field, category, sentence)
SHORT_ENTRIES = (
    ("dx", "검사", "{v}{topic} {names}의 진단에 쓰이는 검사이다."),
    ("tx", "치료", "{v}{topic} {names}의 치료나 관리에 쓰인다."),
    ("cx", "합병증", "{v}{topic} {names}에서 생길 수 있는 합병증이다."),
)


def topic(word: str) -> str:
    """The topic particle after `word`: 은 after a final consonant, 는 after a vowel."""
    last = word.rstrip()[-1]
    if "가" <= last <= "힣":
        return "은" if (ord(last) - 0xAC00) % 28 else "는"
    return "은(는)"


def dictionary(facts: list[dict]) -> list[dict]:
    """One entry per fact (its definition and one more fact about it), then one short entry per
    test, treatment and complication the tables name (which facts it belongs to)."""
    out = []
    for fact in facts:
        extra = (fact.get("mech") or (fact.get("wn") or fact.get("pts") or fact.get("nt") or [""])[0]).strip()
        definition = fact["d"] + (" " + extra if extra else "")
        out.append({"term": fact["n"], "category": fact["c"], "definition": definition})
    known = {entry["term"] for entry in out}
    for key, category, sentence in SHORT_ENTRIES:
        owners: dict[str, list[str]] = {}
        for fact in facts:
            for value in fact.get(key, []):
                owners.setdefault(value, []).append(fact["n"])
        for value, names in owners.items():
            if value in known:
                continue
            known.add(value)
            text = sentence.format(v=value, topic=topic(value), names=", ".join(names[:3]))
            out.append({"term": value, "category": category, "definition": text})
    return out


def _pool(facts: list[dict], key: str) -> list[tuple[str, str]]:
    return [(fact["n"], value) for fact in facts for value in fact.get(key, [])]


def exam_questions(facts: list[dict], seed: int) -> list[dict]:
    """KorMedMCQA-schema records: one question per (fact, field), correct option from the fact,
    four distractors from other facts' same field, a worked explanation in `cot`."""
    rng = random.Random(seed)
    records = []
    for fact in facts:
        items = {"dis": DISEASE_ITEMS, "dent": DISEASE_ITEMS, "drug": DRUG_ITEMS}.get(fact["k"], NURSE_ITEMS)
        for key, template, explain in items:
            values = fact.get(key) or []
            others = sorted({v for n, v in _pool(facts, key) if n != fact["n"] and v not in values})
            if not values or len(others) < 4:
                continue
            correct = rng.choice(values)
            options = rng.sample(others, 4)
            answer = rng.randrange(5)
            options.insert(answer, correct)
            question = template.format(n=fact["n"])
            cot = fact["d"] + " " + explain.format(n=fact["n"], all=", ".join(values)) + f" 따라서 정답은 {correct}이다."
            records.append({"subject": SUBJECT[fact["k"]], "year": 2020, "period": 1, "q_number": 0,
                            "question": question, **dict(zip("ABCDE", options)), "answer": answer + 1, "cot": cot})
    rng.shuffle(records)
    for number, record in enumerate(records, start=1):
        record["q_number"] = number
    return records
