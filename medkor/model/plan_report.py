"""`medkor plan`'s answer as text lines or a JSON-ready dict."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from medkor.model.plan import ModelFacts
from medkor.model.plan_memory import GB, MemoryPlan, RunSetup


def gb(n: float) -> str:
    """Bytes as GB (10^9), or MB below a tenth of a GB."""
    return f"{n / GB:,.2f} GB" if n >= GB / 10 or n == 0 else f"{n / 1e6:,.1f} MB"


def share(part: int, whole: int) -> str:
    return f"{100.0 * part / whole:.2f} %" if whole else "-"


PART_NAMES = {
    "vision_tower": "vision tower",
    "multi_modal_projector": "projector",
    "embedding": "input embedding",
    "untied_head": "untied output head",
    "lora": "LoRA adapters",
    "language_model_other": "rest of the language model",
}


def setup_line(s: RunSetup) -> str:
    where = f"{s.devices} x {s.device}" + (f" ({s.strategy.upper()})" if s.strategy != "single" else "")
    compute = {2: "16-bit", 4: "float32"}[s.compute_bytes]
    return (f"{where}, {compute} compute, micro-batch {s.micro_batch} x {s.seq_len:,} tokens, gradient checkpointing "
            f"{'on' if s.gradient_checkpointing else 'off'}, {s.accumulate} micro-batch(es) per step, "
            f"loss {s.loss_impl} (chunk {s.loss_chunk})")


def text_lines(f: ModelFacts, s: RunSetup, m: MemoryPlan, tips: list[tuple],
               notes: list[str]) -> list[str]:
    """The human-readable plan."""
    e = f.embedding
    lines = [
        f"model        {f.model_class}" + (" (vision tower and projector frozen)" if f.multimodal else "")
        + f", torch_dtype {f.torch_dtype}",
        f"embedding    {e.rows_before:,} -> {e.rows_after:,} rows (checkpoint tokenizer {e.n_base:,} tokens, "
        f"training tokenizer {e.n_tokenizer:,}; output head {'tied' if f.head_tied else 'untied'})",
        f"parameters   {f.total_params:,} total, {f.trainable_params:,} trainable "
        f"({share(f.trainable_params, f.total_params)})",
    ]
    for p in f.phases:
        until = f" until step {p.until_step:,}" if p.until_step is not None else ""
        lines.append(f"  {p.policy}{until}: {p.trainable:,} trainable ({share(p.trainable, f.total_params)})")
    lines.append("  parts: " + ", ".join(f"{PART_NAMES[k]} {v:,}" for k, v in f.parts.items() if v))
    if f.lora_modules:
        per = ", ".join(f"{k} {v}" for k, v in f.lora_modules.items())
        lines.append(f"LoRA         {f.lora_total} modules, r={f.lora_rank} ({per}); "
                     f"{f.lora_layer_params:,} adapter parameters per decoder layer")
    else:
        lines.append("LoRA         none")
    if f.fsdp is not None:
        lines.append(f"FSDP units   {f.fsdp.count} x {', '.join(f.fsdp.classes)} ({f.fsdp.largest_params:,} parameters "
                     f"each) + root ({f.fsdp.root_params:,})")
    lines.append(f"set-up       {setup_line(s)}")
    lines.append("memory per device (GB = 10^9 bytes)")
    act_other = "without" if s.gradient_checkpointing else "with"
    rows = [
        ("weights", m.weights, ""),
        ("gradients", m.gradients, ""),
        ("optimizer states", m.optimizer_states, "AdamW, two moments per trainable parameter"),
        ("activations", m.activations, f"{act_other} checkpointing: {gb(m.activations_other)}"),
        ("loss step", m.loss_step, f"while the loss runs; {f.head_rows:,}-row head"),
        ("optimizer step", m.optimizer_step, "temporaries of AdamW's step" if m.optimizer_step else ""),
        ("evaluation", m.evaluation, f"KorMedMCQA, {s.eval_batch} x {s.eval_tokens} tokens" if s.eval_batch else
         "no KorMedMCQAEval callback"),
        ("runtime", m.runtime, "CUDA context and allocator slack" if s.device == "cuda" else
         "tokenizers in RAM, as they grew this process"),
    ]
    for name, value, note in rows:
        lines.append(f"  {name:<17} {gb(value):>12}" + (f"   {note}" if note else ""))
    lines.append(f"  {'peak':<17} {gb_beside(m.peak, m.device_memory):>12}   at {m.peak_at}")
    lines.append("  moments (each the sum of the terms it holds; the peak is the largest)")
    for moment, parts in m.terms.items():
        lines.append(f"    {moment:<15} {gb(m.moments[moment]):>12} = "
                     + " + ".join(f"{name} {gb(value)}" for name, value in parts.items()))
    lines.append(f"device       {gb(m.device_memory)}: " + (f"fits ({gb(m.device_memory - m.peak)} to spare)" if m.fits
                                                         else "does NOT fit"))
    for note in notes + m.notes:
        lines.append(f"  note: {note}")
    if not m.fits:
        lines.append(f"warning: the predicted peak {gb_beside(m.peak, m.device_memory)} exceeds the device's {gb(m.device_memory)}; "
                     "add to the command (each figure is the plan with exactly those options):")
        for text, alt, *_ in tips:
            lines.append(f"  {text}: {gb_beside(alt.peak, alt.device_memory)} "
                         + ("(fits)" if alt.fits else "(does not fit)"))
    return lines


def gb_beside(n: int, limit: int) -> str:
    """`gb(n)`, with digits enough that it does not read as equal to `limit` when the bytes differ."""
    if n != limit and gb(n) == gb(limit):
        return f"{n / 1e6:,.3f} MB"
    return gb(n)


def json_report(f: ModelFacts, s: RunSetup, m: MemoryPlan, tips: list[tuple],
                notes: list[str]) -> dict[str, Any]:
    """The same plan for machines: every count and term in bytes."""
    return {
        "model": f.as_dict(),
        "setup": asdict(s),
        "memory": m.as_dict(),
        "advice": [{"change": tip[0], "options": tip[2] if len(tip) > 2 else None, "peak": tip[1].peak,
                    "fits": tip[1].fits} for tip in tips] if not m.fits else [],
        "notes": notes + m.notes,
    }
