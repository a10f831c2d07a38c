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
    heatmaps: Sequence[np.ndarray] | None = None,
) -> Figure:
    """A grid of images (uint8 CHW or HWC) titled with true and predicted class names.

    Args:
        images: The images, most wrong first.
        true: True class index per image.
        pred: Predicted class index per image.
        confidence: Predicted probability of the (wrong) predicted class.
        class_names: Names in label order.
        title: Figure title.
        heatmaps: Per image, a Grad-CAM overlay (uint8 HWC) of the predicted class, drawn
            beside it; ``None`` for images only.
    """
    n = len(images)
    per = 2 if heatmaps is not None else 1
    cols = min(8, max(per, n * per))
    rows = max(1, -(-n * per // cols))
    fig, axes = plt.subplots(
        rows, cols, figsize=(1.9 * cols, 2.3 * rows + 0.4), dpi=90, squeeze=False
    )
    for ax in axes.flat:
        ax.axis("off")
    for k in range(n):
        ax = axes.flat[k * per]
        img = _hwc_uint8(images[k])
        ax.imshow(
            img.squeeze(), cmap="gray" if img.shape[-1] == 1 else None, interpolation="nearest"
        )
        ax.set_title(
            f"true: {_short(class_names[true[k]])}\npred: {_short(class_names[pred[k]])} ({confidence[k]:.2f})",
            fontsize=7,
            color="darkred",
        )
        if heatmaps is not None:
            axes.flat[k * per + 1].imshow(heatmaps[k], interpolation="bilinear")
            axes.flat[k * per + 1].set_title("Grad-CAM of pred", fontsize=7)
    if n == 0:
        axes.flat[0].text(0.5, 0.5, "no misclassified images", ha="center", va="center")
    fig.suptitle(title or "worst misclassified", fontsize=10)
    fig.tight_layout()
    return fig


def _hwc_uint8(image: np.ndarray) -> np.ndarray:
    """An image as HWC uint8 (from CHW, or float 0-1 / 0-255)."""
    img = np.asarray(image)
    if img.ndim == 3 and img.shape[0] in (1, 3) and img.shape[-1] not in (1, 3):
        img = img.transpose(1, 2, 0)
    if img.dtype != np.uint8:
        img = np.clip(img * (255.0 if img.max() <= 1.0 else 1.0), 0, 255).astype(np.uint8)
    return img


def _short(name: str, width: int = 18) -> str:
    return name if len(name) <= width else name[: width - 1] + "…"


def reliability_figure(summary: dict, title: str = "") -> Figure:
    """Reliability diagram: accuracy per confidence bin before and after temperature scaling.

    Args:
        summary: ``lit_vision.calibration.calibrate_logits``' result (bins, ECEs, temperature).
        title: Figure title prefix, e.g. ``val epoch 9``.
    """
    fig, axes = plt.subplots(1, 2, figsize=(9.0, 4.4), dpi=90, sharey=True)
    t = summary["temperature"]
    for ax, key, label in (
        (axes[0], "before", "softmax(logits)"),
        (axes[1], "after", f"softmax(logits / {t:.3f})"),
    ):
        bins = summary[f"reliability_{key}"]
        centres = [(b["lo"] + b["hi"]) / 2 for b in bins]
        width = bins[0]["hi"] - bins[0]["lo"]
        acc = [b["accuracy"] if b["count"] else 0.0 for b in bins]
        conf = [b["confidence"] if b["count"] else 0.0 for b in bins]
        ax.bar(centres, acc, width=width * 0.95, color="tab:blue", label="accuracy")
        # The gap between confidence and accuracy, hatched (above the bar: over-confident).
        ax.bar(
            centres,
            np.abs(np.subtract(conf, acc)),
            bottom=np.minimum(conf, acc),
            width=width * 0.95,
            fill=False,
            hatch="//",
            edgecolor="tab:red",
            label="gap to confidence",
        )
        ax.plot([0, 1], [0, 1], "k--", linewidth=1)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("confidence (top probability)")
        ax.set_title(f"{label}\nECE {summary[f'ece_{key}']:.4f}", fontsize=9)
    axes[0].set_ylabel("accuracy")
    axes[0].legend(loc="upper left", fontsize=8)
    fig.suptitle(
        f"{title} reliability, {summary['images']} images, {summary['bins']} bins".strip(),
        fontsize=10,
    )
    fig.tight_layout()
    return fig
