"""Matplotlib figures for TensorBoard and reports: confusion matrix, worst misclassified images."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")  # headless: training machines have no display

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402


def confusion_matrix(targets: np.ndarray, preds: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts ``cm[true, pred]`` as an ``(num_classes, num_classes)`` int64 array."""
    flat = np.asarray(targets, dtype=np.int64) * num_classes + np.asarray(preds, dtype=np.int64)
    return np.bincount(flat, minlength=num_classes**2).reshape(num_classes, num_classes)


def confusion_matrix_figure(cm: np.ndarray, class_names: Sequence[str], title: str = "") -> Figure:
    """Row-normalised confusion matrix (colour = recall share), counts written when few classes."""
    n = len(class_names)
    side = min(18.0, max(5.0, 0.32 * n + 2.5))
    fig, ax = plt.subplots(figsize=(side, side * 0.9), dpi=90)
    rows = cm.sum(axis=1, keepdims=True)
    share = np.divide(cm, rows, out=np.zeros(cm.shape, dtype=np.float64), where=rows > 0)
    im = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="share of true class")
    font = max(4, 10 - n // 8)
    ax.set_xticks(range(n), [str(c) for c in class_names], rotation=90, fontsize=font)
    ax.set_yticks(range(n), [str(c) for c in class_names], fontsize=font)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if n <= 20:  # counts stay legible up to about 20 classes
        for i in range(n):
            for j in range(n):
                if cm[i, j]:
                    ax.text(
                        j,
                        i,
                        str(cm[i, j]),
                        ha="center",
                        va="center",
                        fontsize=font,
                        color="white" if share[i, j] > 0.5 else "black",
                    )
    acc = np.trace(cm) / max(1, cm.sum())
    ax.set_title(f"{title} (accuracy {acc:.4f}, {int(cm.sum())} images)".strip())
    fig.tight_layout()
    return fig


def worst_images_figure(
    images: Sequence[np.ndarray],
    true: Sequence[int],
    pred: Sequence[int],
    confidence: Sequence[float],
    class_names: Sequence[str],
    title: str = "",
) -> Figure:
    """A grid of images (uint8 CHW or HWC) titled with true and predicted class names.

    Args:
        images: The images, most wrong first.
        true: True class index per image.
        pred: Predicted class index per image.
        confidence: Predicted probability of the (wrong) predicted class.
        class_names: Names in label order.
        title: Figure title.
    """
    n = len(images)
    cols = min(8, max(1, n))
    rows = max(1, -(-n // cols))
    fig, axes = plt.subplots(
        rows, cols, figsize=(1.9 * cols, 2.3 * rows + 0.4), dpi=90, squeeze=False
    )
    for ax in axes.flat:
        ax.axis("off")
    for k, ax in enumerate(axes.flat[:n]):
        img = np.asarray(images[k])
        if img.ndim == 3 and img.shape[0] in (1, 3) and img.shape[-1] not in (1, 3):
            img = img.transpose(1, 2, 0)
        if img.dtype != np.uint8:
            img = np.clip(img * (255.0 if img.max() <= 1.0 else 1.0), 0, 255).astype(np.uint8)
        ax.imshow(
            img.squeeze(), cmap="gray" if img.shape[-1] == 1 else None, interpolation="nearest"
        )
        ax.set_title(
            f"true: {_short(class_names[true[k]])}\npred: {_short(class_names[pred[k]])} ({confidence[k]:.2f})",
            fontsize=7,
            color="darkred",
        )
    if n == 0:
        axes.flat[0].text(0.5, 0.5, "no misclassified images", ha="center", va="center")
    fig.suptitle(title or "worst misclassified", fontsize=10)
    fig.tight_layout()
    return fig


def _short(name: str, width: int = 18) -> str:
    return name if len(name) <= width else name[: width - 1] + "…"
