"""Compose Korean medical paragraphs from the fact tables.

Each document is a list of sentences picked and ordered with a seeded ``random.Random``;
several framings (textbook, case vignette, patient leaflet, Q&A, exam explanation,
comparison, drug-disease link) give variety in structure and wording.
"""

from __future__ import annotations

import random
import re

MIN_CHARS, MAX_CHARS = 150, 600
MIN_SENTS, MAX_SENTS = 3, 8

# ---------------------------------------------------------------- Korean helpers
_DIGIT_FINAL = {"0": 1, "1": 2, "2": 0, "3": 1, "4": 0, "5": 0, "6": 1, "7": 2, "8": 2, "9": 0}
_LATIN_FINAL = {"l": 2, "m": 1, "n": 1, "r": 2, "g": 1}


def _final(word: str) -> int:
    """0 = no final consonant, 1 = final consonant, 2 = final ㄹ."""
    w = re.sub(r"\([^)]*\)\s*$", "", word).rstrip()
    ch = w[-1]
    if "가" <= ch <= "힣":
        jong = (ord(ch) - 0xAC00) % 28
        return 0 if jong == 0 else (2 if jong == 8 else 1)
    if ch.isdigit():
        return _DIGIT_FINAL[ch]
    return _LATIN_FINAL.get(ch.lower(), 0)


def josa(word: str, pair: str) -> str:
    """Attach a particle such as ``이/가``, ``을/를``, ``은/는``, ``과/와``, ``으로/로``."""
    with_final, without = pair.split("/")
    f = _final(word)
    if pair == "으로/로":
        return word + ("으로" if f == 1 else "로")
    return word + (with_final if f else without)


_SLOT = re.compile(r"\{(\w+)(?::([^}]+))?\}")


def fill(template: str, **values: str) -> str:
    """``{X}`` inserts a value, ``{X:이/가}`` inserts it followed by the right particle."""
    def sub(m: re.Match) -> str:
        value = values[m.group(1)]
        return josa(value, m.group(2)) if m.group(2) else value
    return _SLOT.sub(sub, template)


def polite(sentence: str) -> str:
    """Turn a plain-style (-다.) sentence into the formal polite style (-ㅂ니다/습니다)."""
    if not sentence.endswith("다.") or sentence.endswith(("니다.", "시다.")):
        return sentence
    sentence = sentence.replace("도록 교육한다.", "도록 한다.")
    stem = sentence[:-2]
    if stem.endswith("는"):
        return stem[:-1] + "습니다."
    last = stem[-1]
    if not ("가" <= last <= "힣"):
        return sentence
    jong = (ord(last) - 0xAC00) % 28
    if jong == 0:
        return stem[:-1] + chr(ord(last) + 17) + "니다."
    if jong == 4:  # -ㄴ다 (한다, 된다, 보인다 ...)
        return stem[:-1] + chr(ord(last) - 4 + 17) + "니다."
    return stem + "습니다."


def pick(rng: random.Random, items: list[str], lo: int = 2, hi: int = 4) -> list[str]:
    """A random subset (order kept) of ``items``."""
    k = min(len(items), rng.randint(lo, hi))
    idx = sorted(rng.sample(range(len(items)), k))
    return [items[i] for i in idx]


def listing(items: list[str], deung: bool = True) -> str:
    text = ", ".join(items)
    return text + (" 등" if deung and len(items) > 1 else "")


# ---------------------------------------------------------------- sentence templates
T_SX = ["주요 증상으로는 {D:이/가} 있다.", "환자는 흔히 {D:을/를} 호소한다.",
        "대표적인 증상으로 {D:이/가} 있다.", "{D}의 증상이 나타날 수 있다.",
        "임상적으로 {D:이/가} 관찰된다.", "초기에는 증상이 뚜렷하지 않을 수 있으나 진행하면 {D:이/가} 나타난다."]
T_CA = ["원인 및 위험요인으로는 {D:이/가} 알려져 있다.", "{D:이/가} 발병 위험을 높인다.",
        "발병에는 {D:이/가} 관여한다.", "{N}의 위험요인으로 {D:을/를} 들 수 있다."]
