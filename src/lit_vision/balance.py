"""Class imbalance: how skewed the training classes are, and the off/auto/on choices it drives.

Two remedies exist and only one should be on at a time (both together over-correct: the
sampler already shows every class equally often, and weights would then favour rare classes
again): ``model.class_weights`` (a class-weighted loss, the default under ``auto``) and
``data.balance`` (a class-balanced training order, ``off`` by default). When the sampler is
on, the model turns its class weights off and says so in one line.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

Balance = Literal["off", "auto", "on"]

# "auto" switches a remedy on when the largest class has more than this many times the images
# of the smallest (4:1 and 7:1 are common in real folders; 2:1 needs no correction).
IMBALANCE_RATIO = 3.0


def imbalance_ratio(counts: Sequence[int]) -> float:
    """Images of the largest class over those of the smallest (``inf`` with an empty class).

    Args:
        counts: Training images per class.
    """
    if not counts:
        return 1.0
    smallest, largest = min(counts), max(counts)
    return float("inf") if smallest == 0 else largest / smallest


def resolve(mode: Balance, counts: Sequence[int] | None, key: str) -> bool:
    """Whether an ``off``/``auto``/``on`` remedy is on for these class counts.

    Args:
        mode: ``off``, ``auto`` (on when :func:`imbalance_ratio` exceeds
            :data:`IMBALANCE_RATIO`) or ``on``.
        counts: Training images per class; ``None`` (unknown) leaves ``auto`` off.
        key: The setting's name, for the error message.

    Raises:
        ValueError: ``mode`` is none of the three.
    """
    if mode not in ("off", "auto", "on"):
        raise ValueError(f"{key} must be 'off', 'auto' or 'on', not {mode!r}")
    if mode == "auto":
        return counts is not None and imbalance_ratio(counts) > IMBALANCE_RATIO
    return mode == "on"


def inverse_frequency_weights(counts: Sequence[int]) -> list[float]:
    """Per-class weights inverse to the class frequency, with mean 1 over the classes.

    scikit-learn's ``"balanced"`` formula ``n / (k * count)``, rescaled so the weights average
    exactly 1; a class without images gets weight 0 (it contributes no loss anyway).

    Args:
        counts: Training images per class.

    Returns:
        One weight per class.
    """
    n, k = sum(counts), len(counts)
    raw = [n / (k * c) if c > 0 else 0.0 for c in counts]
    mean = sum(raw) / k if k else 1.0
    return [w / mean for w in raw] if mean > 0 else [1.0] * k


def per_class(samples: Sequence[tuple[object, int]], num_classes: int) -> list[int]:
    """Images per class of ``(path, class_index)`` samples, in label order.

    Args:
        samples: The split's samples.
        num_classes: Number of classes (classes without images count 0).
    """
    counts = [0] * num_classes
    for _, target in samples:
        counts[target] += 1
    return counts


def sampler_on(datamodule: object) -> bool:
    """Whether ``datamodule``'s training order is class-balanced (its ``balance``, resolved).

    Args:
        datamodule: A DataModule with a ``balance`` hyperparameter and ``class_counts``
            (anything else: ``False``).
    """
    hparams = getattr(datamodule, "hparams", None) or {}
    mode = hparams.get("balance", "off")
    if mode == "off":
        return False
    return resolve(mode, getattr(datamodule, "class_counts", None), "data.balance")


def balanced(datamodule: object) -> list[int] | None:
    """The training samples' class indices when the order is class-balanced, else ``None``.

    Args:
        datamodule: An ``ImageFolderDataModule`` whose training dataset is built.
    """
    return list(datamodule.datasets["train"].targets) if sampler_on(datamodule) else None
