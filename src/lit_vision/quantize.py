"""Int8 ONNX models: onnxruntime static quantization calibrated on real training images.

The fp32 ONNX file is quantized with ``onnxruntime.quantization.quantize_static`` (QDQ format,
per-channel int8 weights, uint8 activations, min/max calibration) after onnxruntime's
recommended ``quant_pre_process`` (shape inference and graph cleanup). The final softmax stays
in float so ``probs`` keeps its resolution. The int8 model is then measured against the fp32
one: top-1 agreement, accuracy of both on labelled images, latency and file size.
"""

from __future__ import annotations

import tempfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lit_vision.errors import ExportError
from lit_vision.images import is_image_file
from lit_vision.inputs import collect_inputs, decode_file
from lit_vision.parity import Runner, batched, runtime_latency
from lit_vision.spec import INPUT_NAME, InferenceSpec


@dataclass(frozen=True)
class Int8Settings:
    """How the int8 model is calibrated and when it is good enough to install.

    Args:
        root: Folder of calibration images (the training split, ``ROOT/train``).
        count: Most calibration images, drawn stratified per class.
        min_agreement: Least top-1 agreement with the fp32 model on the check images.
        seed: Seed of the calibration draw.
    """

    root: Path
    count: int = 256
    min_agreement: float = 0.95
    seed: int = 0


def calibration_files(
    root: str | Path, class_names: Sequence[str], count: int, seed: int = 0
) -> list[str]:
    """Up to ``count`` image files under ``root``, drawn stratified per class with a fixed seed.

    Each class folder (``ROOT/CLASS/...``) is shuffled with ``seed``; files are then taken
    round-robin over the classes, so every class gets the same share (a small class gives all
    it has and the others fill in). A folder without class folders is one group of its image
    files.

    Args:
        root: The training split (``ROOT/train``) or any folder of images.
        class_names: The model's classes (labels the class folders).
        count: Most files to take.
        seed: Seed of the shuffle.

    Returns:
        The chosen paths, in draw order.

    Raises:
        ExportError: ``root`` is not a folder or holds no image file.
    """
    if not Path(root).is_dir():
        raise ExportError(f"--calibration_root {root} is not a folder")
    files, _ = collect_inputs([root], class_names)
    groups: dict[str, list[str]] = {}
    for f in files:
        if f.label is not None:
            groups.setdefault(f.label, []).append(f.path)
    if not groups:  # no class folders: every visible image file, one group
        images = [f.path for f in files if is_image_file(f.path, root)]
        groups = {"": images} if images else {}
    if not groups:
        raise ExportError(f"--calibration_root {root} holds no image files")
    rng = np.random.default_rng(seed)
    queues = [list(rng.permutation(groups[k])) for k in sorted(groups)]
    chosen: list[str] = []
    while len(chosen) < count and any(queues):
        for q in queues:
            if q and len(chosen) < count:
                chosen.append(str(q.pop(0)))
    return chosen


def calibration_images(spec: InferenceSpec, files: Sequence[str]) -> np.ndarray:
    """Decode calibration files exactly as ``predict`` does; unreadable ones are skipped.

    Args:
        spec: The inference contract (input size, eval transform).
        files: The image files.

    Returns:
        ``(N, 3, S, S)`` uint8 pixels.

    Raises:
        ExportError: No file could be decoded.
    """
    arrays = []
    for path in files:
        img, _ = decode_file(path, spec.image_size, spec.transform)
        if img is not None:
            arrays.append(img.transpose(2, 0, 1))
    if not arrays:
        raise ExportError(f"none of the {len(files)} calibration files could be decoded")
    return np.ascontiguousarray(np.stack(arrays))


def quantize_int8(
    fp32_path: Path, int8_path: Path, calibration: np.ndarray, batch: int = 8
) -> Path:
    """Write a static int8 (QDQ, per-channel weights) copy of an fp32 ONNX model.

    Args:
        fp32_path: The checked fp32 ONNX file.
        int8_path: The file to write.
        calibration: ``(N, 3, S, S)`` uint8 images the activation ranges are calibrated on.
        batch: Calibration images per onnxruntime call; its peak memory grows with it
            (docs/results.md, R44).

    Returns:
        ``int8_path``, after ``onnx.checker`` accepted it.
    """
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Batches(CalibrationDataReader):
        """The calibration images, ``batch`` a call, as onnxruntime's calibrator reads them."""

        def __init__(self) -> None:
            chunks = [calibration[i : i + batch] for i in range(0, len(calibration), batch)]
            self._chunks = iter(chunks)

        def get_next(self) -> dict[str, np.ndarray] | None:
            chunk = next(self._chunks, None)
            return None if chunk is None else {INPUT_NAME: chunk}

    reader = Batches()
    # The intermediate file lives in a sub-folder: only top-level files get installed.
    with tempfile.TemporaryDirectory(dir=int8_path.parent, prefix=".int8-") as work:
        pre = Path(work) / "pre.onnx"
        quant_pre_process(str(fp32_path), str(pre))
        graph = onnx.load(str(pre), load_external_data=False).graph
        softmax = [n.name for n in graph.node if n.op_type == "Softmax"]
        quantize_static(
            str(pre),
            str(int8_path),
            reader,
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=softmax,
        )
    onnx.checker.check_model(str(int8_path))
    return int8_path


