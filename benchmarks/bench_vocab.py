"""Benchmark `medkor extend-vocab`: compression against a BPE trained from scratch, speed, a Gemma-size base.

Two corpus/base pairs, each extended without and with the shared medical term list:
- `demo-style`: Korean medical paragraphs from `scripts/demo_data` (a fresh draw, not
  the shipped demo files); the base is a Gemma-style BPE trained on 300 documents of
  another draw of the same source.
- `term-lists`: sentences of exam-question words (Zipf frequencies) and dictionary
  headwords with particles, built from ../shared/data/korean-medical-terms/; the base
  is the demo's tiny Gemma 3 tokenizer (trained on the shipped demo corpus).
The ceiling: a Gemma-style BPE with as many ids as the extended tokenizer (its 263
special and byte tokens included), trained from scratch on the same mining corpus;
a stricter one gives all those ids to trained tokens. Share of the ceiling = (base / extended - 1)
/ (base / fresh - 1), in tokens per 1,000 held-out characters (never mined).

`--large` also extends a 262,144-entry base with its merges (built here: a Korean BPE
trained on the term lists, filled up with Latin merge chains) by 10,700 tokens in a
child process, and reports its time and peak resident memory.

Run:  PYTHONPATH=. python benchmarks/bench_vocab.py [--large] [--pairs demo-style,term-lists]
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tokenizers import Tokenizer

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from medkor.vocab import stats  # noqa: E402
from medkor.vocab.build import ExtendConfig, extend_vocab  # noqa: E402
from medkor.vocab.subword import gemma_style_layout, save_gemma_style, train_bpe, write_gemma_like  # noqa: E402

TERMS_DIR = ROOT.parent / "shared" / "data" / "korean-medical-terms"
DEMO = ROOT / "medkor" / "assets" / "demo"
GEMMA_IDS = 262_144
PARTICLES = ["은", "는", "이", "가", "을", "를", "의", "에", "에서", "으로", "과", "와", "도", "에서는", "이며"]
ENDINGS = ["나타난다.", "관찰된다.", "필요하다.", "증가한다.", "감소한다.", "있다.", "보인다.", "시행한다."]
OVERHEAD = 263  # special and byte tokens a Gemma-style folder adds to the trained vocabulary


def _lines(path: Path) -> list[str]:
    return [w.strip() for w in path.read_text(encoding="utf-8").splitlines() if w.strip()]


def term_corpus(terms_dir: Path, docs: int, seed: int) -> list[str]:
    """Sentences of exam words (Zipf-weighted) and dictionary terms with particles."""
    rng = random.Random(1234)  # word ranks are fixed; only the draws depend on `seed`
    words = _lines(terms_dir / "train02_words.txt")
    terms = [t for t in _lines(terms_dir / "dictionary_terms.txt") if " " not in t and "(" not in t]
    rng.shuffle(words)
    rng.shuffle(terms)
    word_w = [1.0 / (r + 1) for r in range(len(words))]
    term_w = [1.0 / (r + 1) ** 0.8 for r in range(len(terms))]
    draw = random.Random(seed)
    out = []
    for _ in range(docs):
        sentences = []
        for _ in range(draw.randint(2, 4)):
            parts = draw.choices(words, word_w, k=draw.randint(3, 8))
            for _ in range(draw.randint(1, 2)):
                term = draw.choices(terms, term_w)[0] + draw.choice(PARTICLES)
                parts.insert(draw.randrange(len(parts) + 1), term)
            sentences.append(" ".join(parts) + " " + draw.choice(ENDINGS))
        out.append(" ".join(sentences))
    return out


def demo_style_corpus(docs: int, seed: int) -> list[str]:
    from demo_data import all_facts
    from demo_data.corpus import generate

    return generate(all_facts(), docs, seed)


def write_jsonl(path: Path, docs: list[str]) -> Path:
    path.write_text("".join(json.dumps({"text": d}, ensure_ascii=False) + "\n" for d in docs), encoding="utf-8")
    return path


def tpc(folder: Path, docs: list[str]) -> float:
    return stats.tokens_per_1k_chars(Tokenizer.from_file(str(folder / "tokenizer.json")), docs)


def share(base: float, ext: float, fresh: float) -> float:
    return (base / ext - 1) / (base / fresh - 1)


def side_by_side_throughput(toks: dict[str, Tokenizer], docs: list[str], rounds: int) -> dict[str, float]:
    """Best and median characters/second of each tokenizer over `rounds` alternating passes."""
    chars = sum(len(d) for d in docs)
    times: dict[str, list[float]] = {name: [] for name in toks}
    for _ in range(rounds):
        for name, tok in toks.items():
            start = time.perf_counter()
            stats.encode_all(tok, docs)
            times[name].append(time.perf_counter() - start)
    return {name: chars / min(t) for name, t in times.items()} | {
        f"{name}_median": chars / statistics.median(t) for name, t in times.items()
    }


def run_pair(name: str, base: Path, mining: list[str], held: list[str], budget: int, tmp: Path, args) -> dict:
    corpus, heldout = write_jsonl(tmp / f"{name}.jsonl", mining), write_jsonl(tmp / f"{name}-held.jsonl", held)
    row: dict = {"pair": name, "budget": budget, "mining_chars": sum(map(len, mining)), "held_chars": sum(map(len, held))}
    for label, terms in (("plain", []), ("terms", [str(TERMS_DIR / "dictionary_terms.txt")])):
        start = time.perf_counter()
        report = extend_vocab(ExtendConfig(
            base=str(base), corpus=[str(corpus)], heldout=[str(heldout)], terms=terms, out=str(tmp / f"{name}-{label}"),
            num_new_tokens=budget, min_frequency=args.min_frequency, term_min_frequency=args.term_min_frequency,
        ))
        row[f"{label}_seconds"] = time.perf_counter() - start
        row[f"{label}_report"] = report
        row[f"{label}_tpc"] = report["heldout"]["tokens_per_1k_chars"]["extended"]
    row["base_size"], row["extended_size"] = report["base_size"], report["extended_size"]
    row["base_tpc"] = report["heldout"]["tokens_per_1k_chars"]["base"]
    fresh = write_gemma_like(mining, tmp / f"{name}-fresh", vocab_size=report["extended_size"] - OVERHEAD)
    row["fresh_size"] = Tokenizer.from_file(str(fresh / "tokenizer.json")).get_vocab_size()
    row["fresh_tpc"] = tpc(fresh, held)
    # A stricter ceiling: every id a trained token (no byte or special tokens among them).
    row["fresh_all_tpc"] = stats.tokens_per_1k_chars(train_bpe(mining, vocab_size=report["extended_size"]), held)
    base_tok = Tokenizer.from_file(str(base / "tokenizer.json"))
    ext_tok = Tokenizer.from_file(str(tmp / f"{name}-plain" / "tokenizer.json"))
    row["speed"] = side_by_side_throughput({"base": base_tok, "extended": ext_tok}, held + mining, args.rounds)
    return row


def print_pair(row: dict) -> None:
    b, f = row["base_tpc"], row["fresh_tpc"]
    print(f"\n### {row['pair']}: base {row['base_size']:,} ids + {row['budget']:,}; mining {row['mining_chars']:,} "
          f"chars, held-out {row['held_chars']:,} chars")
    print("| tokenizer | ids | tokens / 1k held-out chars | fewer than base | share of the fresh-BPE gain | build |")
    print("|---|---:|---:|---:|---:|---:|")
    print(f"| base | {row['base_size']:,} | {b:.1f} | 1.000x | | |")
    for label in ("plain", "terms"):
        e = row[f"{label}_tpc"]
        name = "extended" if label == "plain" else "extended, with dictionary_terms.txt"
        print(f"| {name} | {row['extended_size']:,} | {e:.1f} | {b / e:.3f}x | {share(b, e, f):.1%} | "
              f"{row[f'{label}_seconds']:.1f} s |")
    print(f"| BPE from scratch (ceiling) | {row['fresh_size']:,} | {f:.1f} | {b / f:.3f}x | 100% | |")
    fa = row["fresh_all_tpc"]
    print(f"- stricter ceiling, every one of the {row['extended_size']:,} ids a trained token: {fa:.1f} "
          f"({b / fa:.3f}x); share of its gain: {share(b, row['plain_tpc'], fa):.1%} without terms, "
          f"{share(b, row['terms_tpc'], fa):.1%} with")
    plain, terms = row["plain_report"], row["terms_report"]["terms"]
    gain_plain, gain_terms = b / row["plain_tpc"] - 1, b / row["terms_tpc"] - 1
    print(f"- terms: {terms['terms']:,} in the list, {terms['seen_in_corpus']:,} in the corpus, {terms['required']:,} "
          f"seen >= {terms['required_from']} times, of which {terms['required_single_token']:,} one token "
          f"({terms['single_token']:,} single tokens in all); {terms['tokens_spent']:,} tokens spent on terms, saving "
          f"{terms['tokens_saved_on_corpus']:,} corpus tokens; gain with terms {gain_terms / gain_plain:.1%} of the "
          f"gain without; held-out word starts with such a term kept whole: "
          f"{terms['heldout_word_starts_kept_whole']:,} / {terms['heldout_word_starts_with_term']:,}")
    held = plain["heldout"]["round_trip_failures"]
    usage = plain["usage"]
    print(f"- guarantees (without terms): {plain['tokens_added']:,} added by source {plain['tokens_added_by_source']}; "
          f"round-trip failures base {held['base']} / extended {held['extended']} of {held['documents']}; "
          f"tokens not formed from their own text: {len(usage['tokens_not_formed_alone'])}; used on the corpus: "
          f"{usage['tokens_used_on_corpus']:,}, on held-out text: {usage['tokens_used_on_heldout']:,}")
    s = row["speed"]
    print(f"- throughput (chars/s, best of rounds): base {s['base']:,.0f}, extended {s['extended']:,.0f} -> "
          f"extended/base {s['extended'] / s['base']:.2f} (median {s['extended_median'] / s['base_median']:.2f})")


def gemma_size_base(korean: list[str], out: Path, size: int = GEMMA_IDS) -> Path:
    """A Gemma-style base with `size` ids and a merge for every multi-character token.

    A Korean BPE trained on `korean` gives the first 32,000 ids; merge chains over Latin
    letters (`ab`, `▁ab`, `abc`, ...) fill the rest, so vocabulary, merges and files
    have Gemma 3's size.
    """
    model = json.loads(train_bpe(korean, vocab_size=32_000).to_str())["model"]
    vocab, merges = gemma_style_layout(model["vocab"], model["merges"])
    letters = "abcdefghijklmnopqrstuvwxyz"
    for ch in letters:
        vocab.setdefault(ch, len(vocab))
    for length in itertools.count(1):
        for chars in itertools.product(letters, repeat=length):
            word = "".join(chars)
            for token, pair in ((word, (word[:-1], word[-1])), ("▁" + word, ("▁" + word[:-1], word[-1]))):
                if len(vocab) >= size:
                    return save_gemma_style(vocab, merges, out)
                if token not in vocab and pair[0] in vocab:
                    vocab[token] = len(vocab)
                    merges.append(pair)
        if length > 5:
            raise RuntimeError("not enough Latin chains")


def large_child(base: str, corpus: str, heldout: str, out: str, budget: int, min_frequency: int) -> None:
    """Runs in its own process: extend the large base, print time and peak RSS as JSON."""
    start = time.perf_counter()
    report = extend_vocab(ExtendConfig(base=base, corpus=[corpus], heldout=[heldout], out=out,
                                       num_new_tokens=budget, min_frequency=min_frequency))
    seconds = time.perf_counter() - start
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    slim = {k: report[k] for k in ("base_size", "extended_size", "tokens_added", "tokens_added_by_source", "merges",
                                   "heldout", "usage", "first_new_id", "last_new_id")}
    slim["corpus_chars"] = report["corpus"]["characters"]
    print(json.dumps({"seconds": seconds, "peak_rss_mib": peak_mib, "report": slim}, ensure_ascii=False))


def run_large(tmp: Path, args) -> None:
    korean = _lines(TERMS_DIR / "train02_words.txt") + _lines(TERMS_DIR / "dictionary_terms.txt")
    start = time.perf_counter()
    base = gemma_size_base(korean, tmp / "gemma-size")
    built = time.perf_counter() - start
    # Both sources, for enough pairs to spend 10,700 tokens (the demo source makes about 15,900 documents).
    demo, terms = demo_style_corpus(args.large_docs + 600, seed=31), term_corpus(TERMS_DIR, args.large_docs + 600, 33)
    mining = write_jsonl(tmp / "large.jsonl", demo[:-600] + terms[:-600])
    held = write_jsonl(tmp / "large-held.jsonl", demo[-600:] + terms[-600:])
    results = {}
    for budget in (0, args.large_tokens):  # +0: the same process with nothing learned, for scale
        command = [sys.executable, __file__, "--large_child", str(base), str(mining), str(held),
                   str(tmp / f"large-ext-{budget}"), str(budget), str(args.min_frequency)]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(done.stderr[-3000:])
        results[budget] = json.loads(done.stdout.strip().splitlines()[-1])
    result, idle = results[args.large_tokens], results[0]
    r = result["report"]
    held_report = r["heldout"]
    print(f"\n### Gemma-size base: {r['base_size']:,} ids, {r['merges']['base']:,} merges (built in {built:.0f} s); "
          f"corpus {2 * args.large_docs:,} documents ({r['corpus_chars']:,} chars), half demo-style, half term-lists")
    print(f"- extended by {r['tokens_added']:,} ({r['tokens_added_by_source']}) in {result['seconds']:.1f} s, "
          f"peak RSS {result['peak_rss_mib']:,.0f} MiB for the whole extend-vocab process (load, learn, save, "
          f"reload, stats); with +0 tokens: {idle['seconds']:.1f} s, {idle['peak_rss_mib']:,.0f} MiB")
    print(f"- ids {r['first_new_id']:,}..{r['last_new_id']:,} after the base; held-out tokens / 1k chars "
          f"{held_report['tokens_per_1k_chars']['base']} -> {held_report['tokens_per_1k_chars']['extended']} "
          f"({held_report['fewer_tokens_ratio']}x); round-trip failures base "
          f"{held_report['round_trip_failures']['base']} / extended {held_report['round_trip_failures']['extended']} "
          f"of {held_report['documents']}; tokens not formed from their own text: "
          f"{len(r['usage']['tokens_not_formed_alone'])}; used on held-out text: {r['usage']['tokens_used_on_heldout']:,}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", default="demo-style,term-lists", help="Comma-separated pairs to run ('' for none).")
    ap.add_argument("--min_frequency", type=int, default=ExtendConfig.min_frequency)
    ap.add_argument("--term_min_frequency", type=int, default=ExtendConfig.term_min_frequency)
    ap.add_argument("--rounds", type=int, default=5, help="Alternating throughput passes per tokenizer.")
    ap.add_argument("--large", action="store_true", help="Also extend a 262,144-entry base (minutes).")
    ap.add_argument("--large_docs", type=int, default=15_000, help="Mining documents for the large base.")
    ap.add_argument("--large_tokens", type=int, default=10_700)
    ap.add_argument("--large_child", nargs=6, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.large_child:
        base, corpus, heldout, out, budget, min_frequency = args.large_child
        large_child(base, corpus, heldout, out, int(budget), int(min_frequency))
        return 0
    if not (TERMS_DIR / "train02_words.txt").is_file():
        print(f"needs the term lists in {TERMS_DIR}", file=sys.stderr)
        return 2
    print(f"machine: {platform.machine()}, {platform.system()}, python {platform.python_version()}")
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        pairs = [p for p in args.pairs.split(",") if p]
        if "demo-style" in pairs:
            docs = demo_style_corpus(5_600, seed=777)
            base = write_gemma_like(demo_style_corpus(300, seed=778), tmp / "demo-style-base", vocab_size=3256 - OVERHEAD)
            print_pair(run_pair("demo-style", base, docs[:5000], docs[5000:], 2000, tmp, args))
        if "term-lists" in pairs:
            mining, held = term_corpus(TERMS_DIR, 3000, seed=1), term_corpus(TERMS_DIR, 600, seed=2)
            print_pair(run_pair("term-lists", DEMO / "tiny-gemma3", mining, held, 4000, tmp, args))
        if args.large:
            run_large(tmp, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
