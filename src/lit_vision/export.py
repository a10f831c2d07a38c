"""Export a checkpoint to ONNX and TorchScript with its preprocessing contract, parity-checked."""

from __future__ import annotations

import json
import os
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import albumentations as A
import numpy as np
import torch
from torch import nn

from lit_vision.models import ImageClassifier
from lit_vision.predict import InferenceSpec, collect_inputs, decode_file, load_classifier

Format = Literal["onnx", "torchscript"]
INPUT_NAME = "images"
OUTPUT_NAMES = ("probs", "logits")


class ExportWrapper(nn.Module):
    """The deployable graph: uint8 RGB NCHW pixels in, ``(probs, logits)`` out.

    The classifier already normalises inside ``forward``, so the exported file needs only
    decoded, resized pixels; no mean/std step can be forgotten or duplicated downstream.
    """

    def __init__(self, model: ImageClassifier) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.model(images).float()
        return logits.softmax(dim=1), logits


def preprocessing_contract(spec: InferenceSpec) -> dict[str, Any]:
    """The JSON written beside an export: what the caller must feed and what comes out."""
    s = spec.image_size
    return {
        "format": "lit_vision-export/1",
        "model_class": spec.model_class,
        "class_names": spec.class_names,
        "num_classes": len(spec.class_names),
        "image_size": s,
        "mean": spec.mean,
        "std": spec.std,
        "input": {
            "name": INPUT_NAME,
            "dtype": "uint8",
            "range": [0, 255],
            "layout": "NCHW",
            "channels": "RGB",
            "shape": ["batch", 3, s, s],
        },
        "preprocessing": {
            "decode": "8-bit RGB; EXIF orientation applied; alpha composited on white; "
            "16-bit scaled to 8-bit (lit_vision.images.load_image)",
            "resize": f"bilinear (PIL) to {s}x{s}, aspect ratio not kept, no crop",
            "normalisation": "inside the model: (x / 255 - mean) / std; do NOT normalise outside",
            "eval_transform": A.to_dict(spec.transform),
        },
        "outputs": {
            "probs": "softmax class probabilities, (batch, num_classes), float32",
            "logits": "raw class scores, (batch, num_classes), float32",
        },
    }