def _accuracy(probs: np.ndarray, labels: Sequence[str | None], names: Sequence[str]) -> Any:
    """Top-1 accuracy over the labelled images, or ``None`` when none is labelled."""
    idx = [i for i, lab in enumerate(labels) if lab is not None]
    if not idx:
        return None
    truth = np.array([names.index(str(labels[i])) for i in idx])
    return float(np.mean(probs[idx].argmax(1) == truth))


def int8_report(
    fp32: Runner,
    int8: Runner,
    images: np.ndarray,
    labels: Sequence[str | None],
    spec: InferenceSpec,
    sizes: tuple[int, int],
) -> dict[str, Any]:
    """Measure the int8 model against the fp32 one on the same images.

    Args:
        fp32: The fp32 ONNX runtime.
        int8: The int8 ONNX runtime.
        images: ``(N, 3, S, S)`` uint8 check images.
        labels: Each image's class (``None`` when unlabelled).
        spec: The inference contract (class names).
        sizes: File sizes in bytes, ``(fp32, int8)``.

    Returns:
        Top-1 agreement and max |Δprob| vs fp32, accuracy of both (labelled images only),
        ms/image at batch 1 and 32 and the speed-up, file sizes and their ratio.
    """
    p32, p8 = batched(fp32, images), batched(int8, images)
    acc32, acc8 = _accuracy(p32, labels, spec.class_names), _accuracy(p8, labels, spec.class_names)
    lat = runtime_latency({"onnxruntime": fp32, "onnxruntime_int8": int8}, images)
    return {
        "images": len(images),
        "top1_agreement_vs_fp32": float(np.mean(p32.argmax(1) == p8.argmax(1))),
        "max_abs_diff_probs_vs_fp32": float(np.abs(p32 - p8).max()),
        "labelled_images": sum(lab is not None for lab in labels),
        "accuracy_fp32": acc32,
        "accuracy_int8": acc8,
        "accuracy_delta_points": None if acc32 is None else round((acc8 - acc32) * 100, 3),
        "latency_ms_per_image": lat,
        "speedup": {b: row["onnxruntime"] / row["onnxruntime_int8"] for b, row in lat.items()},
        "size_bytes": {"fp32": sizes[0], "int8": sizes[1]},
        "size_ratio_fp32_over_int8": sizes[0] / sizes[1],
    }


def write_int8(
    fp32_path: Path, int8_path: Path, spec: InferenceSpec, settings: Int8Settings
) -> dict[str, Any]:
    """Draw and decode the calibration images, then write the int8 model.

    Args:
        fp32_path: The checked fp32 ONNX file.
        int8_path: The int8 file to write.
        spec: The inference contract (classes, input size, eval transform).
        settings: Calibration folder, count, seed.

    Returns:
        What the calibration used: folder, images, images per class, seed and method.
    """
    files = calibration_files(settings.root, spec.class_names, settings.count, settings.seed)
    images = calibration_images(spec, files)
    quantize_int8(fp32_path, int8_path, images)
    parts = [Path(f).relative_to(settings.root).parts for f in files]
    per_class = Counter(p[0] if len(p) > 1 else "(no class folder)" for p in parts)
    return {
        "root": str(settings.root),
        "images": len(images),
        "per_class": {k: per_class[k] for k in sorted(per_class)},
        "seed": settings.seed,
        "method": "onnxruntime quantize_static, QDQ, per-channel int8 weights, uint8 "
        "activations, min/max calibration, softmax in float",
    }


def int8_summary(q: dict[str, Any]) -> str:
    """One line for the terminal: agreement, accuracy of both, size and speed ratios."""
    acc = (
        f", accuracy fp32 {q['accuracy_fp32']:.4f} -> int8 {q['accuracy_int8']:.4f} "
        f"on {q['labelled_images']} labelled images"
        if q["accuracy_fp32"] is not None
        else ""
    )
    speed = ", ".join(f"{b} {v:.2f}x" for b, v in q["speedup"].items())
    return (
        f"int8: top-1 agreement with fp32 {q['top1_agreement_vs_fp32']:.4f} "
        f"(minimum {q['min_agreement']:g}){acc}; {q['size_ratio_fp32_over_int8']:.2f}x "
        f"smaller; speed-up vs fp32 onnxruntime {speed}"
    )