T_DX = ["진단을 위해 {D:을/를} 시행한다.", "진단에는 {D:이/가} 활용된다.",
        "{D}의 결과를 종합하여 진단한다.", "{N:이/가} 의심되면 {D}의 검사를 시행한다.",
        "정확한 진단과 경과 관찰을 위해 {D:이/가} 필요하다."]
T_TX = ["치료로는 {D:이/가} 있다.", "치료는 {D:을/를} 중심으로 이루어진다.",
        "환자의 상태에 따라 {D:을/를} 선택하여 치료한다.", "{N}의 치료에는 {D:이/가} 이용된다."]
T_CX = ["적절히 관리하지 않으면 {D}의 합병증이 생길 수 있다.", "주요 합병증으로는 {D:이/가} 있다.",
        "{D}의 합병증을 예방하기 위해 꾸준한 관리가 필요하다.",
        "합병증으로 {D:이/가} 발생할 수 있으므로 정기적인 추적 관찰이 중요하다."]


def _fix_deung(s: str) -> str:
    # "대표적인 증상은 X 등이 있다" reads oddly without 등; patch the one awkward template
    return s.replace("대표적인 증상은 ", "대표적인 증상으로 ")


def s_list(rng: random.Random, templates: list[str], name: str, items: list[str], lo=2, hi=4) -> str:
    chosen = pick(rng, items, lo, hi)
    s = fill(rng.choice(templates), N=name, D=listing(chosen), L=listing(chosen, False))
    return _fix_deung(s)


def disease_parts(rng: random.Random, e: dict) -> dict[str, str]:
    n = e["n"]
    return {
        "sx": s_list(rng, T_SX, n, e["sx"]),
        "ca": s_list(rng, T_CA, n, e["ca"]),
        "dx": s_list(rng, T_DX, n, e["dx"]),
        "tx": s_list(rng, T_TX, n, e["tx"], 1, 4),
        "cx": s_list(rng, T_CX, n, e["cx"]),
    }


def assemble(rng: random.Random, required: list[str], optional: list[str], polite_style=False) -> str | None:
    """Join required sentences plus optional ones up to a random length target."""
    target = rng.randint(230, 540)
    sents = list(required)
    pool = list(optional)
    rng.shuffle(pool)
    for s in pool:
        if len(sents) >= MAX_SENTS or len(" ".join(sents)) >= target:
            break
        if len(" ".join(sents + [s])) <= MAX_CHARS:
            sents.append(s)
    if polite_style:
        sents = [polite(s) for s in sents]
    text = " ".join(sents)
    if not (MIN_SENTS <= len(sents) <= MAX_SENTS and MIN_CHARS <= len(text) <= MAX_CHARS):
        return None
    return text


# ---------------------------------------------------------------- disease / dental documents
def _patient(rng: random.Random, e: dict) -> str:
    lo, hi, sex = e.get("pt", (30, 70, None))
    if lo == 0:
        return f"생후 {rng.randint(2, 6)}일 된 {rng.choice(['남아', '여아'])}"
    age = rng.randint(lo, hi)
    if hi <= 15:
        return f"{age}세 {sex or rng.choice(['남아', '여아'])}"
    return f"{age}세 {sex or rng.choice(['남성', '여성'])}"


def _pair(items: list[str]) -> str:
    return josa(items[0], "과/와") + " " + items[1] if len(items) == 2 else items[0]


CLOSE_LEAFLET = ["궁금한 점은 담당 의사나 간호사에게 문의하세요.", "증상이 심해지면 미루지 말고 진료를 받으세요.",
                 "처방받은 약은 의사와 상의 없이 중단하지 마세요.", "정기적인 검진으로 건강을 지키세요."]
CLOSE_DENTAL = ["6개월마다 치과 정기 검진을 받으세요.", "불편한 증상이 있으면 참지 말고 치과를 방문하세요.",
                "하루 세 번, 식후 3분 이내에 3분 이상 칫솔질하는 습관을 들이세요."]


def dis_textbook(rng, e):
    p = disease_parts(rng, e)
    order = rng.choice([["sx", "ca", "dx", "tx"], ["ca", "sx", "dx", "tx", "cx"], ["sx", "dx", "tx", "cx"],
                        ["dx", "tx", "cx"], ["ca", "sx", "tx"]])
    intro = [e["d"]]
    if rng.random() < 0.3:
        intro = [fill("{C} 가운데 임상에서 흔히 접하는 것이 {N}이다.", C=e["c"], N=e["n"]), e["d"]]
    rest = [p[k] for k in p if k not in order] + pick(rng, e["nt"], 1, 2) + pick(rng, e["wn"], 1, 1)
    return assemble(rng, intro + [p[k] for k in order], rest)


