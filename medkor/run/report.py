"""What a run tells the person at the terminal: a few lines, the same on a terminal and in a file.

Plain functions over the KorMedMCQA entries (`medkor.eval.predictions.evaluation_entry`)
and paths; `say` prints through the progress bar when there is one, so a line never
lands in the middle of a bar.
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

PREFIX = "[medkor]"


def say(trainer: Any, text: str) -> None:
    """Print `text` once (global rank zero), above the progress bar if one is drawing."""
    if not getattr(trainer, "is_global_zero", True):
        return
    bar = getattr(trainer, "progress_bar_callback", None)
    for line in text.splitlines():
        line = f"{PREFIX} {line}"
        if bar is not None and hasattr(bar, "print") and getattr(bar, "is_enabled", False):
            bar.print(line)
        else:
            print(line, flush=True)


def _signed(value: float) -> str:
    return f"{value:+.3f}"


def _acc(value: Optional[float]) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def validation_losses(metrics: Mapping[str, Any]) -> dict[str, float]:
    """`val/loss` and every named set's `val/<name>/loss` from a trainer's current metrics, `val/loss` first."""
    keys = sorted((k for k in metrics if k.startswith("val/") and k.endswith("/loss")), key=lambda k: (k != "val/loss", k))
    return {k: float(metrics[k]) for k in keys}


def losses_text(losses: Mapping[str, float]) -> str:
    return ", ".join(f"{k} {v:.4f}" for k, v in losses.items())


def evaluation_line(entry: Mapping[str, Any], baseline: Optional[Mapping[str, Any]],
                    val_losses: Optional[Mapping[str, float]] = None) -> str:
    """One line per KorMedMCQA evaluation: overall and per subset with n, the change since the baseline,
    and the validation losses of the same moment."""
    stage = entry["stage"]
    where = f"step {entry['step']}" if stage == "baseline" else f"epoch {entry['epoch']}, step {entry['step']}"
    title = {"baseline": "baseline", "fit": "", "validate": "validate", "test": "test"}.get(stage, stage)
    head = f"KorMedMCQA {title + ' ' if title else ''}({where})"
    if stage in ("validate", "test") and entry.get("checkpoint"):
        head += f" of {entry['checkpoint']}"
    if entry.get("nonfinite"):
        return f"{head}: no accuracy, {entry['nonfinite']} of {entry['total']} questions have non-finite logits"
    change = None
    if baseline is not None and baseline.get("acc") is not None and entry["acc"] is not None:
        change = entry["acc"] - baseline["acc"]
    overall = f"acc {_acc(entry['acc'])} ({entry['correct']}/{entry['total']}"
    overall += f", {_signed(change)} since baseline)" if change is not None else ")"
    parts = []
    for subset, value in entry["subsets"].items():
        text = f"{subset} {_acc(value['acc'])} n={value['total']}"
        base = (baseline or {}).get("subsets", {}).get(subset)
        if base is not None and base.get("acc") is not None and value["acc"] is not None:
            text += f" ({_signed(value['acc'] - base['acc'])})"
        parts.append(text)
    tail = f" | {losses_text(val_losses)}" if val_losses else ""
    return f"{head}: {overall} | {', '.join(parts)}{tail} | {entry['seconds']:.1f} s"


def last_step_epoch(checkpoint: Mapping[str, Any]) -> int:
    """The epoch (from 0) of a checkpoint's last optimizer step, as `fit` names its evaluations.

    Lightning's `epoch` counts the epochs completed: a checkpoint written after an epoch
    ended says 1 for a last step in epoch 0, and one written inside the epoch says 0. The
    fit loop's epochs started (its `epoch_progress`) names the epoch either way.
    """
    progress = checkpoint.get("loops", {}).get("fit_loop", {}).get("epoch_progress", {}).get("current", {})
    started = progress.get("started")
    if isinstance(started, int) and started > 0:
        return started - 1
    return int(checkpoint.get("epoch", 0))


def steps_text(epochs: int, steps: int, steps_here: int, seconds: float) -> str:
    """`N epochs, S optimizer steps in T s`; after a resume, how many of them this process ran in T."""
    head = f"{epochs} epoch{'s' if epochs != 1 else ''}, {steps} optimizer steps"
    if steps_here == steps:
        return f"{head} in {seconds:.0f} s"
    return f"{head} ({steps_here} in this process, {seconds:.0f} s)"


def shown_path(path: os.PathLike | str) -> str:
    """A path as a person would type it: relative to the working directory when inside it."""
    path = Path(path)
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _command(*parts: str) -> str:
    return " ".join(shlex.quote(p) for p in parts)


def carried_overrides(args: Sequence[str]) -> list[str]:
    """The `--model.*` and `--data.*` options of a command line, with their values: the suggested
    `validate` and `export` repeat them, or they would score or export another model or data."""
    out, index = [], 0
    while index < len(args):
        arg = args[index]
        if arg.startswith(("--model.", "--data.")) and not arg.startswith("--data.overwrite_cache"):
            out.append(arg)
            if "=" not in arg and index + 1 < len(args) and not args[index + 1].startswith("--"):
                index += 1
                out.append(args[index])
        index += 1
    return out


def fit_end_lines(
    run_dir: Optional[Path],
    last: Optional[str],
    best: Optional[str],
    best_label: str,
    summary: Optional[Path],
    config_files: Sequence[str],
    trained: str,
    overrides: Sequence[str] = (),
) -> list[str]:
    """The lines at the end of `medkor fit`: what ran, where it is, and the commands that come next
    (with the run's `--config` files and its `--model.*`/`--data.*` overrides)."""
    lines = [f"done: {trained}"]
    if run_dir is not None:
        lines.append(f"run folder   {shown_path(run_dir)}")
    if last:
        lines.append(f"last ckpt    {shown_path(last)}")
    if best and best != last:
        lines.append(f"{best_label:<12} {shown_path(best)}")
    if summary is not None and summary.is_file():
        lines.append(f"summary      {shown_path(summary)}")
    configs = [x for c in config_files for x in ("--config", shown_path(c))] + list(overrides)
    chosen = best or last
    nexts = []
    if run_dir is not None and (run_dir / "metrics.csv").is_file():
        nexts.append(_command("medkor", "plot", shown_path(run_dir)))
    if chosen:
        nexts.append(_command("medkor", "validate", *configs, "--ckpt_path", shown_path(chosen)))
        out = f"exported/{run_dir.parent.name}-{run_dir.name}" if run_dir is not None else "exported/model"
        nexts.append(_command("medkor", "export", *configs, "--ckpt_path", shown_path(chosen), "--out", out))
    if nexts:
        lines.append("next:")
        lines.extend(f"  {c}" for c in nexts)
    return lines
