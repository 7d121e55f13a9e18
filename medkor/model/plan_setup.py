"""From a parsed run config to what `medkor plan` builds and assumes: module options and `RunSetup`.

Plain functions over the config as `medkor.lightning_cli.parse_run_config` returns it
(or plain dicts): which accelerator, how many devices, which strategy, precision,
micro-batch, row length, checkpointing, accumulation, loss and evaluation batch.
Every assumption the config leaves open (`devices: -1` on a machine without GPUs,
an unknown accelerator's memory) is said in `assumptions`.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Optional

from medkor.checks import config_value
from medkor.model.plan_memory import GB, GIB, RunSetup

DEFAULT_GPU_MEMORY = 80 * GIB  # an 80 GB H100 or A100 (80 GiB on the card)
DEFAULT_GPUS_PER_NODE = 8  # `devices: -1` planned on a machine that has none
DEFAULT_EVAL_TOKENS = 512  # KorMedMCQA harness prompts (question, five options) stay below this


@dataclass
class PlanInputs:
    """The module options to build with, the set-up to plan for, and what was assumed."""

    model: dict[str, Any]
    setup: RunSetup
    fsdp_classes: list[str]
    assumptions: list[str] = field(default_factory=list)


def _plain(node: Any) -> Any:
    if hasattr(node, "as_dict"):
        return node.as_dict()
    return node


def init_args(node: Any) -> dict[str, Any]:
    """A config section as a dict; `class_path`/`init_args` sections give their arguments."""
    node = _plain(node) or {}
    node = dict(node)
    return dict(node.get("init_args") or {}) if "class_path" in node else node


def module_defaults() -> dict[str, Any]:
    """`MedGemmaModule`'s defaults, for options a config leaves out."""
    from medkor.model.module import MedGemmaModule

    sig = inspect.signature(MedGemmaModule.__init__)
    return {k: p.default for k, p in sig.parameters.items() if p.default is not inspect.Parameter.empty}


def host_memory() -> int:
    """This machine's memory (MemTotal), the limit of a CPU run."""
    with open("/proc/meminfo", encoding="utf-8") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    raise OSError("no MemTotal in /proc/meminfo")


def _device_count(devices: Any, device: str, override: Optional[int], notes: list[str]) -> int:
    if override:
        return override
    if isinstance(devices, (list, tuple)):
        return len(devices)
    if isinstance(devices, str) and devices.lstrip("-").isdigit():
        devices = int(devices)
    if isinstance(devices, str) and "," in devices:
        return len([d for d in devices.split(",") if d.strip()])
    if isinstance(devices, int) and devices > 0:
        return devices
    if device == "cpu":
        return 1
    import torch

    found = torch.cuda.device_count()
    if found:
        notes.append(f"trainer.devices {devices!r}: the {found} GPUs of this machine")
        return found
    notes.append(f"trainer.devices {devices!r} and no GPU here: planned for {DEFAULT_GPUS_PER_NODE} per node "
                 "(--devices N to change)")
    return DEFAULT_GPUS_PER_NODE


def _strategy(node: Any, devices: int) -> tuple[str, list[str], bool]:
    """(single|ddp|fsdp, FSDP wrap classes, FSDP activation checkpointing)."""
    node = _plain(node)
    if isinstance(node, str):
        name = node.lower()
        kind = "fsdp" if "fsdp" in name else "ddp" if "ddp" in name else ("ddp" if devices > 1 else "single")
        return kind, [], False
    if isinstance(node, dict) and node.get("class_path"):
        name = str(node["class_path"]).rsplit(".", 1)[-1].lower()
        args = dict(node.get("init_args") or {})
        if "fsdp" in name:
            wrap = args.get("auto_wrap_policy") or []
            ckpt = args.get("activation_checkpointing_policy") or []
            wrap = [wrap] if isinstance(wrap, str) else list(wrap)
            return "fsdp", [str(w) for w in wrap], bool(ckpt)
        return ("ddp" if "ddp" in name else "single"), [], False
    return ("ddp" if devices > 1 else "single"), [], False


