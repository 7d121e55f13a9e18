"""Which training steps may read values from the device.

Reading a device tensor on the host (`.item()`, `bool(t)`, ...) makes the host wait
until the device has finished everything queued before it. medkor's training step
reads nothing between logging steps: metrics stay tensors, the non-finite check is
decided on the device, and all of it is read at the steps Lightning logs anyway
(`trainer.log_every_n_steps`), where the logger's own read already waits.
"""

from __future__ import annotations

from typing import Any


def is_logging_step(trainer: Any) -> bool:
    """Whether the optimizer step of the current batch logs its metrics.

    True from `on_train_batch_start` to `on_train_batch_end` of a batch whose step logs
    (Lightning's own test, which counts the step about to finish), at a stop, and on
    every batch of `fast_dev_run`; false on a batch that only accumulates gradients.
    """
    if getattr(trainer, "fast_dev_run", False):
        return True
    loop = trainer.fit_loop
    if trainer.lightning_module.automatic_optimization and loop._should_accumulate():
        return False
    return bool(trainer._logger_connector.should_update_logs)


# Steps between reads when the run logs nothing (`log_every_n_steps: 0`): checks still get read.
READ_EVERY_WITHOUT_LOGGING = 50


def is_reading_step(trainer: Any) -> bool:
    """Whether checks kept on the device are read at the end of this batch's step.

    The logging steps, or every `READ_EVERY_WITHOUT_LOGGING` steps in a run that logs nothing.
    """
    if is_logging_step(trainer):
        return True
    if trainer.log_every_n_steps:
        return False
    if trainer.lightning_module.automatic_optimization and trainer.fit_loop._should_accumulate():
        return False
    step = trainer.fit_loop.epoch_loop._batches_that_stepped + 1
    return bool(trainer.should_stop) or step % READ_EVERY_WITHOUT_LOGGING == 0