def dis_case(rng, e):
    n = e["n"]
    s = [fill(rng.choice(["{P:이/가} {S:을/를} 주소로 내원하였다.", "{S:을/를} 호소하는 {P} 환자가 외래를 방문하였다.",
                          "{P:이/가} 최근 {S:이/가} 심해져 병원을 찾았다."]), P=_patient(rng, e), S=_pair(pick(rng, e["sx"], 2, 2)))]
    if rng.random() < 0.6:
        s.append(fill("문진에서 위험요인으로 {L:이/가} 확인되었다.", L=listing(pick(rng, e["ca"], 1, 2), False)))
    s.append(fill(rng.choice(["{D:을/를} 시행한 결과 {N:으로/로} 진단되었다.", "{D} 결과를 토대로 {N:으로/로} 진단하였다."]),
                  D=listing(e["dx"][:1] + pick(rng, e["dx"][1:], 0, 1), False), N=n))
    s.append(fill(rng.choice(["치료로 {T:을/를} 시작하였다.", "담당 의사는 {T:을/를} 처방하였다.", "{T:을/를} 포함한 치료 계획을 세웠다."]),
                  T=listing(e["tx"][:1] + pick(rng, e["tx"][1:], 0, 1), False)))
    opt = pick(rng, e["nt"], 1, 2) + pick(rng, e["wn"], 1, 1)
    opt.append(fill("향후 {D}의 합병증 발생 여부를 추적 관찰해야 한다.", D=listing(pick(rng, e["cx"], 1, 3))))
    return assemble(rng, s, opt)


def dis_leaflet(rng, e):
    n = e["n"]
    dental = e["k"] == "dent"
    open_ = fill(rng.choice(["{N:은/는} 어떤 병인가요?", "{N}에 대해 알아봅시다.",
                             "이 자료는 {N} 환자와 가족을 위한 안내문입니다."]), N=n)
    p = disease_parts(rng, e)
    req = [open_, e["d"], p["sx"]]
    opt = [p["tx"], p["ca"]] + pick(rng, e["nt"], 1, 3) + pick(rng, e["wn"], 1, 1)
    text = assemble(rng, req, opt, polite_style=True)
    if text is None:
        return None
    close = rng.choice(CLOSE_DENTAL if dental else CLOSE_LEAFLET)
    out = text + " " + close
    return out if len(out) <= MAX_CHARS and out.count(". ") + out.count("? ") < MAX_SENTS else text


def dis_qa(rng, e):
    n = e["n"]
    p = disease_parts(rng, e)
    pairs = [("어떤 증상이 나타나나요?", p["sx"]), ("왜 생기나요?", p["ca"]), ("어떻게 진단하나요?", p["dx"]),
             ("어떻게 치료하나요?", p["tx"]), ("생활에서 주의할 점은 무엇인가요?", rng.choice(e["nt"])),
             ("합병증도 생길 수 있나요?", p["cx"])]
    chosen = pick(rng, pairs, 3, 3)
    sents = []
    for q, a in chosen:
        sents += [fill("Q. {N:은/는} ", N=n) + q if not sents else "Q. " + q, "A. " + polite(a)]
    text = " ".join(sents)
    return text if MIN_CHARS <= len(text) <= MAX_CHARS else None


def dis_exam(rng, e):
    n = e["n"]
    p = disease_parts(rng, e)
    open_ = fill(rng.choice(["이 문항은 {N}에 관한 기본 지식을 묻는다.", "[해설] {N:은/는} {C} 영역에서 자주 출제되는 주제이다.",
                             "해설: 이 문항에서 다루는 질환은 {N}이다."]), N=n, C=e["c"])
    req = [open_, e["d"], rng.choice([p["sx"], p["dx"]]), "시험에서는 다음 내용이 자주 출제된다.", rng.choice(e["wn"])]
    opt = [p["tx"], p["cx"], rng.choice(["따라서 증상, 검사, 치료를 연결하여 이해해 두어야 한다.",
                                         "오답 선택지는 다른 질환의 특징을 섞어 놓은 경우가 많으므로 주의한다."])]
    return assemble(rng, req, opt)


