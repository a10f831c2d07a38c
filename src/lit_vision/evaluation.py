"""Evaluation data for the run report: a synced confusion matrix, the worst mistakes, weak classes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from torchmetrics.classification import MulticlassConfusionMatrix

from lit_vision import figures

# A class is weak when its recall is more than this below the balanced accuracy.
WEAK_MARGIN = 0.10


class WorstMistakes:
    """The ``k`` most confidently wrong images (highest loss) of one evaluation epoch.

    Args:
        k: How many to keep (0: none).
    """

    def __init__(self, k: int) -> None:
        self.k = k
        self.items: list[
            tuple[float, np.ndarray, int, int, float]
        ] = []  # loss, image, true, pred, conf

    def add(self, images: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor) -> None:
        """Keep the batch's worst mistakes if they are worse than those kept so far."""
        if self.k <= 0:
            return
        probs = logits.detach().float().softmax(dim=1)
        conf, pred = probs.max(dim=1)
        wrong = (pred != targets).nonzero().flatten()
        if len(wrong) == 0:
            return
        loss = -probs[wrong, targets[wrong]].clamp_min(1e-12).log()
        for j in loss.argsort(descending=True)[: self.k].tolist():
            i = int(wrong[j])
            self.items.append(
                (
                    float(loss[j]),
                    images[i].detach().cpu().numpy(),
                    int(targets[i]),
                    int(pred[i]),
                    float(conf[i]),
                )
            )
        self.items = sorted(self.items, key=lambda w: -w[0])[: self.k]


class LogitsTap:
    """Keeps the module's last forward output, for steps that do not return ``{"logits": ...}``."""

    def __init__(self) -> None:
        self.handle: Any = None
        self.logits: torch.Tensor | None = None

    def attach(self, module: torch.nn.Module) -> None:
        if self.handle is None:
            self.handle = module.register_forward_hook(self._hook)

    def detach(self) -> None:
        if self.handle is not None:
            self.handle.remove()
            self.handle = None

    def _hook(self, module: torch.nn.Module, inputs: Any, output: Any) -> None:
        # Evaluation forwards only (a training output would keep its autograd graph alive), and
        # tensors only: under DDP the step itself runs as a forward of the module (Lightning's
        # forward redirection) and returns None after the inner forward gave the logits.
        if not module.training and isinstance(output, torch.Tensor):
            self.logits = output

    def take(self, outputs: Any) -> torch.Tensor | None:
        logits = outputs.get("logits") if isinstance(outputs, dict) else None
        logits, self.logits = (logits if logits is not None else self.logits), None
        return logits


class EvalCollector:
    """What one validation/test epoch predicted: a confusion matrix and the worst mistakes.

    The confusion matrix is a torchmetrics ``MulticlassConfusionMatrix`` on the module's
    device, updated from each step's logits (``outputs["logits"]`` when the step returns it,
    else the module's forward output) and synced over all processes by ``compute()``, so under
    DDP it counts every sample once. The worst mistakes are rank 0's shard only (the figure is
    drawn there; gathering images from every rank is not worth its cost).

    Args:
        worst_k: Worst mistakes kept (0: none).
    """

    def __init__(self, worst_k: int) -> None:
        self.worst_k = worst_k
        self._tap = LogitsTap()
        self._confusion: MulticlassConfusionMatrix | None = None
        self._worst: WorstMistakes | None = None

    def attach(self, module: torch.nn.Module) -> None:
        """Watch the module's forward outputs."""
        self._tap.attach(module)

    def detach(self) -> None:
        """Stop watching."""
        self._tap.detach()

    def start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Reset for a new evaluation epoch (nothing is collected during the sanity check)."""
        self._worst = None
        if trainer.sanity_checking:
            return
        n = int(
            getattr(pl_module, "num_classes", 0)
            or len(getattr(pl_module, "class_names", None) or [])
        )
        if n and (self._confusion is None or self._confusion.num_classes != n):
            self._confusion = MulticlassConfusionMatrix(n)
        if self._confusion is not None:
            self._confusion = self._confusion.to(pl_module.device)
            self._confusion.reset()
        self._worst = WorstMistakes(self.worst_k if trainer.global_rank == 0 else 0)

    def batch_end(self, outputs: Any, batch: Any) -> None:
        """Count one ``(images, targets)`` batch's predictions."""
        logits = self._tap.take(outputs)
        if (
            self._worst is None
            or logits is None
            or not isinstance(batch, (list, tuple))
            or len(batch) < 2
        ):
            return
        if self._confusion is None:  # a module without num_classes: one process only
            self._confusion = MulticlassConfusionMatrix(logits.shape[1]).to(logits.device)
        self._confusion.update(logits.detach(), batch[1])
        if batch[0].dtype == torch.uint8:  # images; cached features have no picture
            self._worst.add(batch[0], logits, batch[1])

    def result(
        self, trainer: L.Trainer, pl_module: L.LightningModule
    ) -> tuple[np.ndarray, list[str], WorstMistakes | None] | None:
        """The epoch's confusion matrix over all processes, class names and worst mistakes.

        Every rank must call this after the same epoch (``compute()`` gathers); ``None`` when
        nothing was predicted.
        """
        worst, self._worst = self._worst, None
        metric = self._confusion
        if metric is None or (trainer.world_size == 1 and metric.update_count == 0):
            return None
        cm = metric.compute().cpu().numpy().astype(np.int64)
        metric.reset()
        if cm.sum() == 0:
            return None
        names = [str(c) for c in (getattr(pl_module, "class_names", None) or [])]
        return (
            cm,
            names if len(names) == cm.shape[0] else [str(i) for i in range(cm.shape[0])],
            worst,
        )


