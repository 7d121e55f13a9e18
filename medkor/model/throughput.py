"""Tokens per second and model FLOPs utilisation (MFU)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Optional

if TYPE_CHECKING:
    import torch


def peak_tflops_for(device: torch.device, dtype: Optional[torch.dtype] = None) -> Optional[float]:
    """Peak TFLOP/s of a CUDA `device` for `dtype` (default bf16) from Lightning's table, or None when unknown.

    Lightning's `get_available_flops` tells H100 SXM, PCIe and NVL apart by the name's
    memory type; it reads "NVIDIA L40" and "NVIDIA L40S" as its "l4" entry (the name
    contains "l4"), a figure 1.5-3x too low, so those give None: no MFU rather than a
    wrong one (`model.peak_tflops` sets it by hand).
    """
    import torch

    if device.type != "cuda":
        return None
    if "l40" in torch.cuda.get_device_name(device).lower():
        return None
    from lightning.fabric.utilities.throughput import get_available_flops

    flops = get_available_flops(device, dtype or torch.bfloat16)
    return flops / 1e12 if flops else None


def flops_per_token(text_config: Any, n_params: int, seq_len: int) -> float:
    """Training FLOPs per token: 6 x parameters in matmuls plus attention scores.

    `n_params` should count the weights a token passes through (decoder layers and
    the output head, not the embedding lookup). Frozen weights still cost their
    forward and input-gradient FLOPs, so 6N is the usual approximation for all
    policies.
    """
    layers = text_config.num_hidden_layers
    attn_width = text_config.num_attention_heads * text_config.head_dim
    return 6.0 * n_params + 12.0 * layers * attn_width * seq_len


class ThroughputMeter:
    """Tokens/s between consecutive ticks (the training step ticks at logging steps; data loading included).

    Only host numbers: token counts come from the collate, so counting reads nothing
    from the device. Between two logging steps the host does not wait for the device,
    so only a window that ends at a read (a logging step) times the device's work.
    """

    def __init__(self) -> None:
        self._last: Optional[float] = None
        self._tokens = 0

    def add(self, tokens: int) -> None:
        """Count tokens of a micro-batch."""
        self._tokens += tokens

    def tick(self) -> Optional[float]:
        """Tokens per second since the previous tick (None on the first)."""
        now = time.perf_counter()
        rate = None
        if self._last is not None and now > self._last:
            rate = self._tokens / (now - self._last)
        self._last, self._tokens = now, 0
        return rate