def export_onnx(
    wrapper: ExportWrapper, path: Path, image_size: int, *, opset: int = 17, dynamo: bool = False
) -> Path:
    """Write an ONNX file with a dynamic batch axis.

    The legacy TorchScript-based exporter (``dynamo=False``) is the default: for these
    plain CNN/timm graphs it needs no extra dependencies and gives a single self-contained
    file; the dynamo exporter is available with ``dynamo=True``.
    """
    example = torch.zeros(2, 3, image_size, image_size, dtype=torch.uint8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecation chatter of the legacy exporter
        kwargs: dict[str, Any] = {
            "input_names": [INPUT_NAME],
            "output_names": list(OUTPUT_NAMES),
            "opset_version": opset,
            "dynamo": dynamo,
        }
        if dynamo:
            kwargs["dynamic_shapes"] = {"images": {0: torch.export.Dim("batch", min=1, max=4096)}}
            kwargs["external_data"] = False
        else:
            kwargs["dynamic_axes"] = {
                INPUT_NAME: {0: "batch"},
                **{n: {0: "batch"} for n in OUTPUT_NAMES},
            }
        torch.onnx.export(wrapper, (example,), str(path), **kwargs)
    import onnx

    onnx.checker.check_model(str(path))
    return path


def export_torchscript(wrapper: ExportWrapper, path: Path, image_size: int) -> Path:
    """Write a traced TorchScript file (loads with ``torch.jit.load``, no lit_vision needed)."""
    example = torch.zeros(2, 3, image_size, image_size, dtype=torch.uint8)
    # Tracing inspects every attribute; Lightning's ``trainer`` property raises when no trainer
    # is attached unless the module is flagged as being scripted (as ``to_torchscript`` does).
    wrapper.model._jit_is_scripting = True
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(wrapper, example, check_trace=False)
            traced = torch.jit.freeze(traced.eval())
    finally:
        wrapper.model._jit_is_scripting = False
    traced.save(str(path))
    return path


def onnx_session(path: str | Path, threads: int | None = None) -> Any:
    """An onnxruntime CPU session with ``threads`` intra-op threads (default: torch's count)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or torch.get_num_threads()
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def check_images_batch(
    spec: InferenceSpec, folder: str | Path, count: int
) -> tuple[np.ndarray, list[str]]:
    """Up to ``count`` readable images spread evenly over a folder's sorted files, decoded.

    Returns:
        ``(N, 3, S, S)`` uint8 pixels, preprocessed exactly as ``predict`` does, and their paths.
    """
    files, _ = collect_inputs([folder], spec.class_names)
    if count < len(files):
        files = [files[int(i)] for i in np.linspace(0, len(files) - 1, count)]
    arrays, paths = [], []
    for f in files:
        img, _ = decode_file(f.path, spec.image_size, spec.transform)
        if img is not None:
            arrays.append(img.transpose(2, 0, 1))
            paths.append(f.path)
    if not arrays:
        raise FileNotFoundError(f"no readable images in {folder} for the parity check")
    return np.ascontiguousarray(np.stack(arrays)), paths


def _batched(fn: Callable[[np.ndarray], np.ndarray], x: np.ndarray, bs: int = 32) -> np.ndarray:
    return np.concatenate([fn(x[i : i + bs]) for i in range(0, len(x), bs)])


def parity(
    model: ImageClassifier,
    runners: dict[str, Callable[[np.ndarray], np.ndarray]],
    images: np.ndarray,
) -> dict[str, Any]:
    """Compare each runtime's probabilities with PyTorch's on the same uint8 images."""
    wrapper = ExportWrapper(model).eval()
    with torch.inference_mode():
        ref = _batched(lambda b: wrapper(torch.from_numpy(b))[0].numpy(), images)
    out: dict[str, Any] = {"images": len(images)}
    for name, run in runners.items():
        got = _batched(run, images)
        out[name] = {
            "max_abs_diff_probs": float(np.abs(got - ref).max()),
            "top1_agreement": float(np.mean(got.argmax(1) == ref.argmax(1))),
        }
    return out


def _latency(
    fn: Callable[[np.ndarray], Any], batch: np.ndarray, min_time: float = 1.0, min_runs: int = 5
) -> float:
    """Median seconds per call after two warm-up calls."""
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
    runners: dict[str, Callable[[np.ndarray], np.ndarray]],
    images: np.ndarray,
    batch_sizes: Sequence[int] = (1, 32),
) -> dict[str, dict[str, float]]:
    """Milliseconds per image for PyTorch (eager, fp32, CPU) and each exported runtime."""
    wrapper = ExportWrapper(model).eval()

    def torch_run(b: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return wrapper(torch.from_numpy(b))[0].numpy()

    results: dict[str, dict[str, float]] = {}
    for bs in batch_sizes:
        reps = int(np.ceil(bs / len(images)))
        batch = np.ascontiguousarray(np.concatenate([images] * reps)[:bs])
        row = {"pytorch": _latency(torch_run, batch) / bs * 1e3}
        for name, run in runners.items():
            row[name] = _latency(run, batch) / bs * 1e3
        results[f"batch{bs}"] = row
    return results


def run_export(
    ckpt: str,
    output_dir: str = "export",
    name: str = "model",
    formats: list[Format] | None = None,
    check_images: str | None = None,
    check_count: int = 100,
    tolerance: float = 1e-4,
    bench: bool = False,
    opset: int = 17,
    dynamo: bool = False,
    quiet: bool = False,
) -> dict[str, Any]:
    """Export a checkpoint to ONNX/TorchScript with a preprocessing JSON, and check parity.

    Writes ``OUTPUT_DIR/NAME.onnx``, ``NAME.torchscript.pt`` and ``NAME.json`` (input size,
    dtype, range, layout, mean/std, class names, parity and optional latency). Both graphs
    take uint8 RGB NCHW pixels (any batch size) and return ``(probs, logits)``.

    Args:
        ckpt: Checkpoint written by ``fit``.
        output_dir: Folder for the exported files.
        name: File stem of the exported files.
        formats: ``onnx`` and/or ``torchscript`` (default both).
        check_images: Folder of real images (any depth) for the parity check; without it
            the check runs on random pixels.
        check_count: Images used for the parity check (spread over the folder).
        tolerance: Largest allowed absolute difference of probabilities vs PyTorch.
        bench: Also measure ms/image at batch 1 and 32 (PyTorch vs each runtime, CPU).
        opset: ONNX opset.
        dynamo: Use the dynamo-based ONNX exporter instead of the TorchScript-based one.
        quiet: Print nothing.

    Returns:
        The JSON report (``parity_ok`` says whether every runtime met ``tolerance``).
    """
    formats = list(formats or ["onnx", "torchscript"])
    if "onnx" in formats:
        try:
            import onnx  # noqa: F401
            import onnxruntime  # noqa: F401
        except ImportError as err:
            raise ImportError(
                f"ONNX export needs onnx and onnxruntime: pip install 'lit_vision[export]' ({err})"
            ) from None
    out_dir = Path(output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model, spec = load_classifier(ckpt, device="cpu")
    model.float()
    wrapper = ExportWrapper(model).eval()
    report = preprocessing_contract(spec)
    report["files"] = {}
    runners: dict[str, Callable[[np.ndarray], np.ndarray]] = {}
    if "onnx" in formats:
        path = export_onnx(
            wrapper, out_dir / f"{name}.onnx", spec.image_size, opset=opset, dynamo=dynamo
        )
        report["files"]["onnx"] = path.name
        session = onnx_session(path)
        runners["onnxruntime"] = lambda b: session.run([OUTPUT_NAMES[0]], {INPUT_NAME: b})[0]
    if "torchscript" in formats:
        path = export_torchscript(wrapper, out_dir / f"{name}.torchscript.pt", spec.image_size)
        report["files"]["torchscript"] = path.name
        scripted = torch.jit.load(str(path), map_location="cpu")

        def ts_run(b: np.ndarray) -> np.ndarray:
            with torch.inference_mode():
                return scripted(torch.from_numpy(b))[0].numpy()

        runners["torchscript"] = ts_run
    if check_images:
        images, _ = check_images_batch(spec, check_images, check_count)
        source = f"{len(images)} real images from {check_images}"
    else:
        rng = np.random.default_rng(0)
        images = rng.integers(
            0, 256, (check_count, 3, spec.image_size, spec.image_size), dtype=np.uint8
        )
        source = f"{check_count} random-pixel images (pass --check_images for real ones)"
    result = parity(model, runners, images)
    result["source"] = source
    result["tolerance"] = tolerance
    report["parity"] = result
    report["parity_ok"] = all(result[n]["max_abs_diff_probs"] <= tolerance for n in runners)
    if bench:
        report["latency_ms_per_image"] = benchmark(model, runners, images)
        report["latency_ms_per_image"]["threads"] = torch.get_num_threads()
        report["latency_ms_per_image"]["cpu_count"] = os.cpu_count()
    (out_dir / f"{name}.json").write_text(json.dumps(report, indent=2) + "\n")
    if not quiet:
        for n in runners:
            r = result[n]
            print(
                f"{n}: max |probs - pytorch| = {r['max_abs_diff_probs']:.2e} "
                f"(tolerance {tolerance:g}), top-1 agreement {r['top1_agreement']:.4f} on {source}"
            )
        for bs, row in (report.get("latency_ms_per_image") or {}).items():
            if isinstance(row, dict):
                print(f"{bs}: " + ", ".join(f"{k} {v:.3f} ms/image" for k, v in row.items()))
        print(
            f"exported {', '.join(report['files'].values())} + {name}.json -> {out_dir}"
            + ("" if report["parity_ok"] else "  PARITY CHECK FAILED")
        )
    return report
