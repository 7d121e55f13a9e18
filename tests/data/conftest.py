"""Fixtures: a small Gemma-3-style tokenizer trained here and tiny Korean JSONL corpora."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

SENTENCES = [
    "고혈압은 혈압이 정상보다 높은 상태를 말한다.",
    "당뇨병 환자는 혈당을 규칙적으로 측정해야 한다.",
    "폐렴은 세균이나 바이러스에 의해 폐에 염증이 생기는 질환이다.",
    "심근경색의 주요 증상은 가슴 통증과 호흡 곤란이다.",
    "항생제는 세균 감염을 치료하는 데 사용된다.",
    "간염 바이러스는 간세포에 염증을 일으킨다.",
    "빈혈은 적혈구나 헤모글로빈이 부족한 상태이다.",
    "천식 환자는 기관지 확장제를 사용한다.",
]


def make_tokenizer(folder: Path, extra_tokens: tuple[str, ...] = ()) -> Path:
    """Train a byte-fallback BPE with Gemma's specials and whitespace handling; save it."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(byte_fallback=True, unk_token="<unk>"))
    tok.normalizer = normalizers.Replace(" ", "▁")
    tok.pre_tokenizer = pre_tokenizers.Split(" ", "merged_with_previous")
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "<start_of_turn>", "<end_of_turn>"]
    bytes_ = [f"<0x{i:02X}>" for i in range(256)]
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=specials + bytes_, show_progress=False)
    tok.train_from_iterator([s.replace(" ", "▁") for s in SENTENCES] * 4, trainer)
    if extra_tokens:
        tok.add_tokens(list(extra_tokens))
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>"
    )
    fast.save_pretrained(folder)
    return folder


def write_jsonl(path: Path, records: list, raw: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        for record in records:
            handle.write((record if raw else json.dumps(record, ensure_ascii=False)) + "\n")
    return path


def korean_docs(count: int, start: int = 0) -> list[dict]:
    return [
        {"text": " ".join(SENTENCES[(i + j) % len(SENTENCES)] for j in range(1 + i % 5)) + f" 증례 {i}."}
        for i in range(start, start + count)
    ]


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory) -> Path:
    return make_tokenizer(tmp_path_factory.mktemp("tokenizer"))


@pytest.fixture(scope="session")
def other_tokenizer_dir(tmp_path_factory) -> Path:
    return make_tokenizer(tmp_path_factory.mktemp("tokenizer2"), extra_tokens=("고혈압", "당뇨병"))


@pytest.fixture
def data_dir(tmp_path) -> Path:
    folder = tmp_path / "data"
    write_jsonl(folder / "train.jsonl", korean_docs(60))
    write_jsonl(folder / "validation.jsonl", korean_docs(10, start=1000))
    return folder


def segments_of(cache_folder: Path) -> list[Path]:
    """The row segment files of a published cache, in row order (from its manifest)."""
    manifest = json.loads((Path(cache_folder) / "manifest.json").read_text(encoding="utf-8"))
    return [Path(cache_folder).parent / ".segments" / f"{key}.arrow" for key, *_ in manifest["segments"]]
