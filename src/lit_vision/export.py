"""Export a checkpoint to ONNX, TorchScript and safetensors with its preprocessing contract.

Every file is written and checked in a temporary folder first; the set replaces the previous
one only when every check passed.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from lit_vision.errors import ExportError
from lit_vision.models import ImageClassifier
from lit_vision.predict import collect_inputs, decode_file, load_classifier
from lit_vision.spec import INPUT_NAME, InferenceSpec, preprocessing_contract

Format = Literal["onnx", "torchscript", "safetensors"]
OUTPUT_NAMES = ("probs", "logits")
# File name of each format's file, given the export's NAME (also used to remove stale files).
SUFFIXES: dict[str, str] = {
    "onnx": ".onnx",
    "torchscript": ".torchscript.pt",
    "safetensors": ".safetensors",
}


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


def export_safetensors(model: ImageClassifier, path: Path, contract: dict[str, Any]) -> Path:
    """Write the model's ``state_dict`` as safetensors, with the contract's essentials as metadata.

    ``mean``/``std`` are not in the state dict (non-persistent buffers), so they travel in the
    metadata and the JSON contract. Loads with ``safetensors.torch.load_file`` into
    ``model.load_state_dict(..., strict=True)`` of the same class.
    """
    try:
        from safetensors.torch import save_file
    except ImportError as err:
        raise ImportError(
            f"safetensors export needs safetensors: pip install safetensors ({err})"
        ) from None
    # save_file refuses non-contiguous tensors and tensors sharing storage (tied weights);
    # a contiguous CPU copy of each gives every key its own storage and keeps all keys.
    tensors = {
        k: v.detach().to("cpu", copy=True).contiguous() for k, v in model.state_dict().items()
    }
    metadata = {
        # "pt" is what the ecosystem's loaders (transformers, timm) check "format" for.
        "format": "pt",
        "lit_vision_format": str(contract["format"]),
        "model_class": str(contract["model_class"]),
        "class_names": json.dumps(contract["class_names"]),
        "num_classes": str(contract["num_classes"]),
        "image_size": str(contract["image_size"]),
        "mean": json.dumps(contract["mean"]),
        "std": json.dumps(contract["std"]),
    }
    save_file(tensors, str(path), metadata=metadata)
    return path


def check_safetensors(model: ImageClassifier, path: Path) -> int:
    """Reload a safetensors file and compare every tensor bitwise with the model's state dict.

    Returns:
        The number of tensors checked.

    Raises:
        ExportError: A key is missing or extra, or a tensor differs.
    """
    from safetensors.torch import load_file

    loaded = load_file(str(path))
    state = model.state_dict()
    if set(loaded) != set(state):
        raise ExportError(f"{path}: keys differ from the model's state dict")
    for k, v in state.items():
        if not torch.equal(loaded[k], v.detach().cpu()):
            raise ExportError(f"{path}: tensor {k} differs from the model's")
    return len(loaded)


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


def _check_destination(out_dir: Path, name: str, formats: Sequence[str]) -> None:
    """Refuse, before any work, a NAME with folders in it or an output folder that is a file.

    Raises:
        ExportError: The message names the offending path.
    """
    if not name or name in (".", "..") or Path(name).name != name or os.sep in name:
        raise ExportError(f"--name {name!r} must be a plain file name stem, without folders")
    # The nearest existing ancestor decides: a file there means mkdir would fail mid-way.
    for p in (out_dir, *out_dir.parents):
        if p.is_symlink() or p.exists():
            if not p.is_dir():
                where = f"{out_dir}" if p == out_dir else f"{out_dir}: {p}"
                raise ExportError(f"--output_dir {where} is a file, not a folder")
            break
    for target in [f"{name}{SUFFIXES[f]}" for f in formats] + [f"{name}.json"]:
        if (out_dir / target).is_dir():
            raise ExportError(f"{out_dir / target} is a folder; it would be replaced by a file")


def _fsync(path: Path) -> None:
    """Flush a file or folder to disk so a crash right after the rename keeps its content."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # folders cannot be fsync'ed on every platform/filesystem
        pass
    finally:
        os.close(fd)


