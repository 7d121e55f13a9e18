"""The fused loss equals the naive one (value and gradients), keeps one head-sized gradient, picks its backend."""

from __future__ import annotations

import logging
import sys
import types

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from medkor.model import loss as loss_mod
from medkor.model.loss import IGNORE_INDEX, naive_cross_entropy, next_token_loss, resolve_loss_impl
from medkor.model.policies import old_rows_grad_mask

IMPLS = ["torch", "torch_recompute"]


def _case(seed=0, b=2, t=33, h=16, v=101, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(b, t, h, generator=g).to(dtype).requires_grad_(True)
    weight = torch.randn(v, h, generator=g).to(dtype).requires_grad_(True)
    labels = torch.randint(0, v, (b, t), generator=g)
    labels[0, :5] = IGNORE_INDEX
    labels[-1, -7:] = IGNORE_INDEX
    return hidden, weight, labels


def _naive(hidden, weight, labels, softcap=None):
    logits = hidden @ weight.T
    if softcap is not None:
        logits = torch.tanh(logits / softcap) * softcap
    return naive_cross_entropy(logits, labels)


def _close(ours, theirs, tol=1e-5):
    torch.testing.assert_close(ours, theirs, rtol=tol, atol=tol * 0.1)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("softcap", [None, 3.0])
@pytest.mark.parametrize("shape,chunk", [((2, 33, 16, 101), 7), ((1, 65, 24, 3001), 64), ((3, 5, 8, 40), 4096),
                                         ((1, 17, 32, 517), 1)])
def test_matches_naive_value_and_gradients(impl, softcap, shape, chunk):
    b, t, h, v = shape
    hidden, weight, labels = _case(seed=t, b=b, t=t, h=h, v=v)
    naive = _naive(hidden, weight, labels, softcap)
    gh, gw = torch.autograd.grad(naive, (hidden, weight))
    loss, count = next_token_loss(hidden, weight, labels, chunk, softcap, impl)
    ch, cw = torch.autograd.grad(loss, (hidden, weight))
    assert count == int((labels[:, 1:] != IGNORE_INDEX).sum())
    assert loss.dtype == torch.float32 and abs(loss.item() - naive.item()) < 1e-5
    _close(ch, gh)
    _close(cw, gw)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("tied", [True, False])
def test_tied_and_untied_heads_through_an_embedding(impl, tied):
    """The head gradient adds to the input-embedding gradient of the same parameter when tied.

    Two micro-batches through backward(): the second one accumulates into existing
    gradients (straight into .grad with torch_recompute).
    """
    g = torch.Generator().manual_seed(3)
    embed = torch.randn(50, 12, generator=g).requires_grad_(True)
    head = embed if tied else torch.randn(50, 12, generator=g).requires_grad_(True)
    mix = torch.randn(12, 12, generator=g) * 0.3
    ids = torch.randint(0, 50, (2, 19), generator=g)
    params = [embed] if tied else [embed, head]

    def run(loss_fn):
        for p in params:
            p.grad = None
        for rows in (ids, ids.flip(0)):
            loss_fn(torch.tanh(embed[rows] @ mix), head, rows).backward()
        return [p.grad.clone() for p in params]

    expected = run(lambda h, w, y: _naive(h, w, y))
    got = run(lambda h, w, y: next_token_loss(h, w, y, 5, None, impl)[0])
    for ours, theirs in zip(got, expected):
        _close(ours, theirs)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("softcap", [None, 2.5])
def test_accumulation_over_micro_batches_and_scaled_backward(impl, softcap):
    """Two backward() calls add into .grad; a scaled loss (a loss scaler's) scales the gradients."""
    hidden, weight, labels = _case(seed=4)
    hidden2, _, labels2 = _case(seed=5)
    for h, y, scale in ((hidden, labels, 1.0), (hidden2, labels2, 8.0)):
        (_naive(h, weight, y, softcap) * scale).backward()
    expected_w, expected_h = weight.grad.clone(), hidden2.grad.clone()
    weight.grad = hidden.grad = hidden2.grad = None
    for h, y, scale in ((hidden, labels, 1.0), (hidden2, labels2, 8.0)):
        (next_token_loss(h, weight, y, 6, softcap, impl)[0] * scale).backward()
    _close(weight.grad, expected_w)
    _close(hidden2.grad, expected_h)


@pytest.mark.parametrize("impl", IMPLS)
def test_new_embeddings_mask_keeps_old_rows_at_zero(impl):
    """The policy's old-row hook sees the whole head gradient, also when accumulating."""
    hidden, weight, labels = _case(seed=6)
    n_old = 60
    hook = old_rows_grad_mask(weight, n_old)
    for _ in range(2):
        _naive(hidden, weight, labels).backward()
    expected = weight.grad.clone()
    weight.grad = None
    for _ in range(2):
        next_token_loss(hidden, weight, labels, 8, None, impl)[0].backward()
    hook.remove()
    assert torch.count_nonzero(weight.grad[:n_old]) == 0
    assert torch.count_nonzero(weight.grad[n_old:]) > 0
    _close(weight.grad, expected)


class _HeadSizedTensors(TorchDispatchMode):
    """Records the storages of every op output with the head's shape that no tensor had before."""

    def __init__(self, shape, known):
        super().__init__()
        self.shape, self.known, self.new = shape, set(known), []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor) and t.shape == self.shape:
                ptr = t.untyped_storage().data_ptr()
                if ptr not in self.known:
                    self.known.add(ptr)
                    self.new.append(ptr)
        return out


