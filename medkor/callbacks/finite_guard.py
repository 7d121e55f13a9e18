"""``NonFiniteGuard``: stop (or skip the step) before a non-finite loss or gradient reaches the weights."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Optional, Sequence

import lightning.pytorch as pl
import torch
import torch.distributed as dist
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.strategies import DDPStrategy
from lightning.pytorch.utilities import rank_zero_info

from medkor.callbacks.logging_steps import is_reading_step

GuardMode = Literal["stop", "skip"]

SKIPPED_METRIC = "train/skipped_steps"

ADVICE = (
    "Try a lower --model.learning_rate, gradient clipping (--trainer.gradient_clip_val 1.0), "
    "bf16-mixed instead of 16-mixed precision, or let NonFiniteGuard skip such steps (mode: skip; "
    "with the guard last in trainer.callbacks: --trainer.callbacks.mode=skip)."
)


class NonFiniteLossError(RuntimeError):
    """Training produced a non-finite loss or gradient; no update from that step on reached the
    weights, so they are still finite. The message is one line: where, what, and what to try."""


@dataclass
class _Step:
    """One optimizer step's check, kept on the device until it is read."""

    step: int
    epoch: int
    batches: list[Optional[int]]
    lr: Optional[float]
    losses: list[torch.Tensor]
    params: list[torch.Tensor]  # whose gradients were checked (for the parameter's name)
    norms: Optional[torch.Tensor]  # float64 2-norm of each loss, then each gradient
    ok: torch.Tensor  # 0-d bool: everything finite


