"""Tokens per second and model FLOPs utilisation (MFU)."""

from __future__ import annotations

import time
from typing import Any, Optional

# Dense bf16 peak TFLOP/s (no sparsity) by substring of torch.cuda.get_device_name().
PEAK_BF16_TFLOPS = {
    "H200": 989.0,
    "H100": 989.0,
    "A100": 312.0,
    "L40S": 362.0,
    "A6000": 155.0,
    "L4": 121.0,
    "4090": 165.0,
    "A10": 125.0,
}


def peak_tflops_for(device_name: str) -> Optional[float]:
    """Known bf16 peak of a GPU, or None."""
    for key, value in PEAK_BF16_TFLOPS.items():
        if key in device_name:
            return value
    return None


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
    """Tokens/s between consecutive optimizer-step ends (data loading included)."""

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