def _head_buffers(weight, step):
    known = [weight.untyped_storage().data_ptr()]
    if weight.grad is not None:
        known.append(weight.grad.untyped_storage().data_ptr())
    with _HeadSizedTensors(weight.shape, known) as mode:
        step()
    return mode.new


@pytest.mark.parametrize("impl", IMPLS)
def test_one_head_sized_gradient_buffer_becomes_grad(impl):
    """After zero_grad(set_to_none): one head-sized buffer in forward + backward, and it is .grad (no copy)."""
    hidden, weight, labels = _case(seed=7, v=4001, h=8)
    new = _head_buffers(weight, lambda: next_token_loss(hidden, weight, labels, 16, 2.0, impl)[0].backward())
    assert new == [weight.grad.untyped_storage().data_ptr()]


def test_recompute_accumulates_straight_into_existing_grad():
    """An accumulation micro-batch allocates no second head-sized buffer with torch_recompute (torch needs one)."""
    hidden, weight, labels = _case(seed=8, v=4001, h=8)
    next_token_loss(hidden, weight, labels, 16, None, "torch_recompute")[0].backward()
    before = weight.grad.clone()
    grad_ptr = weight.grad.untyped_storage().data_ptr()

    def step(impl):
        return lambda: next_token_loss(hidden, weight, labels, 16, None, impl)[0].backward()

    assert _head_buffers(weight, step("torch_recompute")) == []
    assert weight.grad.untyped_storage().data_ptr() == grad_ptr
    _close(weight.grad, 2 * before)
    assert len(_head_buffers(weight, step("torch"))) == 1
    _close(weight.grad, 3 * before)


def test_recompute_returns_its_buffer_under_a_process_group():
    """DDP/FSDP learn of a ready gradient from autograd's accumulation: with a process group, no bypass."""
    import torch.distributed as dist

    hidden, weight, labels = _case(seed=14, v=4001, h=8)
    next_token_loss(hidden, weight, labels, 16, None, "torch_recompute")[0].backward()
    before = weight.grad.clone()
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        new = _head_buffers(weight, lambda: next_token_loss(hidden, weight, labels, 16, None, "torch_recompute")[0]
                            .backward())
    finally:
        dist.destroy_process_group()
    assert len(new) == 1
    _close(weight.grad, 2 * before)


def test_recompute_under_autograd_grad_leaves_existing_grad_alone():
    hidden, weight, labels = _case(seed=9)
    weight.grad = torch.full_like(weight, 7.0)
    loss, _ = next_token_loss(hidden, weight, labels, 8, None, "torch_recompute")
    (gw,) = torch.autograd.grad(loss, (weight,))
    _close(gw, torch.autograd.grad(_naive(hidden, weight, labels), (weight,))[0])
    assert torch.equal(weight.grad, torch.full_like(weight, 7.0))


