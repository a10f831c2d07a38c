"""Export a checkpoint to ONNX (fp32, optional int8), safetensors and, opt-in, TorchScript.

Every file is written and checked in a temporary folder first; the set replaces the previous
one only when every check passed.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from lit_vision.checkpoints import read_checkpoint
from lit_vision.errors import ExportError
from lit_vision.install import install_set, keep_failed
from lit_vision.models import ImageClassifier
from lit_vision.parity import Runner, benchmark, check_images_batch, parity
from lit_vision.predict import load_classifier
from lit_vision.quantize import Int8Settings, int8_report, int8_summary, write_int8
from lit_vision.runtimes import (
    OUTPUT_NAMES,
    ExportWrapper,
    check_safetensors,
    export_onnx,
    export_safetensors,
    export_torchscript,
    onnx_session,
)
from lit_vision.spec import INPUT_NAME, InferenceSpec, preprocessing_contract

# Re-exported: callers and tests import these from here.
__all__ = [
    "INPUT_NAME",
    "OUTPUT_NAMES",
    "SUFFIXES",
    "ExportError",
    "ExportWrapper",
    "Format",
    "benchmark",
    "check_images_batch",
    "onnx_session",
    "parity",
    "preprocessing_contract",
    "run_export",
]

Format = Literal["onnx", "torchscript", "safetensors"]
# File name of each format's file, given the export's NAME (also used to remove stale files).
SUFFIXES: dict[str, str] = {
    "onnx": ".onnx",
    "torchscript": ".torchscript.pt",
    "safetensors": ".safetensors",
    "onnx_int8": ".int8.onnx",  # with --int8 true
}


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


def run_export(
    ckpt: str,
    output_dir: str = "export",
    name: str = "model",
    formats: list[Format] | None = None,
    check_images: str | None = None,
    check_count: int = 100,
    tolerance: float = 1e-4,
    bench: bool = False,
    opset: int = 18,
    dynamo: bool = True,
    int8: bool = False,
    calibration_root: str | None = None,
    calibration_count: int = 256,
    int8_min_agreement: float = 0.95,
    trust_class: list[str] | None = None,
    quiet: bool = False,
) -> dict[str, Any]:
    """Export a checkpoint to ONNX/safetensors (TorchScript opt-in) with a preprocessing JSON.

    Writes ``OUTPUT_DIR/NAME.onnx``, ``NAME.safetensors`` (the state dict), optionally
    ``NAME.torchscript.pt`` and ``NAME.int8.onnx``, and ``NAME.json`` (input size, dtype,
    range, layout, mean/std, class names, the files, parity and optional latency). Every
    graph takes uint8 RGB NCHW pixels (any batch size) and returns ``(probs, logits)``.

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
        formats: ``onnx``, ``safetensors`` and/or ``torchscript`` (default ``onnx`` and
            ``safetensors``; TorchScript is deprecated in torch and only written when asked).
        check_images: Folder of real images (any depth) for the parity check; without it
            the check runs on random pixels.
        check_count: Images used for the parity check (spread over the folder).
        tolerance: Largest allowed absolute difference of probabilities vs PyTorch.
        bench: Also measure ms/image at batch 1 and 32 (PyTorch vs each runtime, CPU).
        opset: ONNX opset (18 or newer with the dynamo exporter).
        dynamo: Use torch's current (``torch.export``-based) ONNX exporter; ``false`` selects
            the deprecated TorchScript-based one.
        int8: Also write ``NAME.int8.onnx``, statically quantized (onnxruntime, QDQ,
            per-channel int8 weights), and report its agreement with the fp32 model,
            accuracy of both, latency and size on ``check_images`` (required).
        calibration_root: Images the int8 activation ranges are calibrated on (default: the
            training data root recorded in the checkpoint, its ``train/``).
        calibration_count: Calibration images, drawn stratified per class with seed 0.
        int8_min_agreement: Least top-1 agreement of int8 with fp32 on ``check_images`` for
            the set to be installed.
        trust_class: Import paths of your own model classes the checkpoint may name besides
            lit_vision's (checkpoints are data: any other class path is refused).
        quiet: Print nothing.

    Returns:
        The JSON report (``parity_ok`` says whether every runtime met ``tolerance``;
        ``failed_dir`` is set when it did not and nothing was installed).

    Raises:
        ExportError: ``output_dir`` (or a folder above it) is a file, ``name`` has folders,
            or ``int8`` lacks what it needs (ONNX, check images, calibration images).
    """
    formats = list(dict.fromkeys(formats or ["onnx", "safetensors"]))
    out_dir = Path(output_dir)
    # Before loading anything: a wrong destination is a one-line error, not a late traceback.
    _check_destination(out_dir, name, formats + (["onnx_int8"] if int8 else []))
    _require_dependencies(formats)
    settings = None
    if int8:
        root = _calibration_root(ckpt, formats, check_images, calibration_root, trust_class or ())
        settings = Int8Settings(root, calibration_count, int8_min_agreement)
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
            int8=settings,
        )
        _finish(report, staging, out_dir, name)
    finally:
        # After a rename the folder is gone (no-op); after an exception this drops the partial set.
        shutil.rmtree(staging, ignore_errors=True)
    if not quiet:
        written = formats + (["onnx_int8"] if int8 else [])
        _print_report(report, out_dir, name, _stale_files(out_dir, name, written), tolerance)
    return report


def _calibration_root(
    ckpt: str,
    formats: Sequence[str],
    check_images: str | None,
    calibration_root: str | None,
    trust: Sequence[str],
) -> Path:
    """Check what ``--int8`` needs before any work; the calibration folder it will use.

    Raises:
        ExportError: No ONNX format, no ``--check_images``, or no calibration folder.
    """
    if "onnx" not in formats:
        raise ExportError("--int8 true quantizes the ONNX model: keep onnx in --formats")
    if not check_images:
        raise ExportError("--int8 true needs --check_images (labelled images to measure it on)")
    if calibration_root is not None:
        if not Path(calibration_root).is_dir():
            raise ExportError(f"--calibration_root {calibration_root} is not a folder")
        return Path(calibration_root)
    hparams = read_checkpoint(ckpt, trust).get("datamodule_hyper_parameters") or {}
    if not hparams.get("root"):
        raise ExportError(f"{ckpt} records no data root: pass --calibration_root")
    train = Path(hparams["root"]) / "train"
    if not train.is_dir():
        raise ExportError(
            f"{train} (the checkpoint's training data) is missing: pass --calibration_root"
        )
    return train


def _require_dependencies(formats: Sequence[str]) -> None:
    """Fail before any work when an optional dependency of a requested format is missing.

    Raises:
        ImportError: With the ``pip install`` line that fixes it.
    """
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


def _finish(report: dict[str, Any], staging: Path, out_dir: Path, name: str) -> None:
    """Write the JSON, then install the checked set, or keep a failed one aside."""
    contract = f"{name}.json"
    if report["parity_ok"]:
        (staging / contract).write_text(json.dumps(report, indent=2) + "\n")
        install_set(staging, out_dir, contract)
        # A failed set from an earlier attempt no longer describes anything.
        shutil.rmtree(out_dir / f".failed-{name}", ignore_errors=True)
    else:
        report["failed_dir"] = str(out_dir / f".failed-{name}")
        (staging / contract).write_text(json.dumps(report, indent=2) + "\n")
        keep_failed(staging, out_dir, name)


def _stale_files(out_dir: Path, name: str, formats: Sequence[str]) -> list[str]:
    """Files of this NAME in formats not exported now: they stay, but the new JSON omits them."""
    return [
        f"{name}{s}"
        for f, s in SUFFIXES.items()
        if f not in formats and (out_dir / f"{name}{s}").exists()
    ]


def _print_report(
    report: dict[str, Any], out_dir: Path, name: str, stale: list[str], tolerance: float
) -> None:
    """Print parity per runtime, latency when measured, and what was (not) installed."""
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
    if "int8" in report:
        print(int8_summary(report["int8"]))
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
    int8: Int8Settings | None,
) -> dict[str, Any]:
    """Write each format's file into ``folder`` and check it; return the report (no JSON yet)."""
    report = preprocessing_contract(spec)
    report["files"] = {}
    runners = _write_formats(model, spec, folder, name, formats, report, opset, dynamo)
    images, labels, source = _parity_images(spec, check_images, check_count)
    # ``parity`` is looked up here at call time (tests replace it to simulate a failure).
    result = parity(model, runners, images)
    result["source"] = source
    result["tolerance"] = tolerance
    report["parity"] = result
    report["parity_ok"] = all(result[n]["max_abs_diff_probs"] <= tolerance for n in runners)
    if int8 is not None:
        report["int8"] = _add_int8(folder, name, spec, int8, runners["onnxruntime"], images, labels)
        report["files"]["onnx_int8"] = f"{name}.int8.onnx"
        report["parity_ok"] &= report["int8"]["top1_agreement_vs_fp32"] >= int8.min_agreement
    if bench:
        report["latency_ms_per_image"] = benchmark(model, runners, images)
        report["latency_ms_per_image"]["threads"] = torch.get_num_threads()
        report["latency_ms_per_image"]["cpu_count"] = os.cpu_count()
    return report