class NonFiniteGuard(Callback):
    """Checks the loss and every gradient before each optimizer step; stops (or skips the step) when one is not finite.

    The check is decided on the device, so the step never waits for it: one fused
    reduction over the gradients (float64 2-norms, which NaN and inf always reach and
    finite values never overflow) gives a flag that a fused optimizer (``AdamW(fused=True)``,
    which medkor's module builds) takes as its ``found_inf``: it leaves weights, moments
    and step count untouched when the flag is set. The flags are read, and acted on, at
    the next logging step (``trainer.log_every_n_steps``, where the logger reads anyway;
    every 50 steps in a run that logs nothing), before any checkpoint is written, and at
    the end of an epoch. In ``stop`` mode the
    first non-finite step also blocks every later update until that read, so the weights
    stay those from before it. With several ranks the read is one all-reduce, shared with
    `SaveOnPreemption`'s check when it comes first among the callbacks (as `medkor fit`
    places it). An optimizer that takes no ``found_inf`` (a plain
    ``torch.optim.AdamW`` on CPU) is checked before each step with one read instead.

    Under DDP the gradients are already averaged over the ranks, so every rank finds
    the same; elsewhere with several ranks (FSDP shards) the flag is combined on the
    device before the step, and at the read every rank agrees. Under ``16-mixed``
    precision the GradScaler skips steps with overflowing gradients itself, so only the
    loss is checked there. Only NaN and inf count.

    Args:
        mode: ``stop``: raise ``NonFiniteLossError`` naming the global step, epoch, batch
            indices and the first non-finite value. ``skip``: the optimizer leaves weights
            and moments unchanged for that step (the global step and the learning-rate
            schedule still advance), ``train/skipped_steps`` is logged and one line per
            skipped step printed.
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
        self._pending: list[_Step] = []  # checked on the device, not read yet
        self._blocked: Optional[torch.Tensor] = None  # stop mode: a non-finite step was seen (device flag)
        self._agreed: Optional[list[bool]] = None  # the pending steps' flags, already agreed by every rank
        self._trainer: Optional[pl.Trainer] = None

    # ---- checkpoint state: the skip count survives a resume
    def state_dict(self) -> dict[str, Any]:
        # a checkpoint is written now: read what is pending first, so none holds a step not yet judged
        if self._trainer is not None and self._pending:
            self.resolve(self._trainer, self._trainer.lightning_module)
        return {"skipped": self.skipped}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.skipped = int(state_dict.get("skipped", 0))

    # ---- collecting the accumulation window
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._window, self._pending, self._blocked, self._agreed = [], [], None, None
        self._trainer = trainer

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._batch_idx = batch_idx

    def on_before_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: torch.Tensor) -> None:
        # the loss as backward sees it: divided by accumulate_grad_batches (scaled under 16-mixed)
        self._window.append((self._batch_idx, loss.detach()))

    # ---- the check, on the device
    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        self._trainer = trainer
        window, self._window = self._window, []
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        scaler = getattr(trainer.precision_plugin, "scaler", None)
        checked = params if scaler is None else []
        losses = [loss for _, loss in window]
        norms = tensor_norms(losses + [p.grad for p in checked])
        ok = torch.isfinite(norms).all() if norms is not None else torch.ones((), dtype=torch.bool)
        if trainer.world_size > 1 and not isinstance(trainer.strategy, DDPStrategy) and _distributed():
            # sharded gradients (FSDP): each rank sees only its shard; agree before the step, on the device
            flag = ok.to(torch.int32)
            dist.all_reduce(flag, op=dist.ReduceOp.MIN)
            ok = flag.bool()
        lr = optimizer.param_groups[0].get("lr") if optimizer.param_groups else None
        self._pending.append(_Step(
            step=trainer.global_step, epoch=trainer.current_epoch, batches=[i for i, _ in window],
            lr=lr if isinstance(lr, (int, float)) else None, losses=losses, params=checked, norms=norms, ok=ok,
        ))
        raw = getattr(optimizer, "_optimizer", optimizer)
        if scaler is None and not _takes_found_inf(raw):
            # read now: this optimizer cannot skip on the device, so bad gradients are dropped here
            skipped = self.skipped
            self.resolve(trainer, pl_module)
            if self.skipped > skipped:
                for p in params:  # optimizers skip parameters without a gradient: weights and moments stay
                    p.grad = None
            self._log_skipped(pl_module)
            return
        if scaler is None:  # (a GradScaler skips steps on non-finite gradients, which a non-finite loss makes)
            bad = ~ok
            if self.mode == "stop":  # nothing after the first bad step is applied until it is read
                self._blocked = bad if self._blocked is None else self._blocked | bad
                bad = self._blocked
            device = params[0].device if params else ok.device
            raw.found_inf = bad.to(device=device, dtype=torch.float32)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        # read after the step (whose update the optimizer already skipped if it was bad), so that
        # SaveOnPreemption, earlier in the callbacks, can put its own flag in the same read
        if self._pending and is_reading_step(trainer):
            self.resolve(trainer, pl_module)
            self._log_skipped(pl_module)

    def _log_skipped(self, pl_module: pl.LightningModule) -> None:
        if self.mode == "skip":
            pl_module.log(SKIPPED_METRIC, float(self.skipped), on_step=True, on_epoch=False)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.resolve(trainer, pl_module)  # before any epoch-end evaluation

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.state.fn == "fit":
            self.resolve(trainer, pl_module)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.resolve(trainer, pl_module)
        _clear_found_inf(trainer)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._pending, self._agreed, self._blocked = [], None, None  # judged already, or the run is over
        _clear_found_inf(trainer)

    # ---- the read
    def read_pending(self, trainer: pl.Trainer, extra: Sequence[float] = ()) -> list[float]:
        """Read the pending steps' flags (agreed by every rank) together with `extra` values (max over ranks).

        One device-to-host read and, with several ranks, one all-reduce for both: others
        (`SaveOnPreemption`) put their own flags in `extra` instead of a collective of their own.
        """
        several = trainer.world_size > 1 and _distributed()
        if not self._pending and not (several and extra):
            return list(extra)
        device = trainer.strategy.root_device
        parts = [torch.stack([~s.ok for s in self._pending]).to(device=device, dtype=torch.float32)] if self._pending else []
        if several:
            parts.append(torch.tensor(list(extra), dtype=torch.float32).to(device))
        values = torch.cat(parts) if parts else torch.zeros(0)
        if several:
            dist.all_reduce(values, op=dist.ReduceOp.MAX)
        read = values.tolist()
        self._agreed = [v == 0 for v in read[:len(self._pending)]]
        return read[len(self._pending):] if several else list(extra)

    def resolve(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Read the steps checked since the last read and act: stop, or count and report skipped steps."""
        if not self._pending:
            return
        if self._agreed is None or len(self._agreed) != len(self._pending):
            self.read_pending(trainer)
        pending, agreed = self._pending, self._agreed
        self._pending, self._agreed = [], None
        bad = [s for s, ok in zip(pending, agreed) if not ok]
        self._blocked = None  # read now: a stop follows, or the skips were meant
        if not bad:
            return
        first = bad[0]
        what = _agree_on_detail(_describe(pl_module, first))
        where = _where(first)
        lr_text = f" (learning rate at this step {first.lr:.3g})" if first.lr is not None else ""
        if self.mode == "stop":
            _clear_found_inf(trainer)
            after = len(pending) - 1 - pending.index(first)
            later = f" (nor the {after} after it)" if after else ""
            raise NonFiniteLossError(
                f"Non-finite training values at {where}: {what}. The optimizer step was not taken{later}, so the "
                f"weights are still finite{lr_text}. {ADVICE}"
            )
        for step in bad:
            self.skipped += 1
            step_where, step_what = _where(step), (what if step is first else _describe(pl_module, step))
            if self.skipped > self.max_skipped:
                raise NonFiniteLossError(
                    f"{self.skipped} optimizer steps were skipped for non-finite values, more than max_skipped="
                    f"{self.max_skipped}; the last at {step_where}: {step_what}. The weights are still finite"
                    f"{lr_text}. {ADVICE}"
                )
            rank_zero_info(
                f"[medkor] NonFiniteGuard skipped the optimizer step at {step_where}: {step_what} "
                f"({self.skipped} skipped, at most {self.max_skipped})"
            )


