"""Make the demo's tiny Gemma 3 and its base tokenizer (no network, deterministic).

Writes `medkor/assets/demo/tiny-gemma3/`: a Gemma-3-style tokenizer (BPE with byte
fallback and `▁` word boundaries, the same pipeline as Gemma 3's tokenizer.json)
trained on the demo corpus, and a random-init `Gemma3ForCausalLM` whose embedding
has more rows than the tokenizer has tokens, like Gemma 3's 63 padding rows.

    python scripts/make_demo_model.py
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import Gemma3ForCausalLM, Gemma3TextConfig
from transformers.models.gemma.tokenization_gemma import GemmaTokenizer

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "medkor" / "assets" / "demo"
SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "<start_of_turn>", "<end_of_turn>"]
BYTES = [f"<0x{b:02X}>" for b in range(256)]

# Gemma's turn format; a system message is folded into the first user turn.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{%- if messages and messages[0]['role'] == 'system' -%}"
    "{%- set first_prefix = messages[0]['content'] + '\n\n' -%}{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}{%- set first_prefix = '' -%}{%- set loop_messages = messages -%}{%- endif -%}"
    "{%- for message in loop_messages -%}"
    "{%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}"
    "{{ '<start_of_turn>' + role + '\n' + (first_prefix if loop.first else '') + message['content'] | trim + '<end_of_turn>\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\n' }}{%- endif -%}"
)


def corpus_texts(path: Path) -> list[str]:
    with path.open(encoding="utf-8") as f:
        return [json.loads(line)["text"] for line in f if line.strip()]


def train_base_tokenizer(texts: list[str], vocab_size: int) -> GemmaTokenizer:
    """Train BPE pieces on words with their `▁` prefix, then lay ids out as Gemma does."""
    trainer_tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    trainer_tok.normalizer = normalizers.Replace(" ", "▁")
    # Training splits before every `▁` so pieces stay inside words; the saved
    # tokenizer below uses Gemma's own (non-splitting) pipeline with these merges.
    trainer_tok.pre_tokenizer = pre_tokenizers.Split("▁", behavior="merged_with_next")
    n_learned = vocab_size - len(SPECIALS) - len(BYTES)
    trainer = trainers.BpeTrainer(vocab_size=n_learned, special_tokens=[], show_progress=False, limit_alphabet=1500)
    trainer_tok.train_from_iterator(texts, trainer=trainer)
    learned = json.loads(trainer_tok.to_str())["model"]
    pieces = sorted(learned["vocab"].items(), key=lambda kv: kv[1])
    vocab: dict[str, int] = {}
    for token in SPECIALS + BYTES + [p for p, _ in pieces]:
        vocab.setdefault(token, len(vocab))
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in learned["merges"]]
    tokenizer = GemmaTokenizer(vocab=vocab, merges=merges, add_bos_token=True, add_eos_token=False)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<start_of_turn>", "<end_of_turn>"]})
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.init_kwargs.update(add_bos_token=True, add_eos_token=False)  # saved, so reloads keep BOS
    return tokenizer


def make_model(n_tokens: int, seed: int) -> Gemma3ForCausalLM:
    rows = (n_tokens // 64 + 1) * 64  # always some padding rows past the tokenizer, as in Gemma 3
    config = Gemma3TextConfig(
        vocab_size=rows,
        hidden_size=128,
        intermediate_size=512,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,
        query_pre_attn_scalar=32,
        max_position_embeddings=2048,
        sliding_window=128,
        layer_types=["sliding_attention"] * 3 + ["full_attention"],
        pad_token_id=0,
        eos_token_id=[1, 6],
        bos_token_id=2,
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    return Gemma3ForCausalLM(config)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", type=Path, default=DEMO / "data" / "train.jsonl")
    parser.add_argument("--out", type=Path, default=DEMO / "tiny-gemma3")
    parser.add_argument("--vocab_size", type=int, default=1600, help="base tokenizer entries (small, so the Korean extension matters)")
    parser.add_argument("--seed", type=int, default=1234)
    args = parser.parse_args()

    tokenizer = train_base_tokenizer(corpus_texts(args.corpus), args.vocab_size)
    model = make_model(len(tokenizer), args.seed).to(torch.bfloat16)  # bf16 keeps the asset small
    args.out.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(args.out)
    model.save_pretrained(args.out)
    params = sum(p.numel() for p in model.parameters())
    print(f"{args.out}: tokenizer {len(tokenizer)} tokens, embedding rows {model.config.vocab_size}, {params:,} parameters")


if __name__ == "__main__":
    main()