def _add_int8(
    folder: Path,
    name: str,
    spec: InferenceSpec,
    settings: Int8Settings,
    fp32: Runner,
    images: np.ndarray,
    labels: list[str | None],
) -> dict[str, Any]:
    """Write ``NAME.int8.onnx`` beside the fp32 file and measure it against it on ``images``."""
    fp32_path, int8_path = folder / f"{name}.onnx", folder / f"{name}.int8.onnx"
    calibration = write_int8(fp32_path, int8_path, spec, settings)
    session = onnx_session(int8_path)

    def int8_run(b: np.ndarray) -> np.ndarray:
        return session.run([OUTPUT_NAMES[0]], {INPUT_NAME: b})[0]

    sizes = (fp32_path.stat().st_size, int8_path.stat().st_size)
    measured = int8_report(fp32, int8_run, images, labels, spec, sizes)
    return {**measured, "min_agreement": settings.min_agreement, "calibration": calibration}


def _write_formats(
    model: ImageClassifier,
    spec: InferenceSpec,
    folder: Path,
    name: str,
    formats: Sequence[str],
    report: dict[str, Any],
    opset: int,
    dynamo: bool,
) -> dict[str, Runner]:
    """Write the requested files, record them in ``report``; the runners of the two graphs."""
    wrapper = ExportWrapper(model).eval()
    runners: dict[str, Runner] = {}
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
        runners["torchscript"] = _torchscript_runner(path)
    if "safetensors" in formats:
        path = export_safetensors(model, folder / f"{name}.safetensors", report)
        report["files"]["safetensors"] = path.name
        report["safetensors"] = {
            "content": "state_dict of model_class (mean/std are not in it: see mean, std)",
            "tensors": check_safetensors(model, path),
            "reload": "bitwise equal",
        }
    return runners


def _torchscript_runner(path: Path) -> Runner:
    """Load a TorchScript file back; a function from uint8 pixels to probabilities."""
    scripted = torch.jit.load(str(path), map_location="cpu")

    def ts_run(b: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return scripted(torch.from_numpy(b))[0].numpy()

    return ts_run


def _parity_images(
    spec: InferenceSpec, check_images: str | None, check_count: int
) -> tuple[np.ndarray, list[str | None], str]:
    """The parity check's uint8 NCHW images (real or seeded random), their labels, a source."""
    if check_images:
        images, labels = check_images_batch(spec, check_images, check_count)
        return images, labels, f"{len(images)} real images from {check_images}"
    rng = np.random.default_rng(0)
    images = rng.integers(
        0, 256, (check_count, 3, spec.image_size, spec.image_size), dtype=np.uint8
    )
    source = f"{check_count} random-pixel images (pass --check_images for real ones)"
    return images, [None] * check_count, source
