"""``NonFiniteGuard``: stop (or skip the step) before a non-finite loss or gradient reaches the weights."""

from __future__ import annotations

from typing import Any, Literal, Optional, Sequence

import lightning.pytorch as pl
import torch
import torch.distributed as dist
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info

GuardMode = Literal["stop", "skip"]

SKIPPED_METRIC = "train/skipped_steps"

ADVICE = (
    "Try a lower --model.learning_rate, gradient clipping (--trainer.gradient_clip_val 1.0), "
    "bf16-mixed instead of 16-mixed precision, or let NonFiniteGuard skip such steps (mode: skip; "
    "with the guard last in trainer.callbacks: --trainer.callbacks.mode=skip)."
)


class NonFiniteLossError(RuntimeError):
    """Training produced a non-finite loss or gradient; raised before the optimizer step, so the
    weights are still finite. The message is one line: where, what, and what to try."""


class NonFiniteGuard(Callback):
    """Checks the loss and every gradient before each optimizer step; stops (or skips the step) when one is not finite.

    The check runs in ``on_before_optimizer_step``, after the backward passes of the accumulated
    batches and before the weights change: one fused reduction over the gradients and one host
    sync per step. Under DDP/FSDP every rank checks its own loss and gradient shards and the
    decision is combined (any rank non-finite: every rank acts). Under ``16-mixed`` precision the
    GradScaler already skips steps with overflowing gradients and lowers its scale, so only the loss
    is checked there. Only NaN and inf count (huge finite values do not). Because nothing reaches
    the weights, a checkpoint written after the error (e.g. ``ModelCheckpoint(save_on_exception=True)``)
    holds the last finite weights.

    Args:
        mode: ``stop``: raise ``NonFiniteLossError`` (``medkor.callbacks.finite_guard``) naming the
            global step, epoch, batch indices and the first non-finite value. ``skip``: drop the
            step's gradients so the optimizer leaves weights and moments unchanged (the global step
            and the learning-rate schedule still advance), log ``train/skipped_steps`` and print one
            line per skipped step.
        max_skipped: In ``skip`` mode, stop with ``NonFiniteLossError`` once more than this many
            steps were skipped in the run (the count is kept in checkpoints and survives a resume).
    """

    def __init__(self, mode: GuardMode = "stop", max_skipped: int = 10) -> None:
        if mode not in ("stop", "skip"):
            raise ValueError(f"NonFiniteGuard mode must be 'stop' or 'skip', got {mode!r}")
        if max_skipped < 0:
            raise ValueError(f"max_skipped must be >= 0, got {max_skipped}")
        self.mode = mode
        self.max_skipped = max_skipped
        self.skipped = 0
        self._batch_idx: Optional[int] = None
        self._window: list[tuple[Optional[int], torch.Tensor]] = []  # (batch index, loss) since the last step

    # ---- checkpoint state: the skip count survives a resume
    def state_dict(self) -> dict[str, Any]:
        return {"skipped": self.skipped}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.skipped = int(state_dict.get("skipped", 0))

    # ---- collecting the accumulation window
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._window = []

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._batch_idx = batch_idx

    def on_before_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: torch.Tensor) -> None:
        # the loss as backward sees it: divided by accumulate_grad_batches (scaled under 16-mixed)
        self._window.append((self._batch_idx, loss.detach()))

    # ---- the check
    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        window, self._window = self._window, []
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        check_grads = getattr(trainer.precision_plugin, "scaler", None) is None
        local_bad = not all_finite([loss for _, loss in window] + ([p.grad for p in params] if check_grads else []))
        if not trainer.strategy.reduce_boolean_decision(local_bad, all=False):
            if self.mode == "skip":
                pl_module.log(SKIPPED_METRIC, float(self.skipped), on_step=True, on_epoch=False)
            return

        what = _agree_on_detail(self._describe(pl_module, window, params if check_grads else []) if local_bad else "")
        step, epoch = trainer.global_step, trainer.current_epoch
        indices = sorted({i for i, _ in window if i is not None})
        where = (
            f"global step {step} (epoch {epoch}, batch{'es' if len(indices) > 1 else ''} "
            f"{', '.join(map(str, indices)) or '?'})"
        )
        lr = optimizer.param_groups[0].get("lr") if optimizer.param_groups else None
        lr_text = f" (learning rate at this step {lr:.3g})" if isinstance(lr, (int, float)) else ""
        if self.mode == "stop":
            raise NonFiniteLossError(
                f"Non-finite training values at {where}: {what}. The optimizer step was not taken, so the "
                f"weights are still finite{lr_text}. {ADVICE}"
            )

        for p in params:  # optimizers skip parameters without a gradient: weights and moments stay as they are
            p.grad = None
        self.skipped += 1
        if self.skipped > self.max_skipped:
            raise NonFiniteLossError(
                f"{self.skipped} optimizer steps were skipped for non-finite values, more than max_skipped="
                f"{self.max_skipped}; the last at {where}: {what}. The weights are still finite{lr_text}. {ADVICE}"
            )
        rank_zero_info(
            f"[medkor] NonFiniteGuard skipped the optimizer step at {where}: {what} "
            f"({self.skipped} skipped, at most {self.max_skipped})"
        )
        pl_module.log(SKIPPED_METRIC, float(self.skipped), on_step=True, on_epoch=False)

    @staticmethod
    def _describe(
        pl_module: pl.LightningModule,
        window: Sequence[tuple[Optional[int], torch.Tensor]],
        params: Sequence[torch.Tensor],
    ) -> str:
        """What was not finite on this rank (only computed after a problem was found)."""
        parts = []
        for batch_idx, loss in window:
            if not bool(torch.isfinite(loss).all()):
                value = loss.float().flatten()[0].item() if loss.numel() else float("nan")
                parts.append(f"loss {value} (batch {batch_idx})")
                break
        bad = [p for p in params if p.grad.numel() and not bool(torch.isfinite(_local(p.grad)).all())]
        if bad:
            names = {id(p): name for name, p in pl_module.named_parameters()}
            first = bad[0]
            kind = "nan" if bool(torch.isnan(_local(first.grad)).any()) else "inf"
            name = names.get(id(first), f"a parameter of shape {tuple(first.shape)}")
            more = f" (and {len(bad) - 1} more parameters)" if len(bad) > 1 else ""
            parts.append(f"{kind} in the gradient of {name}{more}")
        text = "; ".join(parts) or "non-finite values"
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            text += f" on rank {dist.get_rank()}"
        return text


