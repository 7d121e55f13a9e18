"""`extend-vocab` end to end: load the base, mine, select, grow the BPE, save, measure."""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional


from medkor.vocab.bpe_model import BpeModel
from medkor.vocab.candidates import build_candidates
from medkor.vocab.corpus import read_documents, read_terms, split_heldout
from medkor.vocab.extend import extend_bpe
from medkor.vocab.korean import SPACE
from medkor.vocab import stats

STATS_FILE = "extension_stats.json"


@dataclass
class ExtendConfig:
    """What to extend, with what, and where to write it.

    Attributes:
        base: model folder, tokenizer folder or hub id of the base tokenizer.
        corpus: corpus files (`.jsonl` with `text_field`, or text with one document a line).
        out: output folder for the extended tokenizer and `extension_stats.json`.
        num_new_tokens: how many tokens to add (the prefixes new tokens need included).
        terms: headword files (one term a line) whose Korean words are preferred.
        method: `words` (frequent words), `subwords` (a BPE trained on the corpus) or `both`.
        min_frequency: corpus occurrences a mined word or piece needs.
        term_min_frequency: corpus occurrences (as a word start) a term needs; 0 takes
            every term, also those the corpus never uses.
        text_field: field of the text in JSONL records.
        heldout: held-out files for the before/after figures; when none are given,
            every `heldout_every`-th corpus document is held out of mining instead.
        heldout_every: see `heldout` (0 holds nothing out).
        subword_vocab_size: vocabulary size of the BPE trained for the subword method.
        overwrite: replace an existing tokenizer in `out`.
    """

    base: str
    corpus: list[str]
    out: str
    num_new_tokens: int
    terms: list[str] = field(default_factory=list)
    method: str = "both"
    min_frequency: int = 5
    term_min_frequency: int = 3  # terms seen once or twice crowd out frequent words (docs/benchmarks.md)
    text_field: str = "text"
    heldout: list[str] = field(default_factory=list)
    heldout_every: int = 10
    subword_vocab_size: int = 32000
    overwrite: bool = False


def load_base(name: str) -> tuple[Any, BpeModel]:
    """The base as a transformers tokenizer and as editable BPE data."""
    from transformers import AutoTokenizer

    try:
        hf = AutoTokenizer.from_pretrained(name)
    except (OSError, ValueError) as err:
        raise FileNotFoundError(
            f"cannot load a tokenizer from {name!r}: give a model or tokenizer folder with "
            f"tokenizer.json, or a hub id that is reachable ({err})"
        ) from None
    if not getattr(hf, "is_fast", False):
        raise ValueError(f"{name}: extend-vocab needs a fast (tokenizer.json) tokenizer")
    return hf, BpeModel.from_tokenizer(hf.backend_tokenizer, source=name)