def _install(staging: Path, out_dir: Path, contract: str) -> list[str]:
    """Move every file of the checked set from ``staging`` into ``out_dir``, the contract last.

    Returns:
        The installed file names.
    """
    files = sorted((p for p in staging.iterdir() if p.is_file()), key=lambda p: p.name == contract)
    for p in files:
        _fsync(p)
    # The JSON goes last: once the new contract is visible, every file it names is in place.
    # Between two renames a reader may still see a mix; each rename itself is atomic.
    for p in files:
        os.replace(p, out_dir / p.name)
    _fsync(out_dir)
    return [p.name for p in files]


def _keep_failed(staging: Path, out_dir: Path, name: str) -> Path:
    """Move a failed set to ``OUT_DIR/.failed-NAME/`` (replacing an older one) for inspection."""
    failed = out_dir / f".failed-{name}"
    if failed.is_dir() and not failed.is_symlink():
        shutil.rmtree(failed)
    elif failed.is_symlink() or failed.exists():
        failed.unlink()
    os.replace(staging, failed)
    return failed


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
    trust_class: list[str] | None = None,
    quiet: bool = False,
) -> dict[str, Any]:
    """Export a checkpoint to ONNX/TorchScript/safetensors with a preprocessing JSON, checked.

    Writes ``OUTPUT_DIR/NAME.onnx``, ``NAME.torchscript.pt``, ``NAME.safetensors`` (the
    state dict) and ``NAME.json`` (input size, dtype, range, layout, mean/std, class names,
    the files, parity and optional latency). Both graphs take uint8 RGB NCHW pixels (any
    batch size) and return ``(probs, logits)``.

    The files are written into a hidden temporary folder inside ``OUTPUT_DIR`` (same
    filesystem, so renames are atomic) and checked there (ONNX checker, parity of each
    runtime, bitwise reload of the safetensors). Only when every check passed does each
    file replace its namesake in ``OUTPUT_DIR``, the JSON last; other files there are never
    touched. When an exception stops the export, the temporary folder is removed and the
    previous set is left as it was. When parity fails, nothing is installed either and the
    failed set is kept in ``OUTPUT_DIR/.failed-NAME/`` (replacing an older one) for
    inspection; a later successful export removes that folder.

    Args:
        ckpt: Checkpoint written by ``fit``.
        output_dir: Folder for the exported files (created if missing).
        name: File stem of the exported files.
        formats: ``onnx``, ``torchscript`` and/or ``safetensors`` (default all three).
        check_images: Folder of real images (any depth) for the parity check; without it
            the check runs on random pixels.
        check_count: Images used for the parity check (spread over the folder).
        tolerance: Largest allowed absolute difference of probabilities vs PyTorch.
        bench: Also measure ms/image at batch 1 and 32 (PyTorch vs each runtime, CPU).
        opset: ONNX opset.
        dynamo: Use the dynamo-based ONNX exporter instead of the TorchScript-based one.
        trust_class: Import paths of your own model classes the checkpoint may name besides
            lit_vision's (checkpoints are data: any other class path is refused).
        quiet: Print nothing.

    Returns:
        The JSON report (``parity_ok`` says whether every runtime met ``tolerance``;
        ``failed_dir`` is set when it did not and nothing was installed).

    Raises:
        ExportError: ``output_dir`` (or a folder above it) is a file, or ``name`` has folders.
    """
    formats = list(dict.fromkeys(formats or ["onnx", "torchscript", "safetensors"]))
    out_dir = Path(output_dir)
    # Before loading anything: a wrong destination is a one-line error, not a late traceback.
    _check_destination(out_dir, name, formats)
    if "onnx" in formats:
        try:
            import onnx  # noqa: F401
            import onnxruntime  # noqa: F401
        except ImportError as err:
            raise ImportError(
                f"ONNX export needs onnx and onnxruntime: pip install 'lit_vision[export]' ({err})"
            ) from None
    if "safetensors" in formats:
        try:
            import safetensors  # noqa: F401
        except ImportError as err:
            raise ImportError(
                f"safetensors export needs safetensors: pip install safetensors ({err})"
            ) from None
    model, spec = load_classifier(ckpt, device="cpu", trust_class=trust_class or ())
    model.float()
    out_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out_dir, prefix=f".{name}.export-"))
    try:
        report = _export_into(
            model,
            spec,
            staging,
            name,
            formats,
            check_images,
            check_count,
            tolerance,
            bench=bench,
            opset=opset,
            dynamo=dynamo,
        )
        contract = f"{name}.json"
        if report["parity_ok"]:
            (staging / contract).write_text(json.dumps(report, indent=2) + "\n")
            _install(staging, out_dir, contract)
            # A failed set from an earlier attempt no longer describes anything.
            shutil.rmtree(out_dir / f".failed-{name}", ignore_errors=True)
        else:
            report["failed_dir"] = str(out_dir / f".failed-{name}")
            (staging / contract).write_text(json.dumps(report, indent=2) + "\n")
            _keep_failed(staging, out_dir, name)
    finally:
        # After a rename the folder is gone (no-op); after an exception this drops the partial set.
        shutil.rmtree(staging, ignore_errors=True)
    # Files of this NAME in formats not exported now stay, but the new JSON does not name them.
    stale = [
        f"{name}{s}"
        for f, s in SUFFIXES.items()
        if f not in formats and (out_dir / f"{name}{s}").exists()
    ]
    if not quiet:
        result = report["parity"]
        for n in result:
            r = result[n]
            if isinstance(r, dict) and "max_abs_diff_probs" in r:
                print(
                    f"{n}: max |probs - pytorch| = {r['max_abs_diff_probs']:.2e} "
                    f"(tolerance {tolerance:g}), top-1 agreement {r['top1_agreement']:.4f} "
                    f"on {result['source']}"
                )
        for bs, row in (report.get("latency_ms_per_image") or {}).items():
            if isinstance(row, dict):
                print(f"{bs}: " + ", ".join(f"{k} {v:.3f} ms/image" for k, v in row.items()))
        if report["parity_ok"]:
            print(f"exported {', '.join(report['files'].values())} + {name}.json -> {out_dir}")
            if stale:
                print(
                    f"note: {', '.join(stale)} in {out_dir} are from an earlier export "
                    f"(not named by {name}.json)"
                )
        else:
            print(
                f"PARITY CHECK FAILED: nothing installed, {out_dir} left as it was; "
                f"the failed files are in {report['failed_dir']}"
            )
    return report