def _local(tensor: torch.Tensor) -> torch.Tensor:
    """This rank's shard of a DTensor (FSDP2, tensor parallel); the tensor itself otherwise."""
    return tensor.to_local() if hasattr(tensor, "to_local") else tensor


def finite_flag(tensors: Sequence[torch.Tensor]) -> Optional[torch.Tensor]:
    """A 0-d bool tensor, no host sync: true if every element of every tensor is finite (``None``: no elements).

    One fused 2-norm per tensor (``torch._foreach_norm``; NaN and inf always propagate into it) and
    one ``isfinite`` over the stacked norms. A norm can also overflow for huge finite values (above
    about 1e19 in float32, 256 in a large float16 tensor), so false may be a false alarm:
    :func:`all_finite` confirms it. (``ord=inf`` never overflows but is ten times slower on CPU.)
    """
    local = [t for t in (_local(t) for t in tensors) if t.numel()]
    if not local:
        return None
    norms = torch._foreach_norm(local)
    device = norms[0].device
    if any(n.device != device for n in norms):
        norms = [n.to(device) for n in norms]
    return torch.isfinite(torch.stack(norms)).all()


def all_finite(tensors: Sequence[torch.Tensor]) -> bool:
    """Whether every element of every tensor (this rank's shards) is finite; true for no elements.

    :func:`finite_flag` and one host sync; only when that flags a problem, an element-wise check
    tells a real NaN/inf from a norm that overflowed.
    """
    flag = finite_flag(tensors)
    if flag is None or bool(flag.item()):
        return True
    return all(bool(torch.isfinite(_local(t)).all()) for t in tensors)


def _agree_on_detail(local: str) -> str:
    """The first non-empty description of any rank (every rank raises the same message)."""
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return local or "non-finite values"
    try:
        details: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(details, local)
    except RuntimeError:  # a backend that cannot gather objects: say what this rank knows
        return local or "non-finite values on another rank"
    return next((d for d in details if d), "non-finite values")