def dis_nursing(rng, e):
    n = e["n"]
    head = fill(rng.choice(["{N} 환자를 간호할 때는 다음 사항에 유의한다.", "{N} 환자의 간호 중재는 다음과 같다.",
                            "{N} 환자 간호의 핵심은 증상 관리와 자가 관리 교육이다."]), N=n)
    req = [head] + pick(rng, e["nt"], 2, 3)
    opt = [fill("간호사는 {D}의 징후를 조기에 발견하기 위해 환자를 주의 깊게 관찰한다.", D=listing(pick(rng, e["cx"], 1, 3))),
           fill("{T:을/를} 포함한 치료 계획이 잘 지켜지는지 확인하는 것도 간호사의 역할이다.", T=rng.choice(e["tx"]))] + e["wn"]
    return assemble(rng, req, opt)


def comparison(rng, a, b):
    shared = [s for s in a["sx"] if s in b["sx"]]
    s = [fill("{A:과/와} {B}의 특징을 비교하면 다음과 같다.", A=a["n"], B=b["n"])]
    if shared:
        s.append(fill("두 질환은 모두 {S:을/를} 일으킬 수 있어 감별이 필요하다.", S=shared[0]))
    xa = [x for x in a["sx"] if x not in shared] or a["sx"]
    xb = [x for x in b["sx"] if x not in shared] or b["sx"]
    s.append(fill("{A}에서는 {SA:이/가} 흔한 반면, {B}에서는 {SB:이/가} 두드러진다.",
                  A=a["n"], B=b["n"], SA=_pair(pick(rng, xa, 1, 2)), SB=_pair(pick(rng, xb, 1, 2))))
    s.append(fill("진단에는 {A}의 경우 {DA:이/가}, {B}의 경우 {DB:이/가} 주로 활용된다.",
                  A=a["n"], B=b["n"], DA=a["dx"][0], DB=b["dx"][0]))
    opt = [fill("치료 면에서 {A:은/는} {TA}, {B:은/는} {TB:이/가} 중심이 된다.", A=a["n"], B=b["n"],
                TA=josa(a["tx"][0], "과/와") + " " + a["tx"][1] if len(a["tx"]) > 1 else a["tx"][0],
                TB=b["tx"][0]), rng.choice(a["wn"]), rng.choice(b["wn"])]
    return assemble(rng, s, opt)


# ---------------------------------------------------------------- drug documents
T_IND = ["주로 {D}에 사용된다.", "적응증으로는 {D:이/가} 있다.", "{N:은/는} {D}의 치료에 처방된다."]
T_SE = ["흔한 부작용으로는 {D:이/가} 있다.", "복용 중 {D}의 부작용이 나타날 수 있다.",
        "{D:이/가} 부작용으로 보고되어 있다."]
T_MON = ["투여 중에는 {D:을/를} 정기적으로 확인한다.", "약물 모니터링 항목으로 {D:이/가} 있다.",
         "치료 효과와 안전성을 평가하기 위해 {D:을/를} 점검한다."]


def drug_parts(rng, e):
    n = e["n"]
    return {"ind": s_list(rng, T_IND, n, e["ind"], 1, 3), "se": s_list(rng, T_SE, n, e["se"]),
            "mon": s_list(rng, T_MON, n, e["mon"], 1, 3)}


def drug_textbook(rng, e):
    p = drug_parts(rng, e)
    req = [e["d"], e["mech"], p["ind"], p["se"]]
    if rng.random() < 0.5:
        req = [e["d"], p["ind"], e["mech"], p["se"]]
    return assemble(rng, req, [p["mon"]] + pick(rng, e["nt"], 1, 2) + pick(rng, e["wn"], 1, 2))


