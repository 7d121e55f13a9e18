"""Benchmark `medkor extend-vocab`: compression and tokenization speed, base vs extended.

Corpus: Korean medical sentences built from ../shared/data/korean-medical-terms/
(exam-question words drawn with Zipf frequencies, dictionary headwords followed by
particles); the held-out text is drawn the same way with another seed and is never
mined. Without that folder the demo corpus is used (train to mine, validation held out).

Run:  PYTHONPATH=. python benchmarks/bench_vocab.py [--base DIR] [--num_new_tokens N]

Prints tokens per 1,000 characters before/after on the mining corpus and on the
held-out text, the throughput of both tokenizers measured side by side in this run
(alternating passes, best of each), and for contrast the naive `add_tokens`
extension with the same tokens.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

from tokenizers import Tokenizer

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from medkor.vocab import stats  # noqa: E402
from medkor.vocab.build import ExtendConfig, extend_vocab  # noqa: E402
from medkor.vocab.corpus import read_documents  # noqa: E402
from medkor.vocab.korean import to_text  # noqa: E402

TERMS_DIR = ROOT.parent / "shared" / "data" / "korean-medical-terms"
DEMO = ROOT / "medkor" / "assets" / "demo"
PARTICLES = ["은", "는", "이", "가", "을", "를", "의", "에", "에서", "으로", "과", "와", "도", "에서는", "이며"]
ENDINGS = ["나타난다.", "관찰된다.", "필요하다.", "증가한다.", "감소한다.", "있다.", "보인다.", "시행한다."]


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


def write_jsonl(path: Path, docs: list[str]) -> Path:
    path.write_text("".join(json.dumps({"text": d}, ensure_ascii=False) + "\n" for d in docs), encoding="utf-8")
    return path


def side_by_side_throughput(toks: dict[str, Tokenizer], docs: list[str], rounds: int) -> dict[str, float]:
    """Best characters/second of each tokenizer over `rounds` alternating passes."""
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


def naive_add_tokens(base: Tokenizer, tokens: list[str]) -> Tokenizer:
    """The pitfall, for contrast: the same strings as added tokens outside the BPE."""
    naive = Tokenizer.from_str(base.to_str())
    naive.add_tokens([to_text(t).strip() for t in tokens])
    return naive


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", default=str(DEMO / "tiny-gemma3"), help="Base tokenizer or model folder.")
    ap.add_argument("--terms_dir", default=str(TERMS_DIR), help="Folder of the Korean medical term lists.")
    ap.add_argument("--num_new_tokens", type=int, default=4000)
    ap.add_argument("--docs", type=int, default=3000, help="Mining documents (held-out: a fifth of it).")
    ap.add_argument("--min_frequency", type=int, default=3)
    ap.add_argument("--term_min_frequency", type=int, default=3)
    ap.add_argument("--method", default="both")
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        terms_dir = Path(args.terms_dir)
        if (terms_dir / "train02_words.txt").is_file():
            corpus = write_jsonl(tmp / "train.jsonl", term_corpus(terms_dir, args.docs, seed=1))
            heldout = write_jsonl(tmp / "heldout.jsonl", term_corpus(terms_dir, args.docs // 5, seed=2))
            terms = [str(terms_dir / "dictionary_terms.txt")]
            source = f"synthetic from {terms_dir.name}/ ({args.docs} + {args.docs // 5} docs)"
        else:
            corpus, heldout = DEMO / "data" / "train.jsonl", DEMO / "data" / "validation.jsonl"
            terms, source = [], "demo corpus (term lists not found)"
        start = time.perf_counter()
        report = extend_vocab(ExtendConfig(
            base=args.base, corpus=[str(corpus)], heldout=[str(heldout)], terms=terms, out=str(tmp / "ext"),
            num_new_tokens=args.num_new_tokens, min_frequency=args.min_frequency, method=args.method,
            term_min_frequency=args.term_min_frequency,
        ))
        build_s = time.perf_counter() - start
        from transformers import AutoTokenizer

        base = AutoTokenizer.from_pretrained(args.base).backend_tokenizer
        ext = Tokenizer.from_file(str(tmp / "ext" / "tokenizer.json"))
        new = [t["token"] for t in report["new_tokens"]]
        naive = naive_add_tokens(base, new)
        held = read_documents([heldout])
        mined = read_documents([corpus])
        speed = side_by_side_throughput({"base": base, "extended": ext}, held + mined, args.rounds)

    rows = []
    for name, docs in (("corpus (mined)", mined), ("held-out", held)):
        b, e, n = (stats.tokens_per_1k_chars(t, docs) for t in (base, ext, naive))
        rows.append(f"| {name} | {b:.1f} | {e:.1f} | {b / e:.3f}x | {n:.1f} |")
    fails = len(stats.round_trip_failures(ext, held)), len(stats.round_trip_failures(naive, held))
    print(f"machine: {platform.processor() or platform.machine()}, {platform.system()}, python {platform.python_version()}")
    print(f"base: {args.base} ({report['base_size']} ids); corpus: {source}")
    print(f"added {report['tokens_added']} tokens {report['tokens_added_by_source']} in {build_s:.1f} s")
    print("\n| text | base tok/1k chars | extended | fewer tokens | naive add_tokens |")
    print("|---|---|---|---|---|")
    print("\n".join(rows))
    print(f"\nheld-out round-trip failures: extended {fails[0]} / {len(held)}, naive add_tokens {fails[1]} / {len(held)}")
    usage = report["usage"]
    print(f"added tokens split in some context: {len(usage['tokens_split_in_some_context'])}; held-out word starts "
          f"with a new token kept whole: {usage['heldout_word_starts_kept_whole']} / {usage['heldout_word_starts_with_new_token']}")
    ratio = speed["base"] / speed["extended"]
    print(f"throughput (chars/s, best of {args.rounds}): base {speed['base']:,.0f}, extended {speed['extended']:,.0f}"
          f" -> extended is {ratio:.2f}x slower (median: {speed['base_median'] / speed['extended_median']:.2f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
