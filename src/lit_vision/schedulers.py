"""Learning-rate schedules that keep each parameter group's own learning rate."""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


class WarmupCosineLR(LambdaLR):
    """Linear warm-up, then cosine decay, as a factor on every group's base learning rate.

    Unlike ``OneCycleLR`` (one ``max_lr`` per group) this keeps the ratio between groups, so
    a backbone group at a tenth of the head's rate stays at a tenth throughout. Step it
    every optimizer step; ``total_steps=None`` is filled in by ``ImageClassifier`` from
    the trainer's estimate.

    Args:
        optimizer: Wrapped optimizer.
        total_steps: Optimizer steps of the whole run.
        warmup_fraction: Share of ``total_steps`` spent warming up from ``warmup_start``.
        warmup_start: Starting factor of the warm-up.
        final_factor: Factor reached at the end of the cosine.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        total_steps: int | None = None,
        warmup_fraction: float = 0.05,
        warmup_start: float = 0.1,
        final_factor: float = 0.01,
    ) -> None:
        if total_steps is None:
            raise ValueError("WarmupCosineLR needs total_steps (ImageClassifier fills it in)")
        total = max(1, int(total_steps))
        warmup = int(total * warmup_fraction)

        def factor(step: int) -> float:
            if step < warmup:
                return warmup_start + (1 - warmup_start) * step / max(1, warmup)
            progress = min(1.0, (step - warmup) / max(1, total - warmup))
            return final_factor + (1 - final_factor) * 0.5 * (1 + math.cos(math.pi * progress))

        self.total_steps = total
        super().__init__(optimizer, factor)
