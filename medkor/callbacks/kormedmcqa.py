"""``KorMedMCQAEval``: the Lightning edge of :mod:`medkor.eval` (when to evaluate, sync, log, write)."""

from __future__ import annotations

import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Optional

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info

from medkor.callbacks.preemption import between_batches
from medkor.eval.distributed import gather_objects, max_over_ranks, sync_counts
from medkor.eval.kormedmcqa import EvalSettings, KorMedMCQAEvaluator, Scoring
from medkor.eval.predictions import (
    METRIC_PREFIX,
    accuracy_metrics,
    count_correct,
    count_nonfinite,
    evaluation_entry,
    predictions_filename,
    sort_records,
    write_predictions,
    write_summary,
)
from medkor.eval.prompts import PromptStyle
from medkor.eval.questions import HUB_ID, QuestionSet
from medkor.run.report import evaluation_line, last_step_epoch, say, validation_losses


class KorMedMCQAEval(Callback):
    """KorMedMCQA accuracy: a baseline before the first optimizer step, then after every epoch.

    Uses ``pl_module.model`` (a Hugging Face causal LM, possibly peft-wrapped) and
    ``pl_module.tokenizer``. Logs ``kormedmcqa/acc``, ``kormedmcqa/<subset>/acc`` and
    ``kormedmcqa/seconds`` and ``kormedmcqa/nonfinite`` (questions whose letter log-probabilities
    are not all finite; when any is, that evaluation logs no accuracy); writes
    ``<run>/kormedmcqa/<stage>-epoch<E>-step<S>.jsonl`` (one object per question) and
    ``<run>/kormedmcqa/summary.json`` (see ``docs/kormedmcqa.md``).

    Args:
        source: Hub id (``sean0042/KorMedMCQA``) or a local folder ``DIR/<subset>/<split>.jsonl``
            (or ``.csv``/``.parquet``), or one file with a ``subject`` column or a subset in its name.
            Answers may be 1-5 or A-E.
        subsets: Subsets to evaluate (default: doctor, nurse, pharm, dentist).
        split: Split to evaluate.
        max_samples: Keep only the first N questions of each subset (default: all).
        num_fewshot: Worked examples from the ``fewshot`` split before each question.
        prompt: ``harness`` (the lm-evaluation-harness prompt) or ``chat`` (the same text in the
            tokenizer's chat template).
        scoring: ``logprob`` (log-probability of each option letter as the next token, one
            forward pass per batch) or ``generate`` (greedy generation with the harness's stop
            strings and answer extraction; slow, for comparison with published numbers).
        batch_size: Questions per forward pass (or per generate call).
        run_baseline: Evaluate once before the first optimizer step (logged at that step, 0 for
            a fresh run).
        rerun_baseline_on_resume: Evaluate the baseline again when resuming from a checkpoint
            that already holds one (default: keep the stored baseline and log it again).
        every_n_epochs: Evaluate after every N training epochs (0: never).
        every_n_steps: Also evaluate every N optimizer steps (default: never).
        max_new_tokens: Generation budget per question (``generate`` only).
        run_on_validate: Evaluate in ``medkor validate``.
        run_on_test: Evaluate in ``medkor test``.
        write_predictions: Write the predictions file of every evaluation.
    """

    def __init__(
        self,
        source: str = HUB_ID,
        subsets: Optional[list[str]] = None,
        split: str = "test",
        max_samples: Optional[int] = None,
        num_fewshot: int = 0,
        prompt: PromptStyle = "harness",
        scoring: Scoring = "logprob",
        batch_size: int = 16,
        run_baseline: bool = True,
        rerun_baseline_on_resume: bool = False,
        every_n_epochs: int = 1,
        every_n_steps: Optional[int] = None,
        max_new_tokens: int = 1024,
        run_on_validate: bool = True,
        run_on_test: bool = True,
        write_predictions: bool = True,
    ) -> None:
        if every_n_epochs < 0 or (every_n_steps is not None and every_n_steps < 1):
            raise ValueError("every_n_epochs must be >= 0 and every_n_steps None or >= 1")
        self.settings = EvalSettings(
            source=str(source),
            subsets=list(subsets) if subsets is not None else None,
            split=split,
            max_samples=max_samples,
            num_fewshot=num_fewshot,
            prompt=prompt,
            scoring=scoring,
            batch_size=batch_size,
            max_new_tokens=max_new_tokens,
        )
        self.evaluator = KorMedMCQAEvaluator(self.settings)
        self.run_baseline = run_baseline
        self.rerun_baseline_on_resume = rerun_baseline_on_resume
        self.every_n_epochs = every_n_epochs
        self.every_n_steps = every_n_steps
        self.run_on_validate = run_on_validate
        self.run_on_test = run_on_test
        self.write_predictions = write_predictions
        self.baseline: Optional[dict[str, Any]] = None
        self.evaluations: list[dict[str, Any]] = []
        self._last_fit_step: Optional[int] = None
        self._checkpoint_position: Optional[tuple[int, int]] = None  # (epoch, step) of a loaded checkpoint
        self._repeats_said = False  # the repeated questions are named once: every evaluation scores the same set
        self._running: Optional[dict[str, Any]] = None  # the evaluation under way (a checkpoint saved in it owes it)
        self._owed: Optional[dict[str, Any]] = None  # a training evaluation a stopped run did not finish

    # ---- checkpoint state: the baseline and history survive a resume
    def state_dict(self) -> dict[str, Any]:
        state = {"baseline": self.baseline, "evaluations": list(self.evaluations)}
        if self._running is not None and self._running["stage"] == "fit":
            state["interrupted"] = dict(self._running)  # saved mid-evaluation (a signal): the resumed run redoes it
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.baseline = state_dict.get("baseline")
        self.evaluations = list(state_dict.get("evaluations", []))
        self._owed = state_dict.get("interrupted")

    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]) -> None:
        # validate/test restore no loop state: the checkpoint's epoch and step name its evaluation, as fit named it
        self._checkpoint_position = (last_step_epoch(checkpoint), int(checkpoint.get("global_step", 0)))

    # ---- hooks
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        # read and check the questions before the model loads (configure_model comes after setup):
        # an empty subset or a file in another encoding then costs seconds, not a model load
        scheduled = {"fit": self.run_baseline or bool(self.every_n_epochs) or bool(self.every_n_steps),
                     "validate": self.run_on_validate, "test": self.run_on_test}
        if scheduled.get(stage):
            self._question_set(trainer)

    def _question_set(self, trainer: pl.Trainer) -> QuestionSet:
        """The evaluator's questions (loaded on first use); repeated questions are named once per run."""
        question_set = self.evaluator.question_set
        if not self._repeats_said:
            self._repeats_said = True
            repeats = question_set.repeats_line()
            if repeats:
                say(trainer, repeats)
        return question_set

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # on_train_start (not on_fit_start): every strategy has restored this callback's state
        # and the global step by now, and no optimizer step has run yet.
        owed, self._owed = self._owed, None
        if owed is not None and owed.get("step") == trainer.global_step:
            self._evaluate(trainer, pl_module, "fit", position=(int(owed["epoch"]), int(owed["step"])))
        if not self.run_baseline:
            return
        if self.baseline is not None and not self.rerun_baseline_on_resume:
            # resumed: a run continuing in its own folder has the baseline's row already;
            # one resumed into a new folder logs it again so its metrics start from it
            run_dir = Path(trainer.log_dir or trainer.default_root_dir) / METRIC_PREFIX  # collective: all ranks
            if not (run_dir / "summary.json").is_file():
                metrics = {**self._entry_metrics(self.baseline), "epoch": float(self.baseline.get("epoch", 0))}
                self._log_direct(trainer, metrics, self.baseline["step"])
            return
        self._evaluate(trainer, pl_module, "baseline")

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        step = trainer.global_step
        # with gradient accumulation several batches end on the same step: evaluate once
        if self.every_n_steps and step > 0 and step % self.every_n_steps == 0 and step != self._last_fit_step:
            self._evaluate(trainer, pl_module, "fit")

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        due = self.every_n_epochs and (trainer.current_epoch + 1) % self.every_n_epochs == 0
        if due and trainer.global_step != self._last_fit_step:
            self._evaluate(trainer, pl_module, "fit")

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.run_on_validate and trainer.state.fn == "validate" and not trainer.sanity_checking:
            self._evaluate(trainer, pl_module, "validate")

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.run_on_test and trainer.state.fn == "test":
            self._evaluate(trainer, pl_module, "test")

    # ---- one evaluation
    def _evaluate(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str,
                  position: Optional[tuple[int, int]] = None) -> dict[str, Any]:
        self._running = {"stage": stage, "epoch": trainer.current_epoch, "step": trainer.global_step}
        if position is not None:  # (epoch, step) of an interrupted evaluation done now
            self._running.update(epoch=position[0], step=position[1])
        model, tokenizer = _model_and_tokenizer(pl_module)
        run_dir = Path(trainer.log_dir or trainer.default_root_dir) / METRIC_PREFIX  # collective: all ranks
        start = time.perf_counter()
        # under FSDP the parameters are flat shards outside a step: gather them for the evaluation
        unsharded = getattr(pl_module, "unsharded", None)
        with unsharded() if callable(unsharded) else nullcontext(model) as model:
            records = self.evaluator.evaluate(
                model,
                tokenizer,
                rank=trainer.global_rank,
                world_size=trainer.world_size,
                # a stop signal (SaveOnPreemption) is acted on after the current batch, not after all of them
                forward_context=between_batches(trainer, trainer.precision_plugin.forward_context),
            )
        subsets = self.evaluator.subsets
        question_set = self._question_set(trainer)
        # one sync for both: correct/total and non-finite/total per subset
        nonfinite_keys = {f"nonfinite/{subset}": subset for subset in subsets}
        local = count_correct(records, subsets)
        local_nonfinite = count_nonfinite(records, subsets)
        synced = sync_counts(
            {**local, **{key: (local_nonfinite[s], local[s][1]) for key, s in nonfinite_keys.items()}},
            device=pl_module.device,
        )
        counts = {subset: synced[subset] for subset in subsets}
        nonfinite = {subset: synced[key][0] for key, subset in nonfinite_keys.items()}
        gathered = gather_objects(records) if self.write_predictions else []
        seconds = max_over_ranks(time.perf_counter() - start, device=pl_module.device)

        self._running = None
        epoch, step = position or (trainer.current_epoch, trainer.global_step)
        standalone = stage in ("validate", "test")
        if standalone and self._checkpoint_position is not None:
            epoch, step = self._checkpoint_position
        name = predictions_filename(stage, epoch, step) if self.write_predictions else None
        entry = evaluation_entry(stage, epoch, step, counts, seconds, name, nonfinite=nonfinite,
                                 duplicates=question_set.dropped())
        if standalone:
            entry["checkpoint"] = str(trainer.ckpt_path) if trainer.ckpt_path else None
        if entry["nonfinite"]:
            rank_zero_info(
                f"[medkor] KorMedMCQA at step {step}: {entry['nonfinite']} of {entry['total']} questions have "
                "non-finite logits; no accuracy reported - the model has diverged (see NonFiniteGuard / lower "
                "the learning rate)"
            )
        if stage == "baseline":
            self.baseline = entry
        else:
            self.evaluations.append(entry)
        if stage in ("baseline", "fit"):
            self._last_fit_step = step
        if trainer.is_global_zero:
            if name is not None:
                write_predictions(run_dir / name, sort_records(gathered, subsets))
            settings = {**self.settings.as_dict(), "subsets": subsets}
            if standalone:
                # this folder holds only this command's evaluations; the training run's baseline is kept
                # for the change it gives, without its predictions file (that lies in the training run)
                baseline = {**self.baseline, "predictions": None} if self.baseline else None
                mine = [e for e in self.evaluations if e["stage"] == stage]
                write_summary(run_dir / "summary.json", settings, baseline, mine, questions=question_set.counts())
            else:
                write_summary(run_dir / "summary.json", settings, self.baseline, self.evaluations,
                              questions=question_set.counts())
            losses = validation_losses(trainer.callback_metrics) if stage == "fit" else None
            line = evaluation_line(entry, None if stage == "baseline" else self.baseline, losses)
            say(trainer, line + _repeats_note(entry))

        metrics = self._entry_metrics(entry)
        if stage in ("validate", "test"):
            # inside the evaluation loop self.log is allowed: the values join the returned results
            for key, value in metrics.items():
                pl_module.log(key, value, on_step=False, on_epoch=True, sync_dist=False)
        else:
            # baseline/steps: Lightning forbids self.log before training, and per-step logging would
            # be thinned by log_every_n_steps; the values are already global, so rank 0 writes them.
            self._log_direct(trainer, {**metrics, "epoch": float(epoch)}, step)
        return entry

    @staticmethod
    def _entry_metrics(entry: dict[str, Any]) -> dict[str, float]:
        nonfinite = int(entry.get("nonfinite") or 0)  # entries of older checkpoints have none
        extra = {f"{METRIC_PREFIX}/nonfinite": float(nonfinite), f"{METRIC_PREFIX}/seconds": float(entry["seconds"])}
        if nonfinite:  # a diverged model: no accuracy at all, not even for subsets that happen to be finite
            return extra
        counts = {subset: (v["correct"], v["total"]) for subset, v in entry["subsets"].items()}
        return {**accuracy_metrics(counts), **extra}

    @staticmethod
    def _log_direct(trainer: pl.Trainer, metrics: dict[str, float], step: int) -> None:
        if not trainer.is_global_zero:
            return
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=step)
            logger.save()  # make the row visible now (CSVLogger buffers otherwise)


def _repeats_note(entry: dict[str, Any]) -> str:
    """`` | 4 repeated questions dropped (doctor 4)`` when the scored set had repeats (n= counts each once)."""
    dropped = {subset: v.get("duplicates_dropped", 0) for subset, v in entry["subsets"].items()}
    if not any(dropped.values()):
        return ""
    per_subset = ", ".join(f"{subset} {n}" for subset, n in dropped.items() if n)
    return f" | {sum(dropped.values())} repeated question(s) dropped ({per_subset})"


def _model_and_tokenizer(pl_module: pl.LightningModule) -> tuple[Any, Any]:
    model = getattr(pl_module, "model", None)
    tokenizer = getattr(pl_module, "tokenizer", None)
    if model is None or tokenizer is None:
        raise AttributeError(
            f"KorMedMCQAEval needs pl_module.model (a causal LM) and pl_module.tokenizer; "
            f"{type(pl_module).__name__} has model={type(model).__name__}, tokenizer={type(tokenizer).__name__}"
        )
    return model, tokenizer
