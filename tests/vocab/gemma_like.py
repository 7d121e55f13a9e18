"""Small Gemma-3-style tokenizers and Korean medical text made inside the tests.

They stand in for "a base tokenizer and a corpus the project has not seen": the
BPE is trained here, on text generated here, and wrapped exactly as transformers'
`GemmaTokenizer` wraps Gemma 3 (byte fallback, spaces as `▁`, no word splitting).
"""

from __future__ import annotations

import random
from pathlib import Path

from medkor.vocab.subword import write_gemma_like as write_gemma_style

NOUNS = [
    "당뇨병", "고혈압", "심근경색", "뇌졸중", "폐렴", "간경변", "신부전", "갑상선기능저하증",
    "빈혈", "위궤양", "관절염", "골다공증", "천식", "결핵", "패혈증", "저혈당",
    "인슐린", "항생제", "혈압", "혈당", "콜레스테롤", "환자", "의사", "간호사",
    "약물", "치료", "진단", "증상", "합병증", "수술", "검사", "처방",
]
PARTICLES = ["은", "는", "이", "가", "을", "를", "의", "에", "에서", "으로", "과", "와", "도", ""]
PREDICATES = [
    "발생한다", "증가한다", "감소하였다", "필요하다", "중요하다", "확인되었다",
    "관련이 있다", "흔하다", "위험하다", "조절해야 한다", "진행된다", "나타난다",
]
OPENERS = ["최근", "일반적으로", "특히", "만성", "급성", "고령", "소아", "성인"]


def korean_sentences(count: int, seed: int = 0, nouns: list[str] | None = None) -> list[str]:
    """`count` short Korean medical sentences (seeded, so tests are repeatable)."""
    rng = random.Random(seed)
    nouns = nouns or NOUNS
    out = []
    for _ in range(count):
        words = [rng.choice(OPENERS)] if rng.random() < 0.4 else []
        for _ in range(rng.randint(2, 4)):
            words.append(rng.choice(nouns) + rng.choice(PARTICLES))
        words.append(rng.choice(PREDICATES) + ".")
        out.append(" ".join(words))
    return out


def write_gemma_like(texts: list[str], out: Path, vocab_size: int = 400) -> Path:
    """Train a small BPE on `texts` and save it as a Gemma-3-style tokenizer folder."""
    return write_gemma_style(texts, out, vocab_size)
