"""Which caches a stage needs, from the data options of a run: plain Python, no Lightning.

`DataPlan.from_options` checks the options `MedKorDataModule` takes (the datamodule is
built on it) and `requests(stage)` lists the cache requests of a stage:

- `fit`: train, validation (its files, or carved from train by `val_fraction`), test
  when it has files, replay, and every named validation set;
- `validate`: validation and the named sets only; no training file is read unless the
  validation share is carved from it;
- `test`: the test files, or without them what `validate` uses.

`medkor prepare` builds the `fit` set; `validate` and `test` never tokenize or scan
the training corpus.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional

from medkor.data.cache import CacheRequest, CacheResult, ensure_caches
from medkor.data.fingerprint import resolve_tokenizer
from medkor.data.formats import FORMATS, FormatSpec
from medkor.data.leak import LeakCheck, LeakReport, check_sources
from medkor.data.lock import DEFAULT_TIMEOUT
from medkor.data.mix_sources import MixSource, parse_sources
from medkor.data.sources import DataError, Selection, require_train_files, split_files
from medkor.data.val_sets import ReplaySource, ValSet, parse_replay, parse_val_sets

STAGES = ("fit", "validate", "test")
SPEC_OPTIONS = ("format", "text_field", "term_field", "definition_field", "template", "loss_on", "prompt_field",
                "completion_field", "messages_field", "prompt_style", "cot")


def describe(result: CacheResult) -> str:
    """One line a person reads: rows, tokens, how full the rows are, how much of it is learned."""
    manifest = result.manifest
    learned = manifest.get("learned_tokens")
    share = f", {learned / max(result.tokens, 1):.1%} of them learned" if learned is not None else ""
    skipped = manifest.get("skipped", 0) + manifest.get("long_skipped", 0)
    return (
        f"{result.split}: {result.rows:,} rows of {manifest.get('max_length')}, {result.tokens:,} tokens{share}, "
        f"fill rate {result.fill_rate:.1%} ({result.status})" + (f", {skipped} records skipped" if skipped else "")
    )


def ensure_log_handler() -> None:
    """hit/miss lines must be visible without the user configuring logging"""
    logger = logging.getLogger("medkor")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("[medkor] %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False


def stage_of(name: Optional[str]) -> str:
    """The data stage of a trainer function or `setup` stage: `validate`, `test`, else `fit`."""
    value = str(getattr(name, "value", name) or "fit")
    return value if value in STAGES else "fit"


@dataclass
class DataPlan:
    """The checked data options of a run and the cache requests they make."""

    data_dir: str
    tokenizer_path: Optional[str]
    spec: FormatSpec
    val_sets: list[ValSet]
    replay: Optional[ReplaySource]
    leak_check: Optional[LeakCheck]
    allow_eval_overlap: bool
    max_length: int
    packing: bool
    on_long_example: str
    max_samples: Optional[int]
    cache_dir: str
    overwrite_cache: bool
    num_proc: Optional[int]
    val_fraction: float
    seed: int
    on_bad_record: str
    lock_timeout: float = DEFAULT_TIMEOUT
    prepare_data_per_node: bool = True
    sources: tuple[MixSource, ...] = ()  # data.sources: the training rows instead of data_dir's train files

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> "DataPlan":
        """Check the datamodule's options (every one given, as its `__init__` receives them)."""
        o = dict(options)
        if o["format"] not in FORMATS:
            raise ValueError(f"format {o['format']!r} is not supported; choose one of {', '.join(FORMATS)}")
        if o["on_long_example"] not in ("error", "skip"):
            raise ValueError(f"on_long_example must be 'error' or 'skip', got {o['on_long_example']!r}")
        spec = FormatSpec(**{name: o[name] for name in SPEC_OPTIONS})
        leak_check = (LeakCheck(o["eval_source"], o["eval_split"], o["eval_subsets"], o["leak_ngram"],
                                o["leak_threshold"]) if o["eval_source"] else None)
        if not 0.0 <= o["val_fraction"] < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {o['val_fraction']}")
        if o["max_samples"] is not None and o["max_samples"] < 1:
            raise ValueError(f"max_samples must be positive, got {o['max_samples']}")
        if o["num_proc"] is not None and o["num_proc"] < 1:
            raise ValueError(f"num_proc must be at least 1 (or null for every usable core), got {o['num_proc']}")
        lock_timeout = o.get("lock_timeout", DEFAULT_TIMEOUT)
        if isinstance(lock_timeout, bool) or not isinstance(lock_timeout, (int, float)) or lock_timeout < 0:
            raise ValueError(f"lock_timeout must be a number of seconds >= 0 (every wait is bounded), got {lock_timeout!r}")
        data_dir = o["data_dir"]
        sources = tuple(parse_sources(o.get("sources"), spec))
        if sources and o["replay"]:
            raise DataError("data.replay and data.sources cannot be combined: list the replayed data as a source "
                            "(a weight, raised by ForgettingGuard's source and raise_to)")
        if sources and o["val_fraction"] > 0:
            raise DataError("data.val_fraction carves validation from data_dir's train files, which data.sources "
                            "replaces; give data_dir a validation.jsonl (or data.val_sets) instead")
        return cls(
            data_dir=data_dir,
            tokenizer_path=o["tokenizer_path"],
            spec=spec,
            val_sets=parse_val_sets(o["val_sets"], spec),
            replay=parse_replay(o["replay"], spec),
            leak_check=leak_check,
            allow_eval_overlap=o["allow_eval_overlap"],
            max_length=o["max_length"],
            packing=True if o["packing"] is None else o["packing"],
            on_long_example=o["on_long_example"],
            max_samples=o["max_samples"],
            cache_dir=o["cache_dir"] if o["cache_dir"] is not None else str(Path(data_dir) / ".cache"),
            overwrite_cache=o["overwrite_cache"],
            num_proc=o["num_proc"],
            val_fraction=o["val_fraction"],
            seed=o["seed"],
            on_bad_record=o["on_bad_record"],
            lock_timeout=float(lock_timeout),
            prepare_data_per_node=o.get("prepare_data_per_node", True),
            sources=sources,
        )

    def selections(self, stage: str = "fit") -> dict[str, Selection]:
        """The documents of each split `stage` uses, by split name."""
        stage = stage_of(stage)
        common = dict(spec=self.spec, on_bad_record=self.on_bad_record, max_samples=self.max_samples, seed=self.seed)
        validation = split_files(self.data_dir, "validation")
        test = split_files(self.data_dir, "test")
        selections: dict[str, Selection] = {}
        if stage == "fit" and not self.sources:
            train = require_train_files(self.data_dir)
            selections["train"] = Selection(files=train, **common)
        if stage == "test" and test:
            return {"test": Selection(files=test, **common)}
        if validation:
            selections["validation"] = Selection(files=validation, **common)
        elif self.val_fraction > 0:
            train = require_train_files(self.data_dir)
            if stage == "fit":
                selections["train"] = Selection(files=train, val_fraction=self.val_fraction, **common)
            selections["validation"] = Selection(files=train, val_fraction=self.val_fraction, take_validation=True,
                                                  **common)
        if stage == "fit":
            if test:
                selections["test"] = Selection(files=test, **common)
            for source in self.sources:  # each its own cache (key), format and max_samples
                selections[source.split] = Selection(
                    files=list(source.files), spec=source.spec, on_bad_record=self.on_bad_record,
                    max_samples=source.max_samples, seed=self.seed,
                )
            if self.replay is not None:
                selections["replay"] = Selection(
                    files=self.replay.files, spec=self.replay.spec, on_bad_record=self.on_bad_record,
                    max_samples=self.replay.max_samples, seed=self.seed,
                )
        for val_set in self.val_sets:
            selections[val_set.split] = Selection(
                files=val_set.files, spec=val_set.spec, on_bad_record=self.on_bad_record,
                max_samples=val_set.max_samples, seed=self.seed,
            )
        if not selections:
            test_hint = "test.jsonl (or test-*.jsonl), " if stage == "test" else ""
            raise DataError(
                f"{self.data_dir}: nothing to {stage} on: no {test_hint}validation.jsonl (or validation-*.jsonl, "
                "validation/*.jsonl), data.val_fraction is 0 and data.val_sets is empty; add a validation file "
                "or name a set in data.val_sets"
            )
        return selections

    def requests(self, stage: str = "fit") -> list[CacheRequest]:
        """One cache request per split of `stage` (see the module's docstring)."""
        if not self.tokenizer_path:
            raise ValueError("data.tokenizer_path is not set (it is linked from model.tokenizer_path)")
        selections = self.selections(stage)
        tokenizer = resolve_tokenizer(self.tokenizer_path)  # a hub id: its local snapshot, asked once per process
        return [
            CacheRequest(
                split=split,
                selection=selection,
                data_dir=Path(self.data_dir),
                cache_dir=Path(self.cache_dir),
                tokenizer_path=tokenizer,
                max_length=self.max_length,
                packing=self.packing,
                on_long_example=self.on_long_example,
                num_proc=self.num_proc,
                overwrite=self.overwrite_cache,
                lock_timeout=self.lock_timeout,
            )
            for split, selection in selections.items()
        ]

    def check_leaks(self, log: logging.Logger) -> Optional[LeakReport]:
        """Training records against the scored questions (fit only); None without `eval_source`."""
        if self.leak_check is None:
            return None
        sources = [(list(s.files), s.spec) for s in self.sources] or [(require_train_files(self.data_dir), self.spec)]
        if self.replay is not None:
            sources.append((self.replay.files, self.replay.spec))
        return check_sources(sources, self.leak_check, Path(self.cache_dir), Path(self.data_dir),
                             self.allow_eval_overlap, log)

    def prepare(self, stage: str, log: logging.Logger) -> tuple[list[CacheResult], Optional[LeakReport]]:
        """Find or build the caches of `stage` and log each; for `fit`, first the leak report of what trains."""
        report = self.check_leaks(log) if stage_of(stage) == "fit" else None  # only what trains is scanned
        results = ensure_caches(self.requests(stage))
        for result in results:
            log.info(describe(result))
        return results, report