def drug_counsel(rng, e):
    n = e["n"]
    p = drug_parts(rng, e)
    open_ = fill(rng.choice(["약사는 {N:을/를} 처음 처방받은 환자에게 다음과 같이 복약지도를 한다.",
                             "{N} 복약 안내문이다.", "{N:을/를} 복용하는 환자가 알아 두어야 할 내용을 정리하였다."]), N=n)
    req = [open_] + pick(rng, e["nt"], 2, 3) + [p["se"]]
    text = assemble(rng, req, pick(rng, e["wn"], 1, 2), polite_style=True)
    if text and len(text) < 540 and text.count(". ") < MAX_SENTS - 1 and rng.random() < 0.6:
        text += " " + rng.choice(["다른 약을 함께 복용하고 있다면 반드시 약사에게 알려 주세요.",
                                  "이상 증상이 생기면 복용을 멈추지 말고 먼저 의사나 약사와 상의하세요."])
    return text


def drug_exam(rng, e):
    n = e["n"]
    p = drug_parts(rng, e)
    open_ = fill(rng.choice(["이 문항은 {N}의 작용 기전과 부작용을 묻는다.", "[약학 해설] {N:은/는} {C}이다.",
                             "해설: {N}에 대한 설명으로 옳은 것을 고르는 문항이다."]), N=n, C=e["c"])
    req = [open_, e["mech"], p["se"], rng.choice(e["wn"])]
    return assemble(rng, req, [p["ind"], p["mon"], "약물의 기전을 이해하면 부작용과 상호작용을 쉽게 예측할 수 있다."])


def drug_qa(rng, e):
    n = e["n"]
    p = drug_parts(rng, e)
    pairs = [("어떤 약인가요?", e["d"]), ("어떻게 작용하나요?", e["mech"]), ("어떤 부작용이 있나요?", p["se"]),
             ("복용할 때 주의할 점은 무엇인가요?", rng.choice(e["nt"])), ("어떤 검사를 받아야 하나요?", p["mon"])]
    sents = []
    for q, a in pick(rng, pairs, 3, 3):
        sents += [fill("Q. {N:은/는} ", N=n) + q if not sents else "Q. " + q, "A. " + polite(a)]
    text = " ".join(sents)
    return text if MIN_CHARS <= len(text) <= MAX_CHARS else None


def drug_link(rng, drug, dis):
    s = [fill(rng.choice(["{D} 환자에게 흔히 처방되는 약물 중 하나가 {N}이다.",
                          "{D}의 약물 치료에서 {N:은/는} 중요한 위치를 차지한다."]), D=dis["n"], N=drug["n"]),
         drug["mech"], rng.choice(drug["nt"])]
    opt = [s_list(rng, T_SE, drug["n"], drug["se"]), rng.choice(drug["wn"]), rng.choice(dis["nt"])]
    return assemble(rng, s, opt)


# ---------------------------------------------------------------- nursing procedures
ORDINALS = ["먼저", "이어서", "그다음", "다음으로", "마지막으로"]


def _steps(rng, e, k_lo=3, k_hi=4):
    steps = pick(rng, e["steps"], k_lo, k_hi)
    out = []
    for i, st in enumerate(steps):
        word = "먼저" if i == 0 else ("마지막으로" if i == len(steps) - 1 else rng.choice(ORDINALS[1:4]))
        out.append(f"{word} {st}")
    return out


def nurse_procedure(rng, e):
    obs = fill(rng.choice(["시행 후에는 {D:을/를} 관찰하고 기록한다.", "간호사는 {D:을/를} 주기적으로 사정한다."]),
               D=listing(pick(rng, e["obs"], 2, 3)))
    req = [e["d"], "수행 절차는 다음과 같다."] + _steps(rng, e)
    return assemble(rng, req, [obs] + pick(rng, e["wn"], 1, 2))


def nurse_exam(rng, e):
    open_ = fill(rng.choice(["이 문항은 {N}의 올바른 수행 방법을 묻는다.", "[간호 해설] {N:은/는} 실기 시험과 국가시험에 모두 자주 나온다."]), N=e["n"])
    req = [open_] + pick(rng, e["wn"], 1, 2) + pick(rng, e["nt"], 1, 2)
    return assemble(rng, req, [e["d"]] + pick(rng, e["steps"], 1, 2))


def nurse_points(rng, e):
    head = fill(rng.choice(["{N}의 핵심 간호 포인트를 정리하면 다음과 같다.", "{N:을/를} 시행할 때 간호사가 기억해야 할 점이 있다."]), N=e["n"])
    obs = fill("또한 {D:을/를} 확인하여 기록한다.", D=listing(pick(rng, e["obs"], 2, 3)))
    return assemble(rng, [head] + pick(rng, e["nt"], 2, 3), [obs] + e["wn"])