def _export_into(
    model: ImageClassifier,
    spec: InferenceSpec,
    folder: Path,
    name: str,
    formats: Sequence[str],
    check_images: str | None,
    check_count: int,
    tolerance: float,
    *,
    bench: bool,
    opset: int,
    dynamo: bool,
) -> dict[str, Any]:
    """Write each format's file into ``folder`` and check it; return the report (no JSON yet)."""
    wrapper = ExportWrapper(model).eval()
    report = preprocessing_contract(spec)
    report["files"] = {}
    runners: dict[str, Callable[[np.ndarray], np.ndarray]] = {}
    if "onnx" in formats:
        path = export_onnx(
            wrapper, folder / f"{name}.onnx", spec.image_size, opset=opset, dynamo=dynamo
        )
        report["files"]["onnx"] = path.name
        session = onnx_session(path)
        runners["onnxruntime"] = lambda b: session.run([OUTPUT_NAMES[0]], {INPUT_NAME: b})[0]
    if "torchscript" in formats:
        path = export_torchscript(wrapper, folder / f"{name}.torchscript.pt", spec.image_size)
        report["files"]["torchscript"] = path.name
        scripted = torch.jit.load(str(path), map_location="cpu")

        def ts_run(b: np.ndarray) -> np.ndarray:
            with torch.inference_mode():
                return scripted(torch.from_numpy(b))[0].numpy()

        runners["torchscript"] = ts_run
    if "safetensors" in formats:
        path = export_safetensors(model, folder / f"{name}.safetensors", report)
        report["files"]["safetensors"] = path.name
        report["safetensors"] = {
            "content": "state_dict of model_class (mean/std are not in it: see mean, std)",
            "tensors": check_safetensors(model, path),
            "reload": "bitwise equal",
        }
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
    return report
