"""Fused output head + cross-entropy: the loss of `hidden @ weight.T` without its logits.

With a 272k vocabulary, (tokens x vocab) float32 logits and their gradient are the
largest tensors of a step. `FusedLinearCrossEntropy` walks the tokens in chunks:
each chunk's logits are formed, reduced to a log-sum-exp and the target's logit,
turned into that chunk's softmax gradient, and dropped. The hidden gradient is
written chunk by chunk into one (tokens x hidden) buffer and the head gradient is
accumulated in place into one head-sized buffer, so peak memory holds one chunk of
logits whatever the number of tokens.

Two ways to order the work (`recompute`):
- `False` (default): gradients are formed in the forward pass, while each chunk's
  logits exist (three matrix products per chunk, as many as the naive loss); the
  backward only scales them by the incoming gradient. The head gradient buffer is
  handed to autograd, which moves it into `weight.grad` without a copy when that is
  None (the state after `zero_grad`), and adds it otherwise.
- `True`: the forward keeps only the per-token log-sum-exp; the backward recomputes
  each chunk's logits (a fourth matrix product). In exchange the head gradient can go
  straight into an existing `weight.grad` (gradient accumulation micro-batches), so
  no second head-sized buffer exists, where nothing else needs to see that gradient
  (see `_can_write_into_grad`).

Numerics follow Hugging Face's loss: logits in the compute dtype, Gemma's
final-logit soft-capping (`tanh(x / cap) * cap`) in that dtype, then float32 for
the softmax and log-sum-exp. Each chunk's logit gradient is formed in float32 and
rounded once to the compute dtype; every matrix product (logits, hidden gradient,
head gradient) then runs in the compute dtype with float32 accumulation, as the
naive loss's do under autocast. The head gradient is summed over chunks in a
float32 buffer: on CUDA the bf16 product is accumulated straight into it
(`addmm` with `out_dtype=float32`); elsewhere each block of head rows is one bf16
product (float32 inside the kernel) added into the float32 buffer, one rounding
per chunk.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

# Rows of the head per block where a half-precision chunk product is added into the float32 head
# gradient through a temporary: bounds it to block x hidden instead of vocab x hidden.
_HEAD_BLOCK_ROWS = 16384
# Device types whose half-precision matmul accumulates straight into a float32 output
# (`torch.addmm(..., out_dtype=torch.float32)`): found out on first use.
_MIXED_ADDMM: dict[str, bool] = {}


def compute_dtype(hidden: torch.Tensor, weight: torch.Tensor) -> torch.dtype:
    """The dtype the head's matmul runs in: autocast's where it is on, else the inputs' common one."""
    device = hidden.device.type
    if torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return torch.promote_types(hidden.dtype, weight.dtype)


def _chunk_logits(
    x: torch.Tensor, w: torch.Tensor, softcap: Optional[float]
) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """(float32 logits, tanh of the capped logits in the compute dtype or None) of one chunk."""
    if softcap is None:
        return F.linear(x, w).float(), None
    # The same three operations, in the same dtype, as Gemma's forward (in place where it can be).
    tanh = F.linear(x, w).div_(softcap).tanh_()
    return (tanh * softcap).float(), tanh


