"""A callback for the resume tests: the process SIGKILLs itself when a given optimizer step begins."""

from __future__ import annotations

import os
import signal

from lightning.pytorch.callbacks import Callback


class KillAt(Callback):
    """Kill this process (SIGKILL: no clean-up, no handler) before the batch that starts at `step`."""

    def __init__(self, step: int, signum: int = int(signal.SIGKILL)) -> None:
        self.step = step
        self.signum = signum
        self._sent = False

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step and not self._sent:
            self._sent = True
            # after the checkpoints saved so far are on disk: a write still in flight in the background
            # would die with the process, and the resume would start from the checkpoint before it
            getattr(trainer.strategy.checkpoint_io, "wait", lambda: None)()
            os.kill(os.getpid(), self.signum)
