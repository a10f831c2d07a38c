"""Test-only callbacks that kill or signal the training process at a chosen batch."""

from __future__ import annotations

import os
import signal

import torch
from lightning.pytorch.callbacks import Callback


class SignalAt(Callback):
    """Send ``signal`` to this process when epoch ``epoch`` reaches batch ``batch``.

    Args:
        epoch: Epoch index.
        batch: Batch index within the epoch.
        signal: ``KILL`` (no chance to clean up) or ``TERM`` (pre-emption).
    """

    def __init__(self, epoch: int = 1, batch: int = 1, signal: str = "KILL") -> None:
        self.epoch, self.batch, self.signal = epoch, batch, signal

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
        if trainer.current_epoch == self.epoch and batch_idx == self.batch:
            os.kill(os.getpid(), getattr(signal, f"SIG{self.signal}"))


class PoisonAt(Callback):
    """Set the model's first parameter to NaN before batch ``batch`` of epoch ``epoch``.

    Args:
        epoch: Epoch index.
        batch: Batch index within the epoch.
    """

    def __init__(self, epoch: int = 1, batch: int = 1) -> None:
        self.epoch, self.batch = epoch, batch

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:  # noqa: ANN001
        if trainer.current_epoch == self.epoch and batch_idx == self.batch:
            with torch.no_grad():
                next(pl_module.parameters()).fill_(float("nan"))
