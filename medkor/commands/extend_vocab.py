"""`medkor extend-vocab`: grow a Gemma 3 tokenizer by Korean (medical) tokens.

Example:
    medkor extend-vocab --base google/medgemma-4b-it --corpus train.jsonl \\
        --terms dictionary_terms.txt --num_new_tokens 10000 --out tokenizer-extended
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Optional, Sequence

from medkor.vocab.build import STATS_FILE, ExtendConfig, extend_vocab
from medkor.vocab.bpe_model import TokenizerFormatError
from medkor.vocab.candidates import METHODS
from medkor.vocab.corpus import CorpusError


def build_parser() -> argparse.ArgumentParser:
    defaults = ExtendConfig(base="", corpus=[], out="", num_new_tokens=0)
    p = argparse.ArgumentParser(
        prog="medkor extend-vocab",
        description=(
            "Add Korean tokens to a Gemma 3 (byte-fallback BPE) tokenizer. New tokens become "
            "entries of the BPE with the merges that build them, after every base id, so they "
            "are used inside words and decoding stays exact. Writes the tokenizer and "
            f"{STATS_FILE} to --out."
        ),
    )
    p.add_argument("--base", required=True, help="Model folder, tokenizer folder or hub id of the base tokenizer.")
    p.add_argument("--corpus", required=True, nargs="+", metavar="FILE",
                   help="Corpus files: .jsonl (text in --text_field) or text with one document a line.")
    p.add_argument("--terms", nargs="+", default=[], metavar="FILE",
                   help="Headword files (one term a line); their Korean words are added before mined candidates.")
    p.add_argument("--num_new_tokens", required=True, type=int,
                   help="How many tokens to add, counting the prefixes new tokens are built from.")
    p.add_argument("--out", required=True, help="Output folder for the extended tokenizer.")
    p.add_argument("--method", choices=METHODS, default=defaults.method,
                   help="Candidates: frequent corpus words, pieces of a BPE trained on the corpus, or both "
                        f"(default: {defaults.method}).")
    p.add_argument("--min_frequency", type=int, default=defaults.min_frequency,
                   help=f"Corpus occurrences a mined word or piece needs (default: {defaults.min_frequency}).")
    p.add_argument("--term_min_frequency", type=int, default=defaults.term_min_frequency,
                   help="Corpus occurrences (as a word start) a term needs; 0 adds terms the corpus never uses "
                        f"(default: {defaults.term_min_frequency}).")
    p.add_argument("--text_field", default=defaults.text_field,
                   help=f"Field holding the text in JSONL files (default: {defaults.text_field}).")
    p.add_argument("--heldout", nargs="+", default=[], metavar="FILE",
                   help="Held-out files for the before/after figures (default: every --heldout_every-th "
                        "corpus document, left out of mining).")
    p.add_argument("--heldout_every", type=int, default=defaults.heldout_every,
                   help=f"Hold out every N-th corpus document when --heldout is not given; 0 holds none "
                        f"(default: {defaults.heldout_every}).")
    p.add_argument("--subword_vocab_size", type=int, default=defaults.subword_vocab_size,
                   help=f"Vocabulary size of the BPE trained for the subword method "
                        f"(default: {defaults.subword_vocab_size}).")
    p.add_argument("--overwrite", action="store_true", help="Replace a tokenizer already in --out.")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    cfg = ExtendConfig(**vars(args))
    try:
        report = extend_vocab(cfg)
    except (CorpusError, TokenizerFormatError, FileNotFoundError, FileExistsError, ValueError) as err:
        print(f"medkor extend-vocab: error: {err}", file=sys.stderr)
        return 2
    summary = {k: report[k] for k in ("base_size", "extended_size", "tokens_added", "tokens_added_by_source")}
    for part in ("corpus", "heldout"):
        if report[part]:
            summary[f"{part}_tokens_per_1k_chars"] = report[part]["tokens_per_1k_chars"]
            summary[f"{part}_fewer_tokens_ratio"] = report[part]["fewer_tokens_ratio"]
    summary["throughput_chars_per_second"] = report["throughput"]["chars_per_second"]
    print(json.dumps(summary, ensure_ascii=False, indent=2))
    print(f"wrote {cfg.out} ({STATS_FILE} has the details)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
