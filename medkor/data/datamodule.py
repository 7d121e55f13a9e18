"""`MedKorDataModule`: the thin Lightning edge of the cache.

`prepare_data` finds or builds the caches (once per node, or once in all with
`prepare_data_per_node: false` on a shared file system) and sets no state;
`setup` verifies the manifests and memory-maps the rows on every rank. Both ask
`DataPlan` (plain Python) for the caches of the trainer's stage only: `validate` and
`test` neither need nor read the training corpus.
"""

from __future__ import annotations

import logging
from typing import Any, Optional

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader

from medkor.data.cache import CacheRequest, CacheResult, open_cache
from medkor.data.collate import Collator
from medkor.data.encode import OnLongExample
from medkor.data.formats import DEFAULT_TEMPLATE, LossOn
from medkor.data.leak import LeakReport
from medkor.data.lock import DEFAULT_TIMEOUT
from medkor.data.rows import CacheRows
from medkor.data.loader import ResumableDataLoader
from medkor.data.plan import DataPlan, ensure_log_handler, stage_of
from medkor.data.sources import DataError, OnBadRecord
from medkor.data.mixture import Mixture, ReplayMix, build_mixture, training_order
from medkor.eval.prompts import PromptStyle

log = logging.getLogger("medkor.data")


class MedKorDataModule(pl.LightningDataModule):
    """Korean medical text, tokenized once into packed rows and cached by content.

    Args:
        data_dir: Folder with `train.jsonl` (or `train-*.jsonl`, `train/*.jsonl`) and
            optionally `validation.jsonl` and `test.jsonl` (same patterns), one JSON
            object per line. Without a test file, `medkor test` uses the validation rows.
        tokenizer_path: Tokenizer folder or hub id; linked from `model.tokenizer_path`.
        format: Record format (docs/stages.md): `text` (continued pretraining on the
            `text_field` string), `dictionary` (term and definition through `template`),
            `chat` (prompt/completion or messages, loss on the assistant turns only) or
            `mcq` (KorMedMCQA-schema records as the evaluation's prompt, then the answer letter).
        text_field: `text`: field of each record that holds the document text.
        term_field: `dictionary`: field holding the term.
        definition_field: `dictionary`: field holding the definition.
        template: `dictionary`: format string with `{term}` and `{definition}`.
        loss_on: `dictionary`: `all` tokens learned, or `completion` (from the definition on).
        prompt_field: `chat`: field of the user prompt.
        completion_field: `chat`: field of the learned answer.
        messages_field: `chat`: field of a `{role, content}` list (records without `prompt_field`).
        prompt_style: `mcq`: `harness` or `chat`, the prompt `KorMedMCQAEval` scores with.
        cot: `mcq`: put the record's `cot` text before the answer letter where it has one.
        max_length: Tokens per row.
        packing: `text`: concatenate documents (BOS ... EOS each) and cut rows of exactly
            `max_length`; the remainder becomes one shorter final row, so no token is
            lost. Other formats: several whole examples per row (best-fit decreasing),
            never one cut in two. False: one document (example) per row; a text document
            longer than a row is split into `max_length` pieces. Default: true.
        on_long_example: Formats other than `text`: an example longer than `max_length`
            is an `error` naming file:line, or is `skip`ped and counted in the manifest.
        val_sets: Further validation sets by name, each `{path: FILE_OR_FOLDER, format:
            ..., <format options>, max_samples}` (default format `text`), logged as
            `val/<name>/loss`; the `validation*.jsonl` of `data_dir` stays `val/loss`.
        replay: An earlier stage's training data mixed into the training order (the
            forgetting guard): `{path: FILE_OR_FOLDER (its train*.jsonl), format: ...,
            <format options>, ratio: 0.2, mode: fixed|metric}`. `fixed`: that share of
            every epoch's positions are replay rows; `metric`: replay is off until a
            `medkor.callbacks.ForgettingGuard` switches it by a watched validation loss.
            Deterministic given `seed`, and exact on resume (switches are in checkpoints).
        sources: Several named training sources instead of `data_dir`'s train files, each
            `{name, path: FILE_FOLDER_OR_GLOB, format: ..., <format options>, max_samples}` and one of
            `weight` (a share of the weighted sources' rows, or tokens with `weight_by: tokens`), `rows` or
            `tokens` (exactly that many per epoch)
            or `repeat` (all its rows, N times per epoch). Each is cached (its own key) and leak-checked;
            in every prefix of the order each source has its share to within one row (docs/stages.md).
        max_samples: Keep at most this many documents per split (in file order).
        cache_dir: Where caches live; default `<data_dir>/.cache`.
        overwrite_cache: Rebuild even when a valid cache exists.
        num_proc: Tokenizer processes for a build, each tokenizing pieces (whole lines,
            about 4 MiB) on one core. Default: every usable core. 1: tokenize in this
            process (the tokenizer's own threads still use every core, but the Python
            side then competes with them). A small split uses fewer processes.
        batch_size: Rows per batch.
        num_workers: DataLoader worker processes.
        val_fraction: Without a validation file, move this fraction of the training
            documents (chosen by a seeded hash of their content) to validation.
        seed: Seed of the validation split and of the training shuffle.
        on_bad_record: `error` stops at the first bad line (file:line in the message);
            `skip` drops it and counts it in the manifest.
        prepare_data_per_node: Build caches on every node (node-local disks) or once
            in all (false: a shared file system).
        eval_source: KorMedMCQA source the run is scored on (`KorMedMCQAEval.source`):
            the training records are checked against its questions (exact and n-gram
            overlap, reported by `prepare_data` with file:line); training on its very
            files, or on records that hold one of its questions, is refused. Null: no check.
        eval_split: Split of `eval_source` that is scored.
        eval_subsets: Subsets of `eval_source` that are scored (default all).
        allow_eval_overlap: Train even when training records hold evaluation questions
            (they are still reported).
        leak_ngram: Characters per n-gram of the overlap measure.
        leak_threshold: Share of a question's n-grams found in one record that is reported as overlap.
        lock_timeout: Seconds a process waits for another process's build of the same cache (on any
            node) before it stops with a line naming the holder (host, pid, since) and the lock file.
            A holder that died is taken over without waiting this long (docs/distributed.md).
    """

    def __init__(
        self,
        data_dir: str = "data",
        tokenizer_path: Optional[str] = None,
        format: str = "text",
        text_field: str = "text",
        term_field: str = "term",
        definition_field: str = "definition",
        template: str = DEFAULT_TEMPLATE,
        loss_on: LossOn = "all",
        prompt_field: str = "prompt",
        completion_field: str = "completion",
        messages_field: str = "messages",
        prompt_style: PromptStyle = "harness",
        cot: bool = False,
        max_length: int = 2048,
        packing: Optional[bool] = None,
        on_long_example: OnLongExample = "error",
        val_sets: Optional[dict[str, Any]] = None,
        replay: Optional[dict[str, Any]] = None,
        sources: Optional[list[dict[str, Any]]] = None,
        max_samples: Optional[int] = None,
        cache_dir: Optional[str] = None,
        overwrite_cache: bool = False,
        num_proc: Optional[int] = None,
        batch_size: int = 8,
        num_workers: int = 0,
        val_fraction: float = 0.0,
        seed: int = 42,
        on_bad_record: OnBadRecord = "error",
        prepare_data_per_node: bool = True,
        eval_source: Optional[str] = None,
        eval_split: str = "test",
        eval_subsets: Optional[list[str]] = None,
        allow_eval_overlap: bool = False,
        leak_ngram: int = 13,
        leak_threshold: float = 0.5,
        lock_timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        options = {k: v for k, v in locals().items() if k not in ("self", "__class__")}
        super().__init__()
        self.plan = DataPlan.from_options(options)
        plan = self.plan
        self.spec, self.val_sets, self.replay = plan.spec, plan.val_sets, plan.replay
        self.replay_mix = (
            ReplayMix(self.replay.ratio, initially_on=self.replay.mode == "fixed") if self.replay is not None else None
        )
        self.mixture: Optional[Mixture] = None  # data.sources: made in setup, when the rows are known
        self.allow_eval_overlap = allow_eval_overlap
        self.data_dir = data_dir
        self.tokenizer_path = tokenizer_path
        self.format = format
        self.max_length = max_length
        self.cache_dir = plan.cache_dir
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.prepare_data_per_node = prepare_data_per_node
        self.datasets: dict[str, CacheRows] = {}
        self.tokens: dict[str, int] = {}
        self.pad_token_id = 0
        ensure_log_handler()

    def cache_requests(self, stage: str = "fit") -> list[CacheRequest]:
        """One request per split that `stage` uses (`DataPlan.requests`)."""
        return self.plan.requests(stage)

    def check_leaks(self) -> Optional[LeakReport]:
        """Compare the training records with the evaluation questions and log what overlaps.

        Refuses training on the files the evaluation scores (unless `allow_eval_overlap`).
        None without `eval_source`.
        """
        return self.plan.check_leaks(log)

    def _stage(self) -> str:
        # prepare_data gets no stage argument: the trainer's running function says which one
        return stage_of(self.trainer.state.fn if self.trainer is not None else None)

    def prepare_caches(self, stage: str = "fit") -> list[CacheResult]:
        """Find or build every cache `stage` uses (all or none published); log how full each one's rows
        are and (fit) any overlap of the training records with the evaluation."""
        return self.plan.prepare(stage, log)[0]

    def prepare_data(self) -> None:
        _, report = self.plan.prepare(self._stage(), log)
        if report is not None and report.exact and not self.allow_eval_overlap:
            first = report.exact[0]
            raise DataError(
                f"{first.where}: holds KorMedMCQA {first.subset} question #{first.index} that the run is scored on "
                f"({len(report.exact)} such records in all, listed above); remove them, or set "
                "data.allow_eval_overlap: true to train anyway"
            )

    def setup(self, stage: Optional[str] = None) -> None:
        for request in self.cache_requests(stage_of(stage)):
            rows, manifest = open_cache(request)
            self.datasets[request.split] = rows
            self.pad_token_id = manifest["pad_token_id"]
            self.tokens[request.split] = int(manifest.get("tokens", 0))
        if self.plan.sources and self.mixture is None and all(s.split in self.datasets for s in self.plan.sources):
            self.mixture, lines = build_mixture(self.plan.sources, [len(self.datasets[s.split]) for s in self.plan.sources],
                                                [self.tokens[s.split] for s in self.plan.sources])
            for line in lines:
                rank_zero_info(f"[medkor] {line}")

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        if split not in self.datasets and not (shuffle and self.mixture is not None):  # sources replace train
            raise RuntimeError(f"no {split!r} rows loaded; call setup() first")
        rows: Any = self.datasets.get(split)
        common = dict(
            batch_size=self.batch_size,
            collate_fn=Collator(self.pad_token_id),
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            # the loader's own generator seeds its workers, so iterating it draws nothing
            # from the global RNG that dropout uses: a resumed run's draws match
            generator=torch.Generator().manual_seed(self.seed),
        )
        if not shuffle:
            return DataLoader(rows, **common)
        world, rank = (self.trainer.world_size, self.trainer.global_rank) if self.trainer else (1, 0)
        accumulate = int(self.trainer.accumulate_grad_batches) if self.trainer else 1
        # one global order cut into per-rank slices of each global batch (medkor.data.sampler)
        parts = [rows] + ([self.datasets["replay"]] if self.replay_mix is not None and "replay" in self.datasets else [])
        mix: Optional[Mixture] = self.replay_mix
        if self.mixture is not None:
            parts, mix = [self.datasets[s.split] for s in self.plan.sources], self.mixture
        rows, sampler = training_order(parts, self.seed, mix, world, rank, self.batch_size, accumulate)
        return ResumableDataLoader(rows, sampler=sampler, **common)

    def state_dict(self) -> dict[str, Any]:
        """The replay switches so far (a resumed run mixes exactly as the uninterrupted one)."""
        if self.mixture is not None:
            return {"mixture": self.mixture.state_dict()}
        return {"replay": self.replay_mix.state_dict()} if self.replay_mix is not None else {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if self.mixture is not None:
            if "mixture" not in state_dict:
                raise ValueError("the checkpoint was trained without data.sources; resume without them or start a new run")
            self.mixture.load_state_dict(state_dict["mixture"])
        if self.replay_mix is not None:
            if "replay" not in state_dict:
                raise ValueError("the checkpoint was trained without data.replay; resume without it or start a new run")
            self.replay_mix.load_state_dict(state_dict["replay"])

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_splits(self) -> list[str]:
        """The validation loaders' splits, in loader order: `validation` (if any), then each named set."""
        named = [val_set.split for val_set in self.val_sets]
        return [split for split in ["validation", *named] if split in self.datasets or not self.datasets]

    def metric_names(self, stage: str) -> list[str]:
        """The loss name of each loader of `stage` (`val`: `val/loss`, then `val/<name>/loss`)."""
        if stage != "val":
            return [f"{stage}/loss"]
        names = {val_set.split: val_set.name for val_set in self.val_sets}
        return [f"val/{names[split]}/loss" if split in names else "val/loss" for split in self.val_splits()]

    def val_dataloader(self) -> Any:
        loaders = [self._loader(split, shuffle=False) for split in self.val_splits() if split in self.datasets]
        return loaders[0] if len(loaders) == 1 else loaders

    def test_dataloader(self) -> Any:
        if "test" in self.datasets:
            return self._loader("test", shuffle=False)
        if "validation" in self.datasets:
            rank_zero_info(f"[medkor] no test*.jsonl in {self.data_dir}: testing on the validation split")
        return self.val_dataloader()
