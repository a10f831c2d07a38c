"""Compatibility names: the augmentation code lives in :mod:`lit_vision.augment`.

``predict.py`` and ``models.py`` import ``apply`` and ``eval_transforms`` from here; new code
imports from :mod:`lit_vision.augment`.
"""

from __future__ import annotations

from lit_vision.augment import (
    AugmentSettings,
    BatchAugment,
    apply,
    eval_transforms,
    train_transforms,
)

__all__ = ["AugmentSettings", "BatchAugment", "apply", "eval_transforms", "train_transforms"]
