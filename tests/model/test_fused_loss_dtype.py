"""Under bf16 autocast every matrix product of the fused loss runs in bf16; the head gradient still sums in float32."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from medkor.model import fused_loss
from medkor.model.loss import IGNORE_INDEX, naive_cross_entropy, next_token_loss

_MATMULS = {torch.ops.aten.mm.default, torch.ops.aten.addmm.default, torch.ops.aten.mm.out,
            torch.ops.aten.addmm.out, torch.ops.aten.addmm_.default, torch.ops.aten.bmm.default}


class _MatmulDtypes(TorchDispatchMode):
    """Records (op, operand dtypes, output shape) of every matrix product."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, tuple[torch.dtype, ...], tuple[int, ...]]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        result = func(*args, **(kwargs or {}))
        if func in _MATMULS:
            mats = [a for a in args if isinstance(a, torch.Tensor) and a.dim() == 2]
            operands = mats[-2:]  # (mat1, mat2); addmm's first argument is the added matrix
            self.calls.append((str(func), tuple(m.dtype for m in operands), tuple(result.shape)))
        return result


def _case(t=48, h=32, v=900, seed=3):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(1, t, h, generator=g).requires_grad_(True)
    weight = (torch.randn(v, h, generator=g) * 0.3).requires_grad_(True)
    labels = torch.randint(0, v, (1, t), generator=g)
    labels[0, :3] = IGNORE_INDEX
    return hidden, weight, labels


@pytest.mark.parametrize("impl", ["torch", "torch_recompute"])
def test_every_matmul_is_bf16_under_autocast(impl, monkeypatch):
    monkeypatch.setattr(fused_loss, "_HEAD_BLOCK_ROWS", 256)  # several head blocks per chunk
    hidden, weight, labels = _case()
    recorder = _MatmulDtypes()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with recorder:
            loss, _ = next_token_loss(hidden, weight, labels, 16, 30.0, impl)
            loss.backward()
    assert recorder.calls, "no matrix product seen"
    head_products = [c for c in recorder.calls if c[2][0] in (256, 900 - 3 * 256, 900)]
    assert head_products, recorder.calls  # the head gradient's products (rows of the head)
    slow = [c for c in recorder.calls if torch.float32 in c[1]]
    assert not slow, f"float32 matrix products under bf16 autocast: {slow}"
    # the float32 head keeps a float32 gradient
    assert weight.grad.dtype == torch.float32 and hidden.grad.dtype == torch.float32


@pytest.mark.parametrize("impl", ["torch", "torch_recompute"])
def test_bf16_loss_and_gradients_within_bf16_tolerance_of_naive(impl):
    """Against the naive loss under the same autocast (bf16 logits, float32 cross-entropy), both measured
    from the exact loss of the same bf16-rounded inputs in float64: at most twice naive's error."""
    hidden, weight, labels = _case(t=96, h=64, v=1500, seed=5)
    cap = 30.0
    with torch.autocast("cpu", dtype=torch.bfloat16):
        naive = naive_cross_entropy(torch.tanh(hidden @ weight.T / cap) * cap, labels)
        loss, _ = next_token_loss(hidden, weight, labels, 32, cap, impl)
    naive_grads = torch.autograd.grad(naive, (hidden, weight))
    grads = torch.autograd.grad(loss, (hidden, weight))
    h64 = hidden.detach().bfloat16().double().requires_grad_(True)
    w64 = weight.detach().bfloat16().double().requires_grad_(True)
    exact = naive_cross_entropy(torch.tanh(h64 @ w64.T / cap) * cap, labels)
    exact_grads = torch.autograd.grad(exact, (h64, w64))
    assert abs(loss.item() - exact.item()) <= 2 * abs(naive.item() - exact.item()) + 1e-4
    for ours, theirs, ref in zip(grads, naive_grads, exact_grads):
        assert ours.dtype == torch.float32
        ours_err = (ours.double() - ref).abs().max().item()
        naive_err = (theirs.double() - ref).abs().max().item()
        assert ours_err <= 2 * naive_err + 1e-7, (ours_err, naive_err)
