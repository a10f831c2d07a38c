"""Calibration of a checkpoint on ROOT/val: ECE before/after temperature scaling.

In-sample and cross-fitted (fit T on one half of val, measure on the other, and back), plus
what ``--min_confidence`` keeps. The logits are computed once.

    PYTHONPATH=src python bench/calibration.py --ckpt CKPT --root ROOT [--thresholds 0.9 0.99]
"""

from __future__ import annotations

import argparse
import time

import torch

from lit_vision.calibrate import logits_of
from lit_vision.calibration import calibrate_logits, expected_calibration_error, fit_temperature
from lit_vision.inputs import collect_inputs
from lit_vision.predict import load_classifier


def cross_fitted_ece(z: torch.Tensor, y: torch.Tensor, seed: int = 0) -> tuple[float, list[float]]:
    """ECE of softmax(z / T) where each half's T was fitted on the other half (mean of both)."""
    order = torch.randperm(len(z), generator=torch.Generator().manual_seed(seed))
    halves = [order[: len(z) // 2], order[len(z) // 2 :]]
    eces, temps = [], []
    for fit_on, test_on in (halves, halves[::-1]):
        t = fit_temperature(z[fit_on], y[fit_on])
        temps.append(t)
        eces.append(expected_calibration_error((z[test_on] / t).softmax(1), y[test_on]))
    return sum(eces) / 2, temps


def selective(z: torch.Tensor, y: torch.Tensor, t: float, p: float) -> tuple[float, float]:
    """Share of images kept at ``--min_confidence p`` and their accuracy."""
    conf, pred = (z / t).softmax(1).max(1)
    keep = conf >= p
    acc = float((pred[keep] == y[keep]).float().mean()) if keep.any() else float("nan")
    return float(keep.float().mean()), acc


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ckpt", required=True)
    ap.add_argument("--root", required=True)
    ap.add_argument("--thresholds", type=float, nargs="*", default=[0.9, 0.99])
    args = ap.parse_args()
    model, spec = load_classifier(args.ckpt)
    files = [f for f in collect_inputs([f"{args.root}/val"], spec.class_names)[0] if f.label]
    start = time.perf_counter()
    z, y, _ = logits_of(model, spec, files)
    s = calibrate_logits(z, y)
    cross, temps = cross_fitted_ece(z, y)
    print(f"{args.ckpt}: {s['images']} val images, logits in {time.perf_counter() - start:.0f} s")
    print(
        f"accuracy {s['accuracy']:.4f}  T {s['temperature']:.4f}  ECE(15 bins) before "
        f"{s['ece_before']:.4f}  after {s['ece_after']:.4f} (in-sample)  after {cross:.4f} "
        f"(cross-fitted halves, T {temps[0]:.3f}/{temps[1]:.3f})  NLL {s['nll_before']:.4f} -> "
        f"{s['nll_after']:.4f}"
    )
    for p in args.thresholds:
        kb, ab = selective(z, y, 1.0, p)
        ka, aa = selective(z, y, s["temperature"], p)
        print(
            f"--min_confidence {p}: uncalibrated keeps {kb:.3f} (accuracy {ab:.4f}), "
            f"calibrated keeps {ka:.3f} (accuracy {aa:.4f})"
        )


if __name__ == "__main__":
    main()