def extend_vocab(cfg: ExtendConfig) -> dict[str, Any]:
    """Build the extended tokenizer in `cfg.out` and return its statistics."""
    if cfg.num_new_tokens < 0:
        raise ValueError(f"--num_new_tokens must be >= 0, got {cfg.num_new_tokens}")
    if cfg.min_frequency < 1:
        raise ValueError(f"--min_frequency must be >= 1, got {cfg.min_frequency}")
    out = Path(cfg.out)
    if (out / "tokenizer.json").exists() and not cfg.overwrite:
        raise FileExistsError(f"{out} already holds a tokenizer; pass --overwrite to replace it")
    hf_base, base = load_base(cfg.base)
    base_tok = base.to_tokenizer()

    docs = read_documents(cfg.corpus, cfg.text_field)
    if cfg.heldout:
        mining, heldout = docs, read_documents(cfg.heldout, cfg.text_field)
    else:
        mining, heldout = split_heldout(docs, cfg.heldout_every)
    terms = read_terms(cfg.terms) if cfg.terms else []

    known = set(base.vocab) | base.special_contents()
    candidates = build_candidates(
        base_tok, known, mining, cfg.method, cfg.min_frequency, terms, cfg.term_min_frequency, cfg.subword_vocab_size
    )
    selection, result, banned = _select_and_extend(base, base_tok, candidates, mining, cfg)
    extended = result.model.to_tokenizer()

    _save(hf_base, result.model, out)
    report = _report(cfg, base, base_tok, extended, result, selection, len(candidates), mining, heldout)
    report["tokens_banned_as_net_loss"] = sorted(banned)
    report["throughput"] = _throughput(base_tok, extended, heldout + mining)
    _verify_saved(out, base, result.new_ids, heldout or mining[:200])
    (out / STATS_FILE).write_text(json.dumps(report, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    return report


def _select_and_extend(base, base_tok, candidates, mining, cfg, rounds: int = 4):
    """Select and grow, then ban tokens that cost more than they save, or that never form
    even where their text stands alone (an earlier-ranked chain takes their pieces), and redo.
    """
    from medkor.vocab.prune import net_savings, space_words
    from medkor.vocab.select import select_tokens

    words = space_words(mining)
    banned: set[str] = set()
    for _ in range(rounds):
        selection = select_tokens(candidates, base.vocab, cfg.num_new_tokens, frozenset(banned))
        result = extend_bpe(base, selection.tokens)
        extended = result.model.to_tokenizer()
        net = net_savings(base_tok, extended, words, selection.tokens)
        losing = {t for t, n in net.items() if n < 0}
        losing |= set(stats.unused_tokens(extended, selection.tokens))  # dead ids: never produced
        if not losing:
            break
        banned |= losing
    return selection, result, banned


def _save(hf_base: Any, model: BpeModel, out: Path) -> None:
    """Write the base's tokenizer files with the grown `tokenizer.json`, atomically."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the result is an ordinary folder
    try:
        hf_base.save_pretrained(tmp)
        (tmp / "tokenizer.json").write_text(model.to_json(), encoding="utf-8")
        # A SentencePiece file would describe the old vocabulary: never ship it.
        (tmp / "tokenizer.model").unlink(missing_ok=True)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _verify_saved(out: Path, base: BpeModel, new_ids: dict[str, int], docs: list[str]) -> None:
    """Reload through transformers and check ids and round trip: what users will get."""
    from transformers import AutoTokenizer

    loaded = AutoTokenizer.from_pretrained(str(out))
    vocab = loaded.get_vocab()
    moved = [t for t, i in base.vocab.items() if vocab.get(t) != i]
    lost = [t for t, i in new_ids.items() if vocab.get(t) != i]
    if moved or lost:
        raise RuntimeError(f"{out}: reloaded tokenizer changed ids of {moved[:5] or lost[:5]}")
    for doc in docs:
        back = loaded.decode(loaded(doc, add_special_tokens=False)["input_ids"])
        if back != doc:
            raise RuntimeError(f"{out}: round trip failed for {doc[:80]!r} -> {back[:80]!r}")


def _throughput(base_tok: Any, extended: Any, docs: list[str], max_chars: int = 2_000_000) -> dict[str, Any]:
    """Batch-encoding speed of base and extended on the same text, measured alternately."""
    sample, chars = [], 0
    for doc in docs:
        if chars >= max_chars:
            break
        sample.append(doc)
        chars += len(doc)
    best = {"base": 0.0, "extended": 0.0}
    for _ in range(3):  # interleaved rounds, best of each: both see the same machine state
        for name, tok in (("base", base_tok), ("extended", extended)):
            best[name] = max(best[name], stats.throughput(tok, sample, repeats=1))
    return {
        "characters": chars,
        "chars_per_second": {k: round(v) for k, v in best.items()},
        "extended_vs_base": round(best["extended"] / best["base"], 4) if best["base"] else None,
        "method": "tokenizers encode_batch (256 documents a batch, all cores), best of 3 interleaved rounds",
    }


def _report(cfg, base, base_tok, extended, result, selection, num_candidates, mining, heldout) -> dict[str, Any]:
    def compare(docs: list[str]) -> Optional[dict[str, Any]]:
        if not docs:
            return None
        before = stats.tokens_per_1k_chars(base_tok, docs)
        after = stats.tokens_per_1k_chars(extended, docs)
        return {
            "documents": len(docs),
            "characters": sum(len(d) for d in docs),
            "tokens_per_1k_chars": {"base": round(before, 2), "extended": round(after, 2)},
            "fewer_tokens_ratio": round(before / after, 4) if after else None,
            "round_trip_failures": {
                "base": len(stats.round_trip_failures(base_tok, docs)),
                "extended": len(stats.round_trip_failures(extended, docs)),
            },
        }

    word_initial = {t for t in selection.tokens if t.startswith(SPACE)}
    seen, covered = stats.corpus_usage(extended, heldout or mining, word_initial)
    unused = stats.unused_tokens(extended, selection.tokens)
    new = list(result.new_ids.items())
    return {
        "base": cfg.base,
        "config": asdict(cfg),
        "base_size": base.size,
        "extended_size": result.model.size,
        "tokens_added": len(new),
        "tokens_added_by_source": selection.by_source(),
        "first_new_id": new[0][1] if new else None,
        "last_new_id": new[-1][1] if new else None,
        "candidates": num_candidates,
        "candidates_skipped_for_budget": selection.skipped,
        "merges": {
            "base": len(base.merges),
            "extended": len(result.model.merges),
            "chain": result.chain_merges,
            "promoted_from_base": result.promoted_merges,
            "completion": result.completion_merges,
        },
        "corpus": compare(mining),
        "heldout": compare(heldout),
        "usage": {
            "tokens_checked": len(selection.tokens),
            "tokens_split_in_some_context": unused,
            "heldout_word_starts_with_new_token": seen,
            "heldout_word_starts_kept_whole": covered,
        },
        "new_tokens": [{"token": t, "id": i, "source": selection.sources[t]} for t, i in new],
        "examples": stats.examples(base_tok, extended, heldout or mining),
    }
