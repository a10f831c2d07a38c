"""Temperature scaling: fit one softmax temperature on validation logits; ECE and reliability bins.

Guo et al. 2017, "On Calibration of Modern Neural Networks": divide the logits by a scalar
``T`` fitted by minimising the negative log-likelihood on held-out data (LBFGS). ``T`` changes
no prediction (the arg-max is the same), only how confident the probabilities are:
``probs = softmax(logits / T)``. The expected calibration error (ECE, 15 equal-width bins) is
torchmetrics' ``MulticlassCalibrationError``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torchmetrics.functional.classification import multiclass_calibration_error

# Equal-width confidence bins for the ECE and the reliability diagram (Guo et al. use 15).
N_BINS = 15
# Temperatures outside this range mean a degenerate validation set (e.g. all correct at 100%
# confidence, where the NLL keeps falling as T -> 0): the fit is clamped to it.
T_RANGE = (0.05, 20.0)
METHOD = "temperature scaling: T minimises the NLL of softmax(logits / T) on val (LBFGS)"


def fit_temperature(logits: torch.Tensor, targets: torch.Tensor, max_iter: int = 200) -> float:
    """The temperature ``T`` minimising the NLL of ``softmax(logits / T)`` (LBFGS over log T).

    Args:
        logits: ``(N, C)`` class scores (any float dtype; inference tensors are fine).
        targets: ``(N,)`` true class indices.
        max_iter: LBFGS iterations.

    Returns:
        ``T`` clamped to :data:`T_RANGE`; 1.0 when there is nothing to fit.
    """
    if len(logits) == 0:
        return 1.0
    with torch.inference_mode(False), torch.enable_grad():
        # Clones leave inference mode: tensors from a validation loop cannot be saved for backward.
        z = logits.detach().float().cpu().clone()
        y = targets.detach().long().cpu().clone()
        log_t = torch.zeros(1, requires_grad=True)
        opt = torch.optim.LBFGS([log_t], lr=0.5, max_iter=max_iter, line_search_fn="strong_wolfe")

        def closure() -> torch.Tensor:
            opt.zero_grad()
            loss = F.cross_entropy(z / log_t.exp(), y)
            loss.backward()
            return loss

        opt.step(closure)
        t = float(log_t.detach().exp())
    if not math.isfinite(t):
        return 1.0
    return min(max(t, T_RANGE[0]), T_RANGE[1])


def expected_calibration_error(
    probs: torch.Tensor, targets: torch.Tensor, n_bins: int = N_BINS
) -> float:
    """ECE: the confidence-weighted gap between confidence and accuracy over ``n_bins`` bins.

    Args:
        probs: ``(N, C)`` class probabilities.
        targets: ``(N,)`` true class indices.
        n_bins: Equal-width confidence bins.
    """
    if len(probs) == 0:
        return float("nan")
    ece = multiclass_calibration_error(
        probs.float().cpu(), targets.long().cpu(), probs.shape[1], n_bins=n_bins, norm="l1"
    )
    return float(ece)


def reliability_bins(
    probs: torch.Tensor, targets: torch.Tensor, n_bins: int = N_BINS
) -> list[dict[str, float]]:
    """Per confidence bin: its range, image count, mean confidence and accuracy (diagram data).

    Args:
        probs: ``(N, C)`` class probabilities.
        targets: ``(N,)`` true class indices.
        n_bins: Equal-width confidence bins.
    """
    conf, pred = probs.float().cpu().max(dim=1)
    correct = (pred == targets.long().cpu()).float()
    # Bins (lo, hi], as torchmetrics draws them; confidence is never 0 for a softmax.
    index = (conf * n_bins).ceil().long().clamp(1, n_bins) - 1
    bins = []
    for b in range(n_bins):
        sel = index == b
        n = int(sel.sum())
        bins.append(
            {
                "lo": b / n_bins,
                "hi": (b + 1) / n_bins,
                "count": n,
                "confidence": float(conf[sel].mean()) if n else float("nan"),
                "accuracy": float(correct[sel].mean()) if n else float("nan"),
            }
        )
    return bins


def calibrate_logits(
    logits: torch.Tensor, targets: torch.Tensor, n_bins: int = N_BINS
) -> dict[str, Any]:
    """Fit the temperature and measure calibration before and after it.

    Args:
        logits: ``(N, C)`` validation logits.
        targets: ``(N,)`` true class indices.
        n_bins: Equal-width confidence bins for the ECE.

    Returns:
        Plain data: ``temperature``, ``ece_before``/``ece_after``, ``nll_before``/``nll_after``,
        ``accuracy``, ``images``, ``bins``, ``method`` and the reliability bins
        (``reliability_before``/``reliability_after``).
    """
    z = logits.detach().float().cpu()
    y = targets.detach().long().cpu()
    t = fit_temperature(z, y)
    before, after = z.softmax(dim=1), (z / t).softmax(dim=1)
    return {
        "temperature": t,
        "ece_before": expected_calibration_error(before, y, n_bins),
        "ece_after": expected_calibration_error(after, y, n_bins),
        "nll_before": float(F.cross_entropy(z, y)) if len(z) else float("nan"),
        "nll_after": float(F.cross_entropy(z / t, y)) if len(z) else float("nan"),
        "accuracy": float((z.argmax(dim=1) == y).float().mean()) if len(z) else float("nan"),
        "images": len(z),
        "bins": n_bins,
        "method": METHOD,
        "reliability_before": reliability_bins(before, y, n_bins),
        "reliability_after": reliability_bins(after, y, n_bins),
    }


def checkpoint_entry(summary: dict[str, Any], split: str = "val") -> dict[str, Any]:
    """What a checkpoint records about its temperature (the summary without the bins)."""
    keep = ("ece_before", "ece_after", "nll_before", "nll_after", "accuracy", "images", "bins")
    return {"split": split, "method": METHOD, **{k: summary[k] for k in keep}}
