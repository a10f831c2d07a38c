"""Checks of exported runtimes against PyTorch: probability parity and CPU latency."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lit_vision.inputs import collect_inputs, decode_file
from lit_vision.models import ImageClassifier
from lit_vision.runtimes import ExportWrapper
from lit_vision.spec import InferenceSpec

# A runtime under test: uint8 NCHW pixels in, class probabilities out.
Runner = Callable[[np.ndarray], np.ndarray]


def check_images_batch(
    spec: InferenceSpec, folder: str | Path, count: int
) -> tuple[np.ndarray, list[str | None]]:
    """Up to ``count`` readable images spread evenly over a folder's sorted files, decoded.

    Args:
        spec: The inference contract (input size, eval transform, class names).
        folder: Folder of images (any depth).
        count: Most images to take.

    Returns:
        ``(N, 3, S, S)`` uint8 pixels, preprocessed exactly as ``predict`` does, and their
        labels (the class folder they sit in, as ``predict`` labels them; ``None`` elsewhere).

    Raises:
        FileNotFoundError: No readable image in ``folder``.
    """
    files, _ = collect_inputs([folder], spec.class_names)
    if count < len(files):
        files = [files[int(i)] for i in np.linspace(0, len(files) - 1, count)]
    arrays, labels = [], []
    for f in files:
        img, _ = decode_file(f.path, spec.image_size, spec.transform)
        if img is not None:
            arrays.append(img.transpose(2, 0, 1))
            labels.append(f.label)
    if not arrays:
        raise FileNotFoundError(f"no readable images in {folder} for the parity check")
    return np.ascontiguousarray(np.stack(arrays)), labels


def batched(fn: Runner, x: np.ndarray, bs: int = 32) -> np.ndarray:
    """``fn`` applied to ``x`` in batches of ``bs``, concatenated."""
    return np.concatenate([fn(x[i : i + bs]) for i in range(0, len(x), bs)])


def parity(
    model: ImageClassifier,
    runners: dict[str, Runner],
    images: np.ndarray,
) -> dict[str, Any]:
    """Compare each runtime's probabilities with PyTorch's on the same uint8 images.

    Args:
        model: The classifier (the reference, run eagerly).
        runners: Each runtime by name.
        images: ``(N, 3, S, S)`` uint8 pixels.

    Returns:
        ``images`` (the count) and, per runtime, ``max_abs_diff_probs`` and ``top1_agreement``.
    """
    wrapper = ExportWrapper(model).eval()
    with torch.inference_mode():
        ref = batched(lambda b: wrapper(torch.from_numpy(b))[0].numpy(), images)
    out: dict[str, Any] = {"images": len(images)}
    for name, run in runners.items():
        got = batched(run, images)
        out[name] = {
            "max_abs_diff_probs": float(np.abs(got - ref).max()),
            "top1_agreement": float(np.mean(got.argmax(1) == ref.argmax(1))),
        }
    return out


def latency(
    fn: Callable[[np.ndarray], Any], batch: np.ndarray, min_time: float = 1.0, min_runs: int = 5
) -> float:
    """Median seconds per call of ``fn(batch)`` after two warm-up calls.

    Args:
        fn: The runtime.
        batch: Its input.
        min_time: Keep timing for at least this many seconds.
        min_runs: And at least this many calls.

    Returns:
        The median wall time of one call, in seconds.
    """
    for _ in range(2):
        fn(batch)
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < min_runs or time.perf_counter() - start < min_time:
        t0 = time.perf_counter()
        fn(batch)
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def benchmark(
    model: ImageClassifier,
    runners: dict[str, Runner],
    images: np.ndarray,
    batch_sizes: Sequence[int] = (1, 32),
) -> dict[str, dict[str, float]]:
    """Milliseconds per image for PyTorch (eager, fp32, CPU) and each exported runtime.

    Args:
        model: The classifier.
        runners: Each runtime by name.
        images: ``(N, 3, S, S)`` uint8 pixels, repeated to fill larger batches.
        batch_sizes: Batch sizes to time.

    Returns:
        ``{"batchB": {"pytorch": ms, RUNTIME: ms, ...}}``.
    """
    wrapper = ExportWrapper(model).eval()

    def torch_run(b: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return wrapper(torch.from_numpy(b))[0].numpy()

    return runtime_latency({"pytorch": torch_run, **runners}, images, batch_sizes)


def runtime_latency(
    runners: dict[str, Runner], images: np.ndarray, batch_sizes: Sequence[int] = (1, 32)
) -> dict[str, dict[str, float]]:
    """Milliseconds per image of each runtime at each batch size (CPU, median of repeats).

    Args:
        runners: Each runtime by name.
        images: ``(N, 3, S, S)`` uint8 pixels, repeated to fill larger batches.
        batch_sizes: Batch sizes to time.

    Returns:
        ``{"batchB": {RUNTIME: ms, ...}}``.
    """
    results: dict[str, dict[str, float]] = {}
    for bs in batch_sizes:
        reps = int(np.ceil(bs / len(images)))
        batch = np.ascontiguousarray(np.concatenate([images] * reps)[:bs])
        results[f"batch{bs}"] = {n: latency(run, batch) / bs * 1e3 for n, run in runners.items()}
    return results
