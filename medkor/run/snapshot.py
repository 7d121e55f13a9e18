"""A point-in-time copy of a checkpoint in host memory, so it can be written while training goes on.

The optimizer step after a save changes weights and moments in place; a writer in
another thread must therefore get copies. `HostSnapshot.take` walks the checkpoint on
the calling thread (dicts, lists, tuples rebuilt; other values shared, they are plain
data) and gives every tensor a host buffer, reused from the previous snapshot when the
shapes match (a fresh 1 GB buffer costs a page fault per page the first time):
- CUDA tensors: `copy_(non_blocking=True)` into pinned host buffers, queued at once
  on the current stream. The training thread does not wait: the copies run before any
  later kernel of that stream (the next step's updates included), and the writer
  waits on a CUDA event recorded after them. The device holds no second copy.
- CPU tensors: the copies are returned as `Snapshot.copies`, for the writer thread to
  run (`Snapshot.copy_now`) while the next step's forward and backward only read the
  weights; whoever changes weights or optimizer state in place next (the optimizer
  step) first waits for `Snapshot.copied`.
A tensor that appears twice (tied weights) is copied once and stays shared, as
`torch.save` would store it.

Plain torch (no Lightning).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, Optional

import torch

_PLAIN = (torch.Tensor, torch.nn.Parameter)


@dataclass
class Snapshot:
    """A checkpoint whose tensors are host buffers, and what is left to fill them."""

    checkpoint: Any
    buffers: list[torch.Tensor]
    ready: Optional[Any] = None  # CUDA event after the queued device-to-host copies
    copies: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)  # (buffer, CPU source)
    copied: threading.Event = field(default_factory=threading.Event)

    def copy_now(self) -> None:
        """Fill the buffers (the CPU copies; then wait for the device's); sets `copied`."""
        try:
            for buffer, source in self.copies:
                buffer.copy_(source)
            self.copies = []
            if self.ready is not None:
                self.ready.synchronize()
        finally:
            self.copied.set()


class HostSnapshot:
    """Host copies of a checkpoint's tensors; buffers handed back with `release` are reused by the next `take`."""

    def __init__(self) -> None:
        self._spare: list[torch.Tensor] = []

    def take(self, checkpoint: Any, defer_cpu_copies: bool = False) -> Snapshot:
        """The checkpoint with its tensors in host buffers (CPU copies left to `copy_now` if `defer_cpu_copies`).

        Call `copy_now` before reading the buffers; hand them back with `release` once written.
        """
        spare, self._spare = list(self._spare), []
        used: list[torch.Tensor] = []
        memo: dict[tuple, torch.Tensor] = {}
        state = {"cuda": False}
        later: list[tuple[torch.Tensor, torch.Tensor]] = []

        def copy(tensor: torch.Tensor) -> torch.Tensor:
            if type(tensor) not in _PLAIN or tensor.device.type == "meta":
                return tensor.detach().clone()  # a subclass (DTensor, ...): copied as it is
            key = (tensor.device, tensor.dtype, tensor.untyped_storage().data_ptr(), tensor.storage_offset(),
                   tuple(tensor.shape), tuple(tensor.stride()))
            if key in memo:
                return memo[key]
            on_cuda = tensor.device.type == "cuda"
            buffer = None
            if spare and spare[0].shape == tensor.shape and spare[0].dtype == tensor.dtype and (
                    spare[0].is_pinned() or not on_cuda):
                buffer = spare.pop(0)
            if buffer is None:
                buffer = torch.empty(tensor.shape, dtype=tensor.dtype, device="cpu", pin_memory=on_cuda)
            if on_cuda or not defer_cpu_copies:
                buffer.copy_(tensor.detach(), non_blocking=on_cuda)
            else:
                later.append((buffer, tensor.detach()))
            state["cuda"] |= on_cuda
            used.append(buffer)
            memo[key] = buffer
            return buffer

        def walk(value: Any) -> Any:
            if isinstance(value, torch.Tensor):
                return copy(value)
            if isinstance(value, dict):
                items = [(k, walk(v)) for k, v in value.items()]
                try:
                    return type(value)(items)
                except TypeError:  # a dict subclass with another constructor (defaultdict): a plain dict
                    return dict(items)
            if isinstance(value, tuple) and hasattr(value, "_fields"):  # namedtuple
                return type(value)(*(walk(v) for v in value))
            if isinstance(value, (list, tuple)):
                return type(value)(walk(v) for v in value)
            return value

        copied = walk(checkpoint)
        ready = None
        if state["cuda"]:
            ready = torch.cuda.Event()
            ready.record()
        return Snapshot(copied, used, ready, later)

    def release(self, buffers: list[torch.Tensor]) -> None:
        """Keep `buffers` (of a snapshot that has been written) for the next `take`."""
        self._spare = buffers