def _softmax_(z: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(log-sum-exp per token, summed loss) of one chunk of float32 logits, turning `z` into its softmax.

    In place: `torch.logsumexp` and `F.softmax` would each need a second chunk-sized tensor.
    """
    target = z.gather(1, y.unsqueeze(1)).squeeze(1)
    top = z.amax(dim=1, keepdim=True)
    total = z.sub_(top).exp_().sum(dim=1, keepdim=True)
    z.div_(total)
    lse = (top + total.log()).squeeze(1)
    return lse, (lse - target).sum()


def _softmax_grad_(
    p: torch.Tensor, y: torch.Tensor, tanh: Optional[torch.Tensor], scale: float, dtype: torch.dtype
) -> torch.Tensor:
    """d(sum of losses * scale)/d(pre-cap logits) of one chunk in `dtype`, from its softmax `p` (overwritten)."""
    p[torch.arange(len(y), device=y.device), y] -= 1.0
    p.mul_(scale)
    if tanh is not None:  # d(cap * tanh(a / cap))/da = 1 - tanh^2; `tanh` is not needed afterwards
        p.mul_(tanh.float().square_().neg_().add_(1.0))
    return p.to(dtype)


def _mixed_addmm_works(device: torch.device) -> bool:
    """Whether `addmm` on `device` takes half-precision matrices into a float32 output (CUDA does, CPU not).

    Decided once per device type by a tiny call; an unsupported combination is refused
    when the call is dispatched, so the probe never waits on the device.
    """
    known = _MIXED_ADDMM.get(device.type)
    if known is None:
        a = torch.zeros(2, 2, dtype=torch.bfloat16, device=device)
        out = torch.zeros(2, 2, dtype=torch.float32, device=device)
        try:
            torch.addmm(out, a, a, out_dtype=torch.float32, out=out)
            known = True
        except (RuntimeError, NotImplementedError, TypeError):
            known = False
        _MIXED_ADDMM[device.type] = known
    return known


def _add_head_grad(out: torch.Tensor, grad: torch.Tensor, x: torch.Tensor, first: bool) -> None:
    """out (+)= grad.T @ x in place; the product in `grad`'s dtype, the sum over chunks in `out`'s (float32).

    A half-precision chunk is multiplied in half precision (float32 accumulation inside
    the kernel): into `out` directly where the device supports a float32 output, else
    block by block of head rows through a half-precision temporary of block x hidden.
    """
    x = x.to(grad.dtype)
    if grad.dtype == out.dtype:
        if first:
            torch.mm(grad.T, x, out=out)
        else:
            out.addmm_(grad.T, x)
        return
    if _mixed_addmm_works(out.device):
        torch.addmm(out, grad.T, x, beta=0.0 if first else 1.0, out_dtype=out.dtype, out=out)
        return
    for start in range(0, out.shape[0], _HEAD_BLOCK_ROWS):
        rows = out[start:start + _HEAD_BLOCK_ROWS]
        product = torch.mm(grad[:, start:start + _HEAD_BLOCK_ROWS].T, x)
        if first:
            rows.copy_(product)
        else:
            rows.add_(product)
        del product


def _add_hidden_grad(out: torch.Tensor, grad: torch.Tensor, w: torch.Tensor) -> None:
    """out = grad @ w for one chunk's rows of the hidden gradient."""
    if grad.dtype == out.dtype:
        torch.mm(grad, w, out=out)
    else:
        out.copy_(grad @ w)


def _head_grad_buffer(weight: torch.Tensor) -> torch.Tensor:
    """Where the head gradient accumulates: float32 at least, so sums over chunks round once."""
    dtype = weight.dtype if weight.dtype in (torch.float32, torch.float64) else torch.float32
    return torch.empty(weight.shape, dtype=dtype, device=weight.device)


def _can_write_into_grad(weight: torch.Tensor) -> bool:
    """Whether the head gradient may be added straight into `weight.grad`, bypassing autograd.

    Only for a leaf that already holds a gradient of its own shape and dtype, with no
    tensor hooks (the `new_embeddings` old-row mask is one: it must see the whole
    gradient), no post-accumulate hooks, no process group (DDP and FSDP learn that a
    gradient is ready from autograd's accumulation, which then would not run for an
    untied head), and only inside a `backward()` that accumulates into it (never
    `torch.autograd.grad`, which must return the gradient instead).
    """
    grad = weight.grad
    if not weight.is_leaf or grad is None or grad.shape != weight.shape or grad.dtype != weight.dtype:
        return False
    if grad.dtype not in (torch.float32, torch.float64) or not grad.is_contiguous():
        return False
    if weight._backward_hooks or getattr(weight, "_post_accumulate_grad_hooks", None):
        return False
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return False
    try:
        node = torch.autograd.graph.get_gradient_edge(weight).node
        return bool(torch._C._will_engine_execute_node(node))
    except (RuntimeError, AttributeError):  # raised inside torch.autograd.grad
        return False


def lse_only_loss(
    h: torch.Tensor, w: torch.Tensor, y: torch.Tensor, chunk_size: int, softcap: Optional[float]
) -> tuple[torch.Tensor, torch.Tensor]:
    """(log-sum-exp per token, summed loss) in chunks, keeping no logits; no gradients."""
    lse = torch.empty(len(y), dtype=torch.float32, device=h.device)
    total = torch.zeros((), dtype=torch.float32, device=h.device)
    for start in range(0, len(y), chunk_size):
        stop = start + chunk_size
        z, _ = _chunk_logits(h[start:stop], w, softcap)
        lse[start:stop], part = _softmax_(z, y[start:stop])
        total += part
        del z
    return lse, total


class FusedLinearCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy of `hidden @ weight.T` against `targets`, in chunks of tokens.

    `hidden` (N, H) and `targets` (N,) hold only the positions that count (no -100).
    """

    @staticmethod
    def forward(ctx, hidden, weight, targets, chunk_size: int, softcap: Optional[float], dtype: torch.dtype,
                recompute: bool):
        device = hidden.device.type
        with torch.autocast(device, enabled=False):
            h, w = hidden.to(dtype), weight.to(dtype)
            count = len(targets)
            ctx.config = (chunk_size, softcap, dtype, count)
            if recompute:
                lse, total = lse_only_loss(h, w, targets, chunk_size, softcap)
                ctx.save_for_backward(hidden, weight, targets, lse)
                ctx.grads = None
                return total / count
            want_h, want_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
            grad_h = torch.empty_like(hidden) if want_h else None
            grad_w = _head_grad_buffer(weight) if want_w else None
            total = torch.zeros((), dtype=torch.float32, device=hidden.device)
            for start in range(0, count, chunk_size):
                stop = start + chunk_size
                x, y = h[start:stop], targets[start:stop]
                z, tanh = _chunk_logits(x, w, softcap)
                _, part = _softmax_(z, y)
                total += part
                grad = _softmax_grad_(z, y, tanh, 1.0 / count, dtype)
                del z, tanh
                if want_h:
                    _add_hidden_grad(grad_h[start:stop], grad, w)
                if want_w:
                    _add_head_grad(grad_w, grad, x, first=start == 0)
                del grad  # before the next chunk's logits exist
            ctx.grads = (grad_h, grad_w.to(weight.dtype) if want_w else None)
            return total / count

    @staticmethod
    @once_differentiable  # the gradients are formed outside autograd: no double backward
    def backward(ctx, grad_output):
        chunk_size, softcap, dtype, count = ctx.config
        if ctx.grads is not None:
            grad_h, grad_w = ctx.grads
            ctx.grads = None  # the only other reference: autograd can then take grad_w as .grad without a copy
            # The incoming gradient is 1 for a plain loss.backward(); a loss scaler or a
            # weighted sum of losses sends something else. Scaled on the device, never read.
            for g in (grad_h, grad_w):
                if g is not None:
                    g.mul_(grad_output.to(g.dtype))
            return grad_h, grad_w, None, None, None, None, None
        hidden, weight, targets, lse = ctx.saved_tensors
        want_h, want_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        into_grad = want_w and _can_write_into_grad(weight)
        grad_h = torch.empty_like(hidden) if want_h else None
        grad_w = weight.grad if into_grad else (_head_grad_buffer(weight) if want_w else None)
        scale = grad_output.float() / count  # a device scalar: never read on the host
        with torch.autocast(hidden.device.type, enabled=False):
            h, w = hidden.to(dtype), weight.to(dtype)
            for start in range(0, count, chunk_size):
                stop = start + chunk_size
                x, y = h[start:stop], targets[start:stop]
                z, tanh = _chunk_logits(x, w, softcap)
                probs = z.sub_(lse[start:stop].unsqueeze(1)).exp_()
                grad = _softmax_grad_(probs, y, tanh, scale, dtype)
                del z, probs, tanh
                if want_h:
                    _add_hidden_grad(grad_h[start:stop], grad, w)
                if want_w:
                    _add_head_grad(grad_w, grad, x, first=start == 0 and not into_grad)
                del grad
        if into_grad or not want_w:
            return grad_h, None, None, None, None, None, None
        return grad_h, grad_w.to(weight.dtype), None, None, None, None, None