def _clear_found_inf(trainer: pl.Trainer) -> None:
    """Leave no `found_inf` behind on the optimizers (another use of them must step)."""
    for optimizer in trainer.optimizers:
        raw = getattr(optimizer, "_optimizer", optimizer)
        if hasattr(raw, "found_inf"):
            del raw.found_inf


def _where(step: _Step) -> str:
    indices = sorted({i for i in step.batches if i is not None})
    return (f"global step {step.step} (epoch {step.epoch}, batch{'es' if len(indices) > 1 else ''} "
            f"{', '.join(map(str, indices)) or '?'})")


def _describe(pl_module: pl.LightningModule, step: _Step) -> str:
    """What was not finite in `step` on this rank (read only after a problem was found)."""
    parts = []
    norms = step.norms.tolist() if step.norms is not None else []
    finite = [n == n and abs(n) != float("inf") for n in norms]
    for (batch_idx, loss), ok in zip(zip(step.batches, step.losses), finite):
        if not ok:
            value = loss.float().flatten()[0].item() if loss.numel() else float("nan")
            parts.append(f"loss {value} (batch {batch_idx})")
            break
    grads = list(zip(step.params, norms[len(step.losses):]))
    bad = [(p, n) for (p, n), ok in zip(grads, finite[len(step.losses):]) if not ok]
    if bad:
        names = {id(p): name for name, p in pl_module.named_parameters()}
        first, norm = bad[0]
        kind = "nan" if norm != norm else "inf"
        name = names.get(id(first), f"a parameter of shape {tuple(first.shape)}")
        more = f" (and {len(bad) - 1} more parameters)" if len(bad) > 1 else ""
        parts.append(f"{kind} in the gradient of {name}{more}")
    text = "; ".join(parts) or ("non-finite values" if not step.ok else "")
    if text and _distributed() and dist.get_world_size() > 1:
        text += f" on rank {dist.get_rank()}"
    return text


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def _takes_found_inf(optimizer: Any) -> bool:
    """Whether `optimizer.step()` skips its update on a set `found_inf` tensor, on the device (fused kernels)."""
    return bool(getattr(optimizer, "_step_supports_amp_scaling", False)) and bool(
        getattr(optimizer, "defaults", {}).get("fused"))


def _local(tensor: torch.Tensor) -> torch.Tensor:
    """This rank's shard of a DTensor (FSDP2, tensor parallel); the tensor itself otherwise."""
    return tensor.to_local() if hasattr(tensor, "to_local") else tensor


def tensor_norms(tensors: Sequence[torch.Tensor]) -> Optional[torch.Tensor]:
    """Float64 2-norm of each tensor (this rank's shard), stacked on one device; ``None`` for no elements.

    One fused pass (``torch._foreach_norm``); NaN and inf always reach a norm, and in
    float64 the norm of float32 or half values never overflows, so ``isfinite`` of the
    norms is exactly "every element is finite". No host read. Empty tensors count as
    finite (norm 0).
    """
    local = [_local(t) for t in tensors]
    if not any(t.numel() for t in local):
        return None
    norms = torch._foreach_norm(local, 2, dtype=torch.float64)
    device = norms[0].device
    if any(n.device != device for n in norms):
        norms = [n.to(device) for n in norms]
    return torch.stack(norms)


def finite_flag(tensors: Sequence[torch.Tensor]) -> Optional[torch.Tensor]:
    """A 0-d bool tensor, no host read: true if every element of every tensor is finite (``None``: no elements)."""
    norms = tensor_norms(tensors)
    return None if norms is None else torch.isfinite(norms).all()


def all_finite(tensors: Sequence[torch.Tensor]) -> bool:
    """Whether every element of every tensor (this rank's shards) is finite; true for no elements (one read)."""
    flag = finite_flag(tensors)
    return flag is None or bool(flag.item())


def _agree_on_detail(local: str) -> str:
    """The first non-empty description of any rank (every rank raises the same message)."""
    if not (_distributed() and dist.get_world_size() > 1):
        return local or "non-finite values"
    try:
        details: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(details, local)
    except RuntimeError:  # a backend that cannot gather objects: say what this rank knows
        return local or "non-finite values on another rank"
    return next((d for d in details if d), "non-finite values")