def _eval_batch(callbacks: Any) -> Optional[int]:
    for cb in _plain(callbacks) or []:
        cb = _plain(cb)
        if isinstance(cb, dict) and str(cb.get("class_path", "")).endswith("KorMedMCQAEval"):
            return int((cb.get("init_args") or {}).get("batch_size") or 16)
    return None


def fused_optimizer_on(device: str) -> bool:
    """Whether `medkor.model.optim.build_optimizer` picks the fused AdamW kernel for parameters on `device`.

    Asked of the function itself with a one-element parameter where one can be made here;
    a GPU planned on a machine without one counts as fused (torch has the kernel for CUDA).
    """
    import torch

    from medkor.model.optim import build_optimizer

    if device == "cuda" and not torch.cuda.is_available():
        return True
    probe = torch.nn.Parameter(torch.zeros(1, device=device))
    return bool(build_optimizer([{"params": [probe]}]).defaults.get("fused"))


def plan_inputs(config: Any, *, devices: Optional[int] = None, device_memory_gb: Optional[float] = None,
                eval_tokens: int = DEFAULT_EVAL_TOKENS) -> PlanInputs:
    """Read the module options and the per-device set-up from a parsed run config."""
    notes: list[str] = []
    model = {**module_defaults(), **init_args(config_value(config, "model"))}
    model["lora"] = _plain(model.get("lora"))
    trainer = _plain(config_value(config, "trainer")) or {}
    data = init_args(config_value(config, "data"))
    accelerator = str(trainer.get("accelerator") or "auto").lower()
    if accelerator in ("gpu", "cuda"):
        device = "cuda"
    elif accelerator == "cpu":
        device = "cpu"
    else:
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
        notes.append(f"trainer.accelerator {accelerator!r}: planned for {device} (what this machine has)")
    per_node = _device_count(trainer.get("devices", "auto"), device, devices, notes)
    nodes = int(trainer.get("num_nodes") or 1)
    world = per_node * nodes
    strategy, wrap, strategy_ckpt = _strategy(trainer.get("strategy"), world)
    precision = str(trainer.get("precision") or "32-true")
    half_weights = model.get("torch_dtype") in ("bfloat16", "float16")
    compute = 2 if ("16" in precision and "32" not in precision) or half_weights else 4
    loss_impl = str(model.get("loss_impl") or "torch")
    if loss_impl == "auto":
        from medkor.model.loss import cce_installed

        loss_impl = "cce" if device == "cuda" and cce_installed() else "torch"
        notes.append(f"model.loss_impl auto: planned as {loss_impl}")
    if device_memory_gb is not None:
        memory = int(device_memory_gb * GB)
        notes.append(f"device memory {device_memory_gb:g} GB (--device_memory)")
    elif device == "cuda":
        memory = DEFAULT_GPU_MEMORY
        notes.append(f"device memory {memory / GB:.1f} GB: an 80 GB H100/A100 (80 GiB; --device_memory GB to change)")
    else:
        memory = host_memory()
        notes.append(f"device memory {memory / GB:.1f} GB: this machine's RAM (MemTotal; --device_memory GB)")
    eval_batch = _eval_batch(trainer.get("callbacks"))
    setup = RunSetup(
        device=device,
        devices=world,
        strategy=strategy,
        compute_bytes=compute,
        micro_batch=int(data.get("batch_size") or 1),
        seq_len=int(data.get("max_length") or 512),
        gradient_checkpointing=bool(model.get("gradient_checkpointing")) or strategy_ckpt,
        accumulate=int(trainer.get("accumulate_grad_batches") or 1),
        loss_impl=loss_impl,
        loss_chunk=int(model.get("loss_chunk_size") or 512),
        eval_batch=eval_batch or 0,
        eval_tokens=eval_tokens if eval_batch else 0,
        device_memory=memory,
        fused_optimizer=fused_optimizer_on(device),
    )
    return PlanInputs(model, setup, wrap if strategy == "fsdp" else [], notes)
