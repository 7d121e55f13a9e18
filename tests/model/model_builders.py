"""Tiny Gemma 3 checkpoints and Gemma-style tokenizers for the model tests.

Everything is built from scratch in a temporary folder: a byte-fallback BPE with the
`▁` metaspace convention, an extension of it with new `▁`-prefixed Korean words
(vocabulary entries plus merges, the way a real extension keeps word boundaries)
and one added token, and random-init text-only and multimodal Gemma 3 models whose
embeddings have padding rows past the tokenizer, as real Gemma 3 has.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import (
    AutoTokenizer,
    Gemma3Config,
    Gemma3ForCausalLM,
    Gemma3ForConditionalGeneration,
    Gemma3TextConfig,
    PreTrainedTokenizerFast,
    SiglipVisionConfig,
)

SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "<start_of_turn>", "<end_of_turn>", "<image_soft_token>"]
BYTES = [f"<0x{i:02X}>" for i in range(256)]
CORPUS = [
    "당뇨병 환자는 혈당을 자주 측정해야 한다.",
    "고혈압은 심혈관 질환의 주요 위험 인자이다.",
    "폐렴의 흔한 증상은 발열과 기침이다.",
    "간호사는 환자의 활력 징후를 기록한다.",
    "약사는 복약 지도를 통해 부작용을 설명한다.",
    "치과 의사는 충치와 잇몸 질환을 치료한다.",
    "당뇨병성 신경병증은 말초 신경을 손상시킨다.",
    "혈압 측정 전에는 안정을 취해야 한다.",
    "항생제는 세균 감염 치료에 사용된다.",
    "심근경색 환자에게 아스피린을 투여한다.",
    "The patient has a fever and a cough.",
]
NEW_WORDS = ["▁당뇨병성", "▁심근경색", "▁고혈압은", "▁항생제는", "▁활력", "▁부작용을"]


def train_base_tokenizer(folder: Path, vocab_size: int = 420) -> PreTrainedTokenizerFast:
    """A Gemma-style BPE: byte fallback, `▁` for spaces, Gemma specials at ids 0-7."""
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizers.Replace(" ", "▁")
    tok.pre_tokenizer = pre_tokenizers.Split(" ", "merged_with_previous")
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS + BYTES, show_progress=False)
    tok.train_from_iterator([" " + line for line in CORPUS] * 3, trainer)
    return _wrap_and_save(tok, folder)


def _wrap_and_save(tok: Tokenizer, folder: Path) -> PreTrainedTokenizerFast:
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>",
        mask_token="<mask>",
    )
    folder.mkdir(parents=True, exist_ok=True)
    wrapped.save_pretrained(folder)
    return AutoTokenizer.from_pretrained(folder)


def extend_tokenizer(base_folder: Path, folder: Path, words=NEW_WORDS, added=("<dx>",)) -> PreTrainedTokenizerFast:
    """Add `words` as BPE entries with the merges that build them, plus added tokens."""
    base = AutoTokenizer.from_pretrained(base_folder)
    spec = json.loads((base_folder / "tokenizer.json").read_text(encoding="utf-8"))
    vocab, merges = spec["model"]["vocab"], spec["model"]["merges"]
    next_id = len(base)
    for word in words:
        pieces = base.convert_ids_to_tokens(base(word.replace("▁", " "), add_special_tokens=False)["input_ids"])
        current = pieces[0]
        for piece in pieces[1:]:
            merged = current + piece
            if merged not in vocab:
                merges.append([current, piece])
                vocab[merged] = next_id
                next_id += 1
            current = merged
    tok = Tokenizer.from_str(json.dumps(spec))
    out = _wrap_and_save(tok, folder)
    if added:
        out.add_tokens(list(added))
        out.save_pretrained(folder)
        out = AutoTokenizer.from_pretrained(folder)
    return out


def text_config(vocab_rows: int, tie: bool = True) -> Gemma3TextConfig:
    return Gemma3TextConfig(
        vocab_size=vocab_rows, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, head_dim=32, sliding_window=16,
        max_position_embeddings=512, tie_word_embeddings=tie,
    )


def padded_rows(n_tokens: int) -> int:
    """Rows past the tokenizer, like Gemma 3: the next multiple of 64 plus one more block."""
    return (n_tokens // 64 + 2) * 64


def save_text_model(folder: Path, tokenizer_folder: Path, tie: bool = True, seed: int = 0) -> Path:
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_folder)
    torch.manual_seed(seed)
    model = Gemma3ForCausalLM(text_config(padded_rows(len(tokenizer)), tie))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def save_multimodal_model(folder: Path, tokenizer_folder: Path, seed: int = 0) -> Path:
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_folder)
    torch.manual_seed(seed)
    vision = SiglipVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=28, patch_size=14
    )
    config = Gemma3Config(
        text_config=text_config(padded_rows(len(tokenizer))).to_dict(), vision_config=vision.to_dict(),
        mm_tokens_per_image=4, image_token_index=tokenizer.convert_tokens_to_ids("<image_soft_token>"),
        boi_token_index=5, eoi_token_index=6,
    )
    model = Gemma3ForConditionalGeneration(config)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
