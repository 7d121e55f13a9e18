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

from medkor.cli import one_line
from medkor.vocab.build import STATS_FILE, ExtendConfig, extend_vocab
from medkor.vocab.bpe_model import TokenizerFormatError
from medkor.vocab.select import TermBudgetError
from medkor.vocab.corpus import CorpusError


def build_parser() -> argparse.ArgumentParser:
    defaults = ExtendConfig(base="", corpus=[], out="", num_new_tokens=0)
    p = argparse.ArgumentParser(
        prog="medkor extend-vocab",
        allow_abbrev=False,
        description=(
            "Add Korean tokens to a Gemma 3 (byte-fallback BPE) tokenizer. BPE training continues "
            "on the corpus as the base cuts it: each new token is the merge that saves the most "
            "tokens, ranked after every base merge and given an id after every base id, so base "
            "ids stay, no text gets longer and decoding stays exact. Writes the tokenizer and "
            f"{STATS_FILE} to --out."
        ),
    )
    p.add_argument("--base", required=True, help="Model folder, tokenizer folder or hub id of the base tokenizer.")
    p.add_argument("--corpus", required=True, nargs="+", metavar="FILE",
                   help="Corpus files: .jsonl (text in --text_field) or text with one document a line.")
    p.add_argument("--terms", nargs="+", default=[], metavar="FILE",
                   help="Headword files (one term a line); their Korean words compete for the budget by what "
                        "they save (see --term_min_frequency, --term_priority).")
    p.add_argument("--num_new_tokens", required=True, type=int,
                   help="How many tokens to add (fewer when no pair is left that --min_frequency allows).")
    p.add_argument("--out", required=True, help="Output folder for the extended tokenizer.")
    p.add_argument("--min_frequency", type=int, default=defaults.min_frequency,
                   help="Corpus occurrences a new merge or a missing character needs "
                        f"(default: {defaults.min_frequency}).")
    p.add_argument("--term_min_frequency", type=int, default=defaults.term_min_frequency,
                   help="Terms that start at least this many corpus words become one token each, whatever "
                        "they save; 0 makes every term one token, also those the corpus never uses "
                        f"(default: {defaults.term_min_frequency}).")
    p.add_argument("--term_priority", type=float, default=defaults.term_priority,
                   help="Weight on what the other terms save when they compete with corpus merges: 1 counts "
                        "a term seen f times like a pair seen f times, 0 adds only the required terms "
                        f"(default: {defaults.term_priority}).")
    p.add_argument("--text_field", default=defaults.text_field,
                   help=f"Field holding the text in JSONL files (default: {defaults.text_field}).")
    p.add_argument("--heldout", nargs="+", default=[], metavar="FILE",
                   help="Held-out files for the before/after figures (default: every --heldout_every-th "
                        "corpus document, left out of mining).")
    p.add_argument("--heldout_every", type=int, default=defaults.heldout_every,
                   help=f"Hold out every N-th corpus document when --heldout is not given; 0 holds none "
                        f"(default: {defaults.heldout_every}).")
    p.add_argument("--overwrite", action="store_true",
                   help="Replace the tokenizer of an earlier extend-vocab run in --out (only the files it wrote, "
                        "listed in its .medkor-extend-vocab.json; other files are kept). Without it a folder that "
                        "is not empty is refused.")
    p.add_argument("--strict_terms", action="store_true",
                   help="Refuse when the terms seen --term_min_frequency times do not fit --num_new_tokens "
                        "(default: raise the frequency to the smallest whose terms fit, and say so).")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    cfg = ExtendConfig(**vars(args))
    try:
        report = extend_vocab(cfg)
    except (CorpusError, TokenizerFormatError, TermBudgetError, FileNotFoundError, FileExistsError, ValueError) as err:
        print(f"medkor extend-vocab: error: {one_line(err)}", file=sys.stderr)
        return 2
    except OSError as err:  # the disk, permissions: --out is as it was
        print(f"medkor extend-vocab: error: {one_line(err)}", file=sys.stderr)
        return 1
    summary = {k: report[k] for k in ("base_size", "extended_size", "tokens_added", "tokens_added_by_source")}
    for part in ("corpus", "heldout"):
        if report[part]:
            summary[f"{part}_tokens_per_1k_chars"] = report[part]["tokens_per_1k_chars"]
            summary[f"{part}_fewer_tokens_ratio"] = report[part]["fewer_tokens_ratio"]
            failures = report[part]["round_trip_failures"]
            summary[f"{part}_round_trip_failures"] = {k: failures[k] for k in ("base", "extended", "added_by_extension")}
    if report["terms"]:
        terms = report["terms"]
        summary["terms"] = {k: terms[k] for k in ("required", "required_single_token", "single_token",
                                                   "tokens_spent", "tokens_saved_on_corpus")}
    summary["throughput_chars_per_second"] = report["throughput"]["chars_per_second"]
    print(json.dumps(summary, ensure_ascii=False, indent=2))
    terms = report["terms"]
    if terms and terms["required_from_raised"]:
        print(f"note: the {terms['required_at_asked_frequency']} terms seen at least {cfg.term_min_frequency} times do "
              f"not fit into --num_new_tokens {cfg.num_new_tokens}: made whole only the {terms['required']} seen at "
              f"least {terms['required_from']} times (recorded in {STATS_FILE}); raise --num_new_tokens for more, "
              "or pass --strict_terms to refuse instead")
    if report["tokens_added"] < cfg.num_new_tokens:
        print(f"note: added {report['tokens_added']} of the {cfg.num_new_tokens} tokens asked for: no pair or missing "
              f"character is left that the corpus uses --min_frequency {cfg.min_frequency} times")
    for part in ("corpus", "heldout"):
        failures = (report[part] or {}).get("round_trip_failures", {})
        if failures.get("base"):
            example = failures["base_example"]
            print(f"note: the base tokenizer itself loses text in {failures['base']} of {failures['documents']} "
                  f"{part} documents (e.g. {example['text']!r} decodes as {example['decoded']!r}); "
                  f"the extension adds {failures['added_by_extension']} such documents")
    print(f"wrote {cfg.out} ({STATS_FILE} has the details)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
