"""What the run report adds to TensorBoard: the CUSTOM SCALARS layout and hparams with results."""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_warn

# Train and val curves on shared axes (TensorBoard's CUSTOM SCALARS tab; tags are regexes).
LAYOUT = {
    "lit_vision": {
        "loss: train vs val": ["Multiline", [r"^train/loss_epoch$", r"^val/loss$"]],
        "accuracy: train vs val": ["Multiline", [r"^train/acc$", r"^val/acc$"]],
        "balanced accuracy (macro recall): train vs val": [
            "Multiline",
            [r"^train/balanced_acc$", r"^val/balanced_acc$"],
        ],
        "macro F1: train vs val": ["Multiline", [r"^train/f1$", r"^val/f1$"]],
        "learning rate": ["Multiline", [r"^lr-"]],
        "phase (transfer: frozen/unfrozen)": ["Multiline", [r"^train/phase$"]],
    }
}


def tb_loggers(trainer: L.Trainer) -> list[TensorBoardLogger]:
    """The trainer's TensorBoard loggers on rank 0 (none under ``fast_dev_run`` or elsewhere).

    Args:
        trainer: The Lightning trainer.
    """
    if trainer.fast_dev_run or trainer.global_rank != 0:
        return []
    return [lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)]


def hparams_metrics(report: dict[str, Any]) -> dict[str, float]:
    """The HPARAMS tab's metrics from the report: best monitored score, final metrics, cost.

    ``hp_metric`` is the checkpoint monitor's best score (``hp/best_val_acc`` by default,
    ``hp/best_val_balanced_acc`` with ``--checkpoint.monitor val/balanced_acc``), else the
    final ``val/acc``.

    Args:
        report: The run report (``final_metrics``, ``checkpoints``, ``timing``, ``model``).
    """
    final = report["final_metrics"]
    ck = report.get("checkpoints", {})
    best = ck.get("best_score")
    monitor = str(ck.get("monitor") or "val/acc").replace("/", "_")
    nan = float("nan")
    return {
        "hp_metric": best if best is not None else final.get("val/acc", nan),
        f"hp/best_{monitor}": best if best is not None else nan,
        "hp/final_val_acc": final.get("val/acc", nan),
        "hp/final_val_balanced_acc": final.get("val/balanced_acc", nan),
        "hp/final_val_f1": final.get("val/f1", nan),
        "hp/final_val_loss": final.get("val/loss", nan),
        "hp/train_minutes": report["timing"]["train_total"] / 60,
        "hp/train_images_per_s": report["timing"]["train_images_per_s"] or 0.0,
        "hp/params_million": report["model"]["total_params"] / 1e6,
    }


def log_hparams(trainer: L.Trainer, pl_module: L.LightningModule, report: dict[str, Any]) -> bool:
    """Log the hyperparameters with :func:`hparams_metrics` to every TensorBoard logger.

    Args:
        trainer: The Lightning trainer.
        pl_module: The trained module.
        report: The run report.

    Returns:
        Whether there was a logger to write to.
    """
    loggers = tb_loggers(trainer)
    if not loggers:
        return False
    metrics = hparams_metrics(report)
    dm = trainer.datamodule
    extra = {
        "model_class": type(pl_module).__name__,
        "data_class": type(dm).__name__ if dm else None,
        "max_epochs": trainer.max_epochs,
        "precision": str(trainer.precision),
    }
    for logger in loggers:
        try:
            logger.log_hyperparams({**dict(logger.hparams), **extra}, metrics)
        except Exception as err:  # odd hparam values must not lose the report
            rank_zero_warn(f"lit_vision: could not log hparams to TensorBoard: {err}")
    return True