@pytest.mark.parametrize("impl", IMPLS)
def test_bfloat16_inputs(impl):
    """bf16 logits as the model forms them: the same loss; gradients within bf16 rounding of exact, like naive bf16's.

    The head gradient is one bf16 product per chunk (naive: one for all tokens), so its
    error may reach twice naive's, never more.
    """
    hidden, weight, labels = _case(seed=10, t=40, h=32, v=700, dtype=torch.bfloat16)
    naive = _naive(hidden, weight, labels)
    naive_grads = torch.autograd.grad(naive, (hidden, weight))
    loss, _ = next_token_loss(hidden, weight, labels, 16, None, impl)
    grads = torch.autograd.grad(loss, (hidden, weight))
    assert abs(loss.item() - naive.item()) < 1e-5
    # Exact: the same bf16 logits, everything after them in float64.
    h64, w64 = hidden.detach().double().requires_grad_(), weight.detach().double().requires_grad_()
    logits = (hidden @ weight.T).detach().double().requires_grad_()
    y = labels[:, 1:].reshape(-1)
    exact = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 700), y, ignore_index=IGNORE_INDEX)
    (g_logits,) = torch.autograd.grad(exact, (logits,))
    exact_grads = (g_logits @ w64, g_logits.reshape(-1, 700).T @ h64.reshape(-1, 32))
    for ours, theirs, ref in zip(grads, naive_grads, exact_grads):
        assert ours.dtype == torch.bfloat16
        err = (ours.double() - ref).abs().max().item()
        assert err <= (theirs.double() - ref).abs().max().item() * 2 + 1e-6


@pytest.mark.parametrize("impl", IMPLS)
def test_autocast_bfloat16_with_float32_head(impl):
    """bf16-mixed: the head stays float32 and gets a float32 gradient; the loss equals autocast naive's."""
    hidden, weight, labels = _case(seed=11, t=24, h=32, v=300)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        naive = _naive(hidden, weight, labels)
        loss, _ = next_token_loss(hidden, weight, labels, 8, None, impl)
    gw_naive = torch.autograd.grad(naive, (weight,))[0]
    gw = torch.autograd.grad(loss, (weight,))[0]
    assert abs(loss.item() - naive.item()) < 1e-5
    assert gw.dtype == torch.float32
    torch.testing.assert_close(gw, gw_naive, rtol=0.02, atol=2e-4)


@pytest.mark.parametrize("impl", IMPLS)
def test_no_labelled_token_gives_zero_with_a_gradient(impl):
    hidden, weight, labels = _case()
    labels[:] = IGNORE_INDEX
    loss, count = next_token_loss(hidden, weight, labels, 4, None, impl)
    loss.backward()
    assert count == 0 and loss.item() == 0.0
    assert torch.count_nonzero(hidden.grad) == 0 and torch.count_nonzero(weight.grad) == 0


def test_without_grad_equals_naive_and_builds_no_graph():
    hidden, weight, labels = _case(seed=12)
    with torch.no_grad():
        loss, _ = next_token_loss(hidden, weight, labels, 5, 3.0)
        naive = _naive(hidden, weight, labels, 3.0)
    assert not loss.requires_grad and abs(loss.item() - naive.item()) < 1e-5


@pytest.mark.parametrize("impl", IMPLS)
def test_frozen_head_gets_no_gradient_and_bad_chunk_is_refused(impl):
    hidden, weight, labels = _case()
    weight = weight.detach()
    next_token_loss(hidden, weight, labels, 8, None, impl)[0].backward()
    _close(hidden.grad, torch.autograd.grad(_naive(hidden, weight, labels), (hidden,))[0])
    with pytest.raises(ValueError, match="chunk_size"):
        next_token_loss(hidden, weight, labels, chunk_size=0)


# ---- backend selection -----------------------------------------------------------
@pytest.fixture
def fresh_announcements(monkeypatch):
    monkeypatch.setattr(loss_mod, "_announced", set())


