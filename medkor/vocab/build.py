"""`extend-vocab` end to end: load the base, learn merges on the corpus, grow the BPE, save, measure."""

from __future__ import annotations

import errno
import json
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Optional

from medkor.run.publish import (
    PublishError, check_target, discard, foreign_files, foreign_files_message, kill_point, marker_files, marker_name,
    no_space_left, no_space_message, publish_folder, staging_for, write_marker,
)
from medkor.vocab import stats
from medkor.vocab.bpe_model import BpeModel
from medkor.vocab.corpus import read_documents, read_terms, split_heldout
from medkor.vocab.extend import ExtensionResult, grow_bpe
from medkor.vocab.merges import WordTable, space_word_counts
from medkor.vocab.select import MergeSelector, TermBudgetError
from medkor.vocab.terms import TermPlan

STATS_FILE = "extension_stats.json"
COMMAND = "extend-vocab"
MARKER = marker_name(COMMAND)
# what extend-vocab may write (the base's tokenizer files, the grown tokenizer.json, the stats): a file of
# these names that no marker lists is refused before the build
WRITTEN_FILES = frozenset({"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                           "chat_template.jinja", "tokenizer.model", STATS_FILE})


class OutputFolderError(FileExistsError):
    """`--out` holds files that extend-vocab would have to replace without having written them."""


@dataclass
class ExtendConfig:
    """What to extend, with what, and where to write it.

    Attributes:
        base: model folder, tokenizer folder or hub id of the base tokenizer.
        corpus: corpus files (`.jsonl` with `text_field`, or text with one document a line).
        out: output folder for the extended tokenizer and `extension_stats.json`.
        num_new_tokens: how many tokens to add (fewer when the corpus has no more pairs
            seen `min_frequency` times).
        terms: headword files (one term a line) whose Korean words compete for the budget.
        min_frequency: corpus occurrences a new merge (or missing character) needs.
        term_min_frequency: terms that start at least this many corpus words become one
            token each; 0 makes every term one token, also those the corpus never uses.
        term_priority: weight on the savings of the other terms when they compete with
            corpus merges (1: a term of frequency f counts as a pair seen f times).
        text_field: field of the text in JSONL records.
        heldout: held-out files for the before/after figures; when none are given,
            every `heldout_every`-th corpus document is held out of mining instead.
        heldout_every: see `heldout` (0 holds nothing out).
        overwrite: replace the files of an earlier extend-vocab run in `out` (listed
            by its `.medkor-extend-vocab.json`); other files in `out` are kept.
        strict_terms: refuse when the required terms do not fit `num_new_tokens`;
            by default `term_min_frequency` is raised to the smallest that fits.
    """

    base: str
    corpus: list[str]
    out: str
    num_new_tokens: int
    terms: list[str] = field(default_factory=list)
    min_frequency: int = 3
    term_min_frequency: int = 5  # 3 forced 1,810 rare terms into a 4,000 budget: 79 % of the gain (docs/benchmarks.md)
    term_priority: float = 1.0
    text_field: str = "text"
    heldout: list[str] = field(default_factory=list)
    heldout_every: int = 10
    overwrite: bool = False
    strict_terms: bool = False


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


def earlier_run_files(out: Path) -> set[str]:
    """Files an earlier extend-vocab run wrote into `out`, as its marker lists them; none without a marker (a file
    of the same name is the user's, whatever it holds: a folder written before the marker counts as not ours)."""
    return marker_files(out, COMMAND) or set()


def check_output_folder(out: Path, overwrite: bool, written: Optional[list[str]] = None) -> None:
    """Refuse, before any work, an `--out` whose files extend-vocab did not write and would have to replace.

    A link, a file, the working folder or a folder above it are never taken; a folder
    that is not empty needs `overwrite`, and then only the files an earlier run's
    marker lists are replaced: any other file of a name extend-vocab writes (`written`,
    or before the build every name it may write) is refused.
    """
    check_target(out)
    if not out.is_dir():
        return
    present = sorted(p.name for p in out.iterdir())
    if not present:
        return
    foreign = foreign_files(out, COMMAND, set(written) | {MARKER} if written is not None else WRITTEN_FILES | {MARKER})
    if foreign:
        raise OutputFolderError(foreign_files_message(out, COMMAND, foreign))
    if overwrite:
        return
    shown = ", ".join(present[:5]) + (f" and {len(present) - 5} more" if len(present) > 5 else "")
    if earlier_run_files(out):
        raise OutputFolderError(f"--out {out} already holds a tokenizer of an earlier extend-vocab run; pass "
                                "--overwrite to replace it (files extend-vocab did not write are kept)")
    raise OutputFolderError(f"--out {out}: folder is not empty ({shown}); choose a new folder, or pass "
                            "--overwrite to write beside these files (they are kept)")


def extend_vocab(cfg: ExtendConfig) -> dict[str, Any]:
    """Build the extended tokenizer, verify it and publish it as `cfg.out`; return its statistics.

    The tokenizer, its statistics and the marker are written into a staging folder
    beside `cfg.out` and verified there; only then is the folder swapped in whole
    (`medkor.run.publish`), so `cfg.out` never holds an unverified tokenizer, and a
    kill leaves the earlier folder as it was.
    """
    if cfg.num_new_tokens < 0:
        raise ValueError(f"--num_new_tokens must be >= 0, got {cfg.num_new_tokens}")
    if cfg.min_frequency < 1:
        raise ValueError(f"--min_frequency must be >= 1, got {cfg.min_frequency}")
    if cfg.term_priority < 0:
        raise ValueError(f"--term_priority must be >= 0, got {cfg.term_priority}")
    out = Path(cfg.out)
    check_output_folder(out, cfg.overwrite)
    hf_base, base = load_base(cfg.base)
    base_tok = base.to_tokenizer()

    docs = read_documents(cfg.corpus, cfg.text_field)
    if cfg.heldout:
        mining, heldout = docs, read_documents(cfg.heldout, cfg.text_field)
    else:
        mining, heldout = split_heldout(docs, cfg.heldout_every)
    words = space_word_counts(mining)
    plan = None
    if cfg.terms:
        plan = TermPlan.from_corpus(read_terms(cfg.terms), words, cfg.term_min_frequency, cfg.term_priority)

    selector, result, banned, plan = _select_fitting(base, base_tok, words, cfg, plan)
    extended = result.model.to_tokenizer()

    staging = staging_for(out)
    try:
        _save(hf_base, result.model, staging)
        report = _report(cfg, base, base_tok, extended, result, selector, plan, mining, heldout)
        report["tokens_banned_as_unreachable"] = sorted(banned)
        report["throughput"] = _throughput(base_tok, extended, heldout + mining)
        kill_point("extend-vocab:saved")
        _verify_saved(staging, base, result.new_ids, base_tok, heldout or mining[:200], shown_as=out)
        (staging / STATS_FILE).write_text(json.dumps(report, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
        written = [p.name for p in staging.iterdir()]
        write_marker(staging, COMMAND, written)
        check_output_folder(out, cfg.overwrite, written=written)  # what the build really wrote, checked again
        keep = {p.name for p in out.iterdir()} - earlier_run_files(out) if out.is_dir() else set()
        publish_folder(staging, out, keep=keep)
    except BaseException as err:
        discard(staging)
        # tokenizers' own writes raise a bare Exception("No space left on device (os error 28)")
        if isinstance(err, Exception) and not isinstance(err, PublishError) and no_space_left(err):
            raise PublishError(errno.ENOSPC, no_space_message(out, "the tokenizer")) from err
        raise
    return report


def _select_fitting(
    base: BpeModel, base_tok: Any, words: Counter, cfg: ExtendConfig, plan: Optional[TermPlan]
) -> tuple[MergeSelector, ExtensionResult, set[str], Optional[TermPlan]]:
    """`select_and_grow`; when the required terms do not fit and `strict_terms` is off, again with the
    smallest term frequency whose terms fit (the plan returned says which)."""
    try:
        return (*select_and_grow(base, base_tok, words, cfg.num_new_tokens, cfg.min_frequency, plan), plan)
    except TermBudgetError:
        if cfg.strict_terms or plan is None:
            raise
    table = WordTable(words, base_tok, dict(base.vocab), base.byte_fallback, base.unk_token)
    probe = MergeSelector(table, cfg.num_new_tokens, cfg.min_frequency, plan, forbidden=frozenset(base.special_contents()))
    for required_from in probe.fitting_frequencies():
        raised = replace(plan, required_from=required_from)
        try:
            return (*select_and_grow(base, base_tok, words, cfg.num_new_tokens, cfg.min_frequency, raised), raised)
        except TermBudgetError:
            continue
    raise AssertionError("a plan without required terms always fits")  # fitting_frequencies ends with that plan


def select_and_grow(
    base: BpeModel, base_tok: Any, words: Counter, budget: int, min_frequency: int,
    plan: Optional[TermPlan] = None, rounds: int = 4,
) -> tuple[MergeSelector, ExtensionResult, set[str]]:
    """Learn the new tokens and grow the model; a token whose own text does not encode to
    it (an earlier merge always takes its pieces) is banned and the selection redone.
    """
    banned: set[str] = set()
    forbidden = frozenset(base.special_contents())
    for _ in range(rounds):
        table = WordTable(words, base_tok, dict(base.vocab), base.byte_fallback, base.unk_token)
        selector = MergeSelector(table, budget, min_frequency, plan, frozenset(banned), forbidden)
        learned = selector.run()
        result = grow_bpe(base, learned)
        unreachable = set(stats.not_formed_alone(result.model.to_tokenizer(), learned.tokens))
        unreachable = {t for t in unreachable if learned.sources[t] != "term"}  # terms are reported instead
        if not unreachable:
            break
        banned |= unreachable
    return selector, result, banned


def _save(hf_base: Any, model: BpeModel, folder: Path) -> None:
    """Write the base's tokenizer files with the grown `tokenizer.json` into `folder` (a staging folder)."""
    hf_base.save_pretrained(folder)
    (folder / "tokenizer.json").write_text(model.to_json(), encoding="utf-8")
    # A SentencePiece file would describe the old vocabulary: never ship it.
    (folder / "tokenizer.model").unlink(missing_ok=True)


def _verify_saved(
    folder: Path, base: BpeModel, new_ids: dict[str, int], base_tok: Any, docs: list[str], shown_as: Path
) -> None:
    """Reload `folder` through transformers and check ids and round trip: what users will get.

    Documents the base already loses (no byte fallback, `<unk>`) are the base's
    failures, reported in the stats; only documents that the extension loses fail here.
    Errors name `shown_as`, the folder the tokenizer was meant for.
    """
    from transformers import AutoTokenizer

    out = shown_as
    loaded = AutoTokenizer.from_pretrained(str(folder))
    vocab = loaded.get_vocab()
    base_ids = {**base.vocab, **base.added_outside_vocab()}
    moved = [t for t, i in base_ids.items() if vocab.get(t) != i]
    lost = [t for t, i in new_ids.items() if vocab.get(t) != i]
    if moved or lost:
        raise RuntimeError(f"{out}: reloaded tokenizer changed ids of {moved[:5] or lost[:5]}")
    shared = len(vocab) - len(set(vocab.values()))
    if shared or len(loaded) != len(base_ids) + len(new_ids):
        raise RuntimeError(
            f"{out}: reloaded tokenizer has {len(loaded)} tokens on {len(set(vocab.values()))} ids; expected "
            f"{len(base_ids)} base + {len(new_ids)} new tokens, each on its own id"
        )
    base_lost = set(stats.round_trip_failures(base_tok, docs))
    for i, doc in enumerate(docs):
        back = loaded.decode(loaded(doc, add_special_tokens=False)["input_ids"])
        if back != doc and i not in base_lost:
            raise RuntimeError(
                f"{out}: the extension loses text the base keeps: {doc[:80]!r} -> {back[:80]!r} "
                f"({len(base_lost)} of {len(docs)} documents the base itself loses are not counted)"
            )


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


def _report(cfg, base, base_tok, extended, result, selector, plan, mining, heldout) -> dict[str, Any]:
    new = list(result.new_ids.items())
    ids = [i for _, i in new]

    def compare(docs: list[str]) -> Optional[dict[str, Any]]:
        if not docs:
            return None
        chars = sum(len(d) for d in docs)
        before, after = stats.measure(base_tok, docs), stats.measure(extended, docs, ids)
        return {
            "documents": len(docs),
            "characters": chars,
            "tokens_per_1k_chars": {"base": round(1000 * before["tokens"] / chars, 2),
                                    "extended": round(1000 * after["tokens"] / chars, 2)},
            "fewer_tokens_ratio": round(before["tokens"] / after["tokens"], 4) if after["tokens"] else None,
            "round_trip_failures": stats.round_trip_report(base_tok, extended, docs, before["lost"], after["lost"]),
            "new_tokens_used": after["used"],
        }

    corpus, held = compare(mining), compare(heldout)
    learned = selector.learned
    return {
        "base": cfg.base,
        "config": asdict(cfg),
        "base_size": base.size,
        "extended_size": result.model.size,
        "tokens_added": len(new),
        "tokens_added_by_source": dict(Counter(learned.sources.values())),
        "first_new_id": new[0][1] if new else None,
        "last_new_id": new[-1][1] if new else None,
        "merges": {
            "base": len(base.merges),
            "extended": len(result.model.merges),
            "learned": result.learned_merges,
            "into_base_tokens": learned.free_merges,
            "alternative": result.alternative_merges,
        },
        "corpus": corpus,
        "heldout": held,
        "terms": _term_report(plan, selector, extended, heldout or mining, cfg.term_min_frequency) if plan else None,
        "usage": {
            "tokens_checked": len(new),
            "tokens_not_formed_alone": stats.not_formed_alone(extended, [t for t, _ in new]),
            "tokens_used_on_corpus": corpus["new_tokens_used"],
            "tokens_used_on_heldout": held["new_tokens_used"] if held else None,
        },
        "new_tokens": [
            {"token": t, "id": i, "source": learned.sources[t], "saved_on_corpus": learned.saved[t]} for t, i in new
        ],
        "examples": stats.examples(base_tok, extended, heldout or mining),
    }


def _term_report(
    plan: TermPlan, selector: MergeSelector, extended: Any, docs: list[str], asked_from: int
) -> dict[str, Any]:
    """What the terms cost and saved, and which became single tokens; `required_from` is the
    frequency used, `required_from_asked` the `--term_min_frequency` given (raised when too few fit)."""
    learned = selector.learned
    single = set(plan.frequency) - set(stats.not_formed_alone(extended, list(plan.frequency)))
    required = plan.required()
    spent = [t for t, s in learned.sources.items() if s in ("term", "term_part")]
    seen, whole = stats.word_starts_kept_whole(extended, docs, single)
    return {
        "terms": len(plan.frequency),
        "seen_in_corpus": sum(1 for n in plan.frequency.values() if n > 0),
        "required_from": plan.required_from,
        "required_from_asked": asked_from,
        "required_from_raised": plan.required_from != asked_from,
        "required_at_asked_frequency": sum(1 for n in plan.frequency.values() if n >= asked_from),
        "priority": plan.priority,
        "required": len(required),
        "required_single_token": sum(1 for t in required if t in single),
        "required_not_single_token": sorted(t for t in required if t not in single),
        "single_token": len(single),
        "single_token_by_source": dict(Counter(learned.sources.get(t, "base") for t in single)),
        "tokens_spent": len(spent),
        "tokens_saved_on_corpus": sum(learned.saved[t] for t in spent),
        "unbuildable": sorted(selector.unbuildable),
        "heldout_word_starts_with_term": seen,
        "heldout_word_starts_kept_whole": whole,
    }