def log_figures(
    loggers: Sequence[TensorBoardLogger],
    stage: str,
    title: str,
    step: int,
    cm: np.ndarray,
    names: Sequence[str],
    worst: WorstMistakes | None,
    model: torch.nn.Module | None = None,
) -> None:
    """Log the confusion matrix (and the worst-mistakes grid) as ``STAGE/...`` images.

    Args:
        loggers: TensorBoard loggers to write to.
        stage: ``val`` or ``test``.
        title: Figure title, e.g. ``val epoch 3``.
        step: TensorBoard step.
        cm: ``cm[true, pred]`` counts.
        names: Class names in label order.
        worst: The worst mistakes, or ``None`` for no grid.
        model: The classifier: each grid image gets its Grad-CAM overlay of the predicted
            class beside it (none for models Grad-CAM cannot explain).
    """
    figs = {f"{stage}/confusion_matrix": figures.confusion_matrix_figure(cm, names, title)}
    if worst is not None:
        w = worst.items
        figs[f"{stage}/worst_misclassified"] = figures.worst_images_figure(
            [x[1] for x in w],
            [x[2] for x in w],
            [x[3] for x in w],
            [x[4] for x in w],
            names,
            f"{title}: {len(w)} worst misclassified (true / predicted, confidence)",
            worst_heatmaps(model, w) if model is not None else None,
        )
    for tag, fig in figs.items():
        for logger in loggers:
            logger.experiment.add_figure(tag, fig, global_step=step, close=False)
        figures.plt.close(fig)


def weak_classes(
    cm: np.ndarray, class_names: Sequence[str], balanced: float | None
) -> list[dict[str, Any]]:
    """Classes whose recall is more than :data:`WEAK_MARGIN` below the balanced accuracy.

    Args:
        cm: ``cm[true, pred]`` counts.
        class_names: Names in label order.
        balanced: The balanced accuracy (mean recall of the classes with images).

    Returns:
        Worst recall first: ``{"class", "recall", "support", "confused_with"}`` (the class its
        images are most often taken for, or ``None``).
    """
    if balanced is None:
        return []
    support = cm.sum(axis=1)
    off = cm - np.diag(np.diag(cm))
    weak = []
    for i in np.flatnonzero(support > 0):
        recall = float(cm[i, i] / support[i])
        if recall < balanced - WEAK_MARGIN:
            j = int(off[i].argmax())
            other = str(class_names[j]) if off[i, j] > 0 else None
            weak.append(
                {
                    "class": str(class_names[i]),
                    "recall": recall,
                    "support": int(support[i]),
                    "confused_with": other,
                }
            )
    return sorted(weak, key=lambda w: w["recall"])


def worst_heatmaps(model: torch.nn.Module, items: Sequence[tuple]) -> list[np.ndarray] | None:
    """Grad-CAM overlays of the predicted class for ``WorstMistakes.items`` (``None``: cannot)."""
    from lit_vision.gradcam import ExplainError, heatmaps, overlay

    if not items:
        return None
    images = torch.from_numpy(np.stack([x[1] for x in items])).to(next(model.parameters()).device)
    was_training = model.training
    model.eval()
    try:
        cams = heatmaps(model, images, [x[3] for x in items])
    except ExplainError:
        return None
    finally:
        model.train(was_training)
    return [overlay(x[1], cam, min_side=1) for x, cam in zip(items, cams, strict=True)]