def nurse_guide(rng, e):
    req = [fill("다음은 {N}에 대한 간호 실습 안내이다.", N=e["n"]), e["d"]] + _steps(rng, e, 2, 3)
    return assemble(rng, req, pick(rng, e["nt"], 1, 2), polite_style=True)


# ---------------------------------------------------------------- public health
def pub_textbook(rng, e):
    tg = fill(rng.choice(["특히 {D:은/는} 우선 관리 대상이다.", "{D:을/를} 대상으로 한 관리가 중요하다."]),
              D=listing(pick(rng, e["tg"], 2, 3)))
    return assemble(rng, [e["d"]] + pick(rng, e["pts"], 2, 3), [tg] + pick(rng, e["nt"], 1, 2) + e["wn"])


def pub_leaflet(rng, e):
    open_ = fill(rng.choice(["{N}에 관한 보건소 안내문이다.", "건강한 생활을 위해 {N}에 대해 알아봅시다."]), N=e["n"])
    req = [open_, e["d"]] + pick(rng, e["pts"], 1, 2)
    text = assemble(rng, req, pick(rng, e["nt"], 1, 2) + pick(rng, e["wn"], 1, 1), polite_style=True)
    return text


def pub_exam(rng, e):
    open_ = fill(rng.choice(["이 문항은 {C} 분야의 {N}에 관한 내용을 묻는다.", "[보건 해설] {N:은/는} 지역사회 간호와 보건의약관계법규에서 자주 다루어진다."]),
                 N=e["n"], C=e["c"])
    return assemble(rng, [open_] + pick(rng, e["pts"], 2, 2) + [rng.choice(e["wn"])], pick(rng, e["nt"], 1, 2))


# ---------------------------------------------------------------- driver
SHAPES = {
    "dis": [dis_textbook, dis_case, dis_leaflet, dis_qa, dis_exam, dis_nursing],
    "dent": [dis_textbook, dis_case, dis_leaflet, dis_qa, dis_exam],
    "drug": [drug_textbook, drug_counsel, drug_exam, drug_qa],
    "nurse": [nurse_procedure, nurse_exam, nurse_points, nurse_guide],
    "pub": [pub_textbook, pub_leaflet, pub_exam],
}


def _composites(entries: list[dict]) -> list[tuple]:
    by_name = {e["n"]: e for e in entries}
    dis = [e for e in entries if e["k"] in ("dis", "dent")]
    pairs = []
    for i, a in enumerate(dis):
        for b in dis[i + 1:]:
            if a["c"] == b["c"] or set(a["sx"]) & set(b["sx"]):
                pairs.append(("cmp", a, b))
    links = [("link", d, by_name[r]) for d in entries if d["k"] == "drug" for r in d.get("rel", []) if r in by_name]
    return pairs + links


def generate(entries: list[dict], n_docs: int, seed: int) -> list[str]:
    """``n_docs`` distinct documents, deterministic for a given ``seed``."""
    rng = random.Random(seed)
    comps = _composites(entries)
    rng.shuffle(comps)
    cycles = {e["n"]: rng.sample(SHAPES[e["k"]], len(SHAPES[e["k"]])) for e in entries}
    docs: list[str] = []
    seen: set[str] = set()
    rounds = 0
    while len(docs) < n_docs:
        rounds += 1
        if rounds > 200:
            raise RuntimeError(f"could only make {len(docs)} distinct documents")
        batch = []
        for e in entries:
            shapes = cycles[e["n"]]
            batch.append(lambda e=e, f=shapes[rounds % len(shapes)]: f(rng, e))
        for _ in range(max(4, len(entries) // 6)):
            if comps:
                kind, a, b = comps[rng.randrange(len(comps))]
                batch.append((lambda a=a, b=b: comparison(rng, a, b)) if kind == "cmp" else (lambda a=a, b=b: drug_link(rng, a, b)))
        rng.shuffle(batch)
        for make in batch:
            text = make()
            if text and text not in seen:
                seen.add(text)
                docs.append(text)
                if len(docs) >= n_docs:
                    break
    return docs