def test_selection_without_the_cce_package(monkeypatch, caplog, fresh_announcements):
    monkeypatch.setattr(loss_mod, "cce_installed", lambda: False)
    cuda = torch.device("cuda")
    assert resolve_loss_impl("torch", cuda) == "torch"
    assert resolve_loss_impl("torch_recompute", cuda) == "torch_recompute"
    with pytest.raises(ValueError, match="loss_impl: cce cannot be used: the cut-cross-entropy package is not"):
        resolve_loss_impl("cce", cuda)
    with caplog.at_level(logging.INFO, logger="medkor.model.loss"):
        assert resolve_loss_impl("auto", cuda) == "torch"
        assert resolve_loss_impl("auto", cuda) == "torch"
    assert [r.getMessage() for r in caplog.records] == [
        "model.loss_impl: auto uses torch (the cut-cross-entropy package is not installed (pip install "
        "cut-cross-entropy))"]
    with pytest.raises(ValueError, match="'fast' is not one of torch, torch_recompute, cce, auto"):
        resolve_loss_impl("fast", cuda)


def test_selection_with_the_cce_package(monkeypatch, fresh_announcements):
    monkeypatch.setattr(loss_mod, "cce_installed", lambda: True)
    assert resolve_loss_impl("cce", torch.device("cuda")) == "cce"
    assert resolve_loss_impl("auto", torch.device("cuda")) == "cce"
    assert resolve_loss_impl("auto", torch.device("cpu")) == "torch"
    with pytest.raises(ValueError, match="CUDA tensors only, and these are on cpu"):
        resolve_loss_impl("cce", torch.device("cpu"))


def test_cce_gets_the_shifted_tokens_and_the_kahan_impl(monkeypatch):
    """What medkor hands Cut Cross-Entropy (the package itself needs CUDA): filtered pairs, softcap, impl."""
    seen = {}

    def linear_cross_entropy(e, c, targets, softcap=None, reduction="mean", impl=None):
        seen.update(shape=tuple(e.shape), softcap=softcap, reduction=reduction, impl=impl)
        return torch.nn.functional.cross_entropy(e @ c.T, targets)  # the plain loss; softcap only recorded

    fake = types.SimpleNamespace(linear_cross_entropy=linear_cross_entropy)
    monkeypatch.setitem(sys.modules, "cut_cross_entropy", fake)
    monkeypatch.setattr(loss_mod, "resolve_loss_impl", lambda requested, device: "cce")
    hidden, weight, labels = _case(seed=13)
    loss, count = next_token_loss(hidden, weight, labels, impl="cce", softcap=4.0)
    assert seen == {"shape": (count, 16), "softcap": 4.0, "reduction": "mean", "impl": "cce_kahan_full_c"}
    assert abs(loss.item() - _naive(hidden, weight, labels).item()) < 1e-5


def test_module_checks_loss_impl(assets, monkeypatch):
    from medkor.model import MedGemmaModule

    with pytest.raises(ValueError, match="model.loss_impl 'fast' is not one of torch, torch_recompute, cce, auto"):
        MedGemmaModule(str(assets["text"]), loss_impl="fast")
    monkeypatch.setattr("medkor.model.module.cce_installed", lambda: False)
    with pytest.raises(ValueError, match="model.loss_impl: cce needs the cut-cross-entropy package"):
        MedGemmaModule(str(assets["text"]), loss_impl="cce")
    assert MedGemmaModule(str(assets["text"]), loss_impl="auto").hparams.loss_impl == "auto"


@pytest.mark.parametrize("impl", IMPLS)
def test_module_loss_equals_transformers_loss(assets, impl):
    from medkor.model import MedGemmaModule

    module = MedGemmaModule(str(assets["text"]), str(assets["ext_tok"]), trainable="full", loss_chunk_size=3,
                            loss_impl=impl)
    ids = module.tokenizer([" 당뇨병성 신경병증 환자", " 심근경색 <dx> 고혈압은"], padding=True, return_tensors="pt")
    labels = ids["input_ids"].masked_fill(ids["attention_mask"] == 0, IGNORE_INDEX)
    batch = {"input_ids": ids["input_ids"], "attention_mask": ids["attention_mask"], "labels": labels}
    ours, _ = module.loss(batch)
    theirs = module.model(input_ids=ids["input_ids"], attention_mask=ids["attention_mask"], labels=labels).loss
    assert abs(ours.item() - theirs.item()) < 1e-5
