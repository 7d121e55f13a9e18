"""Tiny Gemma-3-style tokenizer and model for the KorMedMCQA tests (built in well under a second)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import torch

SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "<start_of_turn>", "<end_of_turn>"]
GEMMA_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "<start_of_turn>{{ role }}\n{{ message['content'] | trim }}<end_of_turn>\n{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)
CORPUS = [
    "고혈압 환자에게 가장 먼저 투여하는 약물은 무엇인가?",
    "당뇨병의 합병증으로 옳은 것은? 신장 질환, 망막 병증, 말초 신경 병증",
    "간호사는 환자의 활력 징후를 측정한다. 체온, 맥박, 호흡, 혈압",
    "약사는 처방전을 확인하고 복약 지도를 한다. 항생제 내성",
    "치과 의사는 충치와 치주염을 치료한다. 불소 도포",
    "폐렴 환자의 흉부 방사선 검사 소견으로 옳은 것은?",
]


def korean_lines(extra: Sequence[str] = ()) -> list[str]:
    return CORPUS + list(extra)


def build_tokenizer(letter_after_space: bool = True, vocab_size: int = 700) -> Any:
    """A byte-fallback BPE with `▁` metaspace, Gemma special ids and chat template.

    With ``letter_after_space`` the corpus has letters after spaces (``답 A``) so ``▁A`` becomes a
    token; without it letters only follow other characters, so `` A`` is two tokens (``▁``, ``A``).
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    # letters after many different characters: the pair (▁, A) outnumbers any (char, ▁) pair
    answers = [f"{c} {x}" if letter_after_space else f"{c}{x}" for c in "가나다라마바사아자차카타파하" for x in "ABCDE"]
    answers += ["정답："] * 5
    options = [f"{x}. 보기" for x in "ABCDE"]
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    tok.normalizer = normalizers.Replace(" ", "▁")
    tok.pre_tokenizer = pre_tokenizers.Split(" ", "merged_with_previous")
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS, show_progress=False)
    tok.train_from_iterator(korean_lines(answers + options), trainer)
    # rebuild with the 256 byte tokens in the model vocabulary (what byte fallback needs)
    state = json.loads(tok.to_str())
    vocab = state["model"]["vocab"]
    for byte in range(256):
        vocab.setdefault(f"<0x{byte:02X}>", len(vocab))
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in state["model"]["merges"]]
    full = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True))
    full.normalizer = tok.normalizer
    full.pre_tokenizer = tok.pre_tokenizer
    full.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    full.add_special_tokens(SPECIALS)
    full.post_processor = processors.TemplateProcessing(single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", 2)])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=full, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>", mask_token="<mask>"
    )
    tokenizer.chat_template = GEMMA_CHAT_TEMPLATE
    return tokenizer


def build_model(tokenizer: Any, seed: int = 0, layers: int = 2, hidden: int = 64) -> torch.nn.Module:
    """A random-init ``Gemma3ForCausalLM`` (fp32, eval mode) whose embedding covers the tokenizer."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    vocab = (len(tokenizer) // 64 + 1) * 64  # padding rows past the tokenizer, like real Gemma 3
    config = Gemma3TextConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=32,
        max_position_embeddings=2048,
        sliding_window=32,  # shorter than the prompts: the local layers' masks matter
        query_pre_attn_scalar=32,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=2,
    )
    torch.manual_seed(seed)
    model = Gemma3ForCausalLM(config)
    with torch.no_grad():  # default init gives near-uniform logits; widen them so letters differ clearly
        model.model.embed_tokens.weight.normal_(0.0, 1.0)
    return model.eval()


def question_record(n: int, answer: Any = None, subject: str | None = None, **overrides: Any) -> dict[str, Any]:
    """One record in the hub schema with distinct texts."""
    record = {
        "subject": subject or "doctor",
        "year": 2023,
        "period": 1,
        "q_number": n + 1,
        "question": f" {CORPUS[n % len(CORPUS)]} ({n}번) ",
        "A": f"보기 가 {n}",
        "B": "신장 질환",
        "C": "망막 병증" + " 및 합병증" * (n % 4),
        "D": "체온",
        "E": f"혈압 {n * 7}",
        "answer": answer if answer is not None else (n % 5) + 1,
        "cot": "",
    }
    record.update(overrides)
    return record


def write_jsonl(path: Path, records: Sequence[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def write_sample(root: Path, sizes: dict[str, int] | None = None, fewshot: int = 5) -> Path:
    """``root/<subset>/{test,fewshot}.jsonl`` for the given subset sizes."""
    sizes = sizes or {"doctor": 7, "nurse": 6, "pharm": 5, "dentist": 4}
    for k, (subset, size) in enumerate(sizes.items()):
        write_jsonl(root / subset / "test.jsonl", [question_record(10 * k + i, subject=subset) for i in range(size)])
        shots = [question_record(100 + i, subject=subset, cot="풀이") for i in range(fewshot)]
        write_jsonl(root / subset / "fewshot.jsonl", shots)
    return root
