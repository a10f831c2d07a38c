"""The classifier's metrics and loss: per-stage torchmetrics, and the class weights of the loss."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

from lit_vision.balance import (
    IMBALANCE_RATIO,
    Balance,
    imbalance_ratio,
    inverse_frequency_weights,
    resolve,
    sampler_on,
)

# What ``checkpoint.monitor`` (and early stopping) can watch, all "higher is better".
MONITORS = ("val/acc", "val/balanced_acc", "val/f1")


def stage_metrics(num_classes: int, prefix: str) -> MetricCollection:
    """Accuracy, balanced accuracy (macro recall) and macro F1, logged as ``PREFIX/NAME``.

    Args:
        num_classes: Number of classes.
        prefix: ``train/``, ``val/`` or ``test/``.
    """
    return MetricCollection(
        {
            "acc": MulticlassAccuracy(num_classes, average="micro"),
            "balanced_acc": MulticlassAccuracy(num_classes, average="macro"),
            "f1": MulticlassF1Score(num_classes, average="macro"),
        },
        prefix=prefix,
    )


def classification_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    weight: torch.Tensor | None = None,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """Cross-entropy, class-weighted when ``weight`` is given (a weighted mean over the batch).

    Args:
        logits: ``(N, C)`` class scores.
        targets: ``(N,)`` class indices.
        weight: ``(C,)`` class weights, or ``None``.
        label_smoothing: Label smoothing, applied with or without weights.
    """
    return F.cross_entropy(logits, targets, weight=weight, label_smoothing=label_smoothing)


def loss_class_weights(
    mode: Balance, datamodule: Any, device: torch.device | None = None
) -> torch.Tensor | None:
    """The loss's class weights for ``model.class_weights=mode``, and one line saying which.

    Weights are inverse to the training class counts (``datamodule.class_counts``), with mean
    1. ``auto`` turns them on when the largest class has more than 3x the images of the
    smallest. A class-balanced sampler (``data.balance``) turns them off: one remedy at a time.

    Args:
        mode: ``off``, ``auto`` or ``on``.
        datamodule: The trainer's DataModule (``None``, or one without ``class_counts``:
            no weights).
        device: Where the weights go (the module's device).

    Returns:
        One weight per class, or ``None`` for the plain loss.
    """
    counts = getattr(datamodule, "class_counts", None)
    if mode == "off":
        return None
    if sampler_on(datamodule):
        rank_zero_info(
            "lit_vision: class weights off, the balanced sampler (data.balance) is on "
            "(use one or the other)"
        )
        return None
    if counts is None:
        if mode == "on":
            rank_zero_warn("lit_vision: model.class_weights=on needs data.class_counts: off")
        return None
    ratio = imbalance_ratio(counts)
    if not resolve(mode, counts, "model.class_weights"):
        rank_zero_info(
            f"lit_vision: class weights off (classes {ratio:.1f}:1, auto needs > {IMBALANCE_RATIO:g}:1)"
        )
        return None
    weights = inverse_frequency_weights(counts)
    rank_zero_info(
        f"lit_vision: class weights on ({mode}; classes {ratio:.1f}:1): "
        + ", ".join(f"{w:.3f}" for w in weights)
    )
    return torch.tensor(weights, dtype=torch.float32, device=device)


def log_step(
    module: Any, stage: str, logits: torch.Tensor, targets: torch.Tensor, loss: torch.Tensor
) -> None:
    """Update and log a step's metrics (``STAGE_metrics``) and mean loss (``STAGE_loss``).

    The loss is a sample-weighted ``MeanMetric`` per stage: torchmetrics syncs float sums and
    weights, whereas ``self.log(sync_dist=True)`` floors the integer sample count when DDP
    ranks hold unequal val shares (Lightning issue #21859), inflating val/loss.

    Args:
        module: The LightningModule (with ``train_metrics``/``train_loss`` and so on).
        stage: ``train``, ``val`` or ``test``.
        logits: The batch's logits.
        targets: The batch's class indices.
        loss: The batch's loss.
    """
    metrics = getattr(module, f"{stage}_metrics")
    metrics.update(logits.detach(), targets)
    mean_loss = getattr(module, f"{stage}_loss")
    mean_loss(loss.detach(), len(targets))  # the step value (this rank's) and the epoch sum
    module.log(
        f"{stage}/loss",
        mean_loss,
        on_step=stage == "train",
        on_epoch=True,
        prog_bar=True,
        batch_size=len(targets),
    )
    module.log_dict(metrics, on_step=False, on_epoch=True, prog_bar=stage != "train")
