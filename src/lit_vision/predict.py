"""Predict with a checkpoint: folders or files of images -> a CSV, with accuracy on labelled folders."""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from lit_vision.checkpoints import CheckpointError, model_class, model_kwargs, read_checkpoint
from lit_vision.errors import ConfigError, OutputExistsError
from lit_vision.explain import OverlayWriter
from lit_vision.inputs import InputFile, collect_inputs, decode_file
from lit_vision.intervals import resolve_group_regex
from lit_vision.models import ImageClassifier
from lit_vision.predictions import (
    Prediction,
    PredictResult,
    check_output,
    print_summary,
    write_csv,
)
from lit_vision.progress import progress_bar
from lit_vision.spec import CHECKPOINT_KEY, InferenceSpec

# Re-exported: callers and tests import these from here.
__all__ = [
    "NO_PRETRAINED",
    "TTA",
    "CheckpointError",
    "InferenceSpec",
    "InputFile",
    "OutputExistsError",
    "PredictResult",
    "Prediction",
    "check_output",
    "collect_inputs",
    "decode_file",
    "load_classifier",
    "predict_files",
    "predict_probs",
    "resolve_device",
    "resolve_tta",
    "run_predict",
    "write_csv",
]

TTA = Literal["none", "hflip", "auto"]
# --precision -> the autocast dtype (None: float32, no autocast).
PRECISIONS: dict[str, torch.dtype | None] = {
    "32": None,
    "32-true": None,
    "bf16": torch.bfloat16,
    "bf16-mixed": torch.bfloat16,
    "16": torch.float16,
    "16-mixed": torch.float16,
}


# Constructor arguments that would load pretrained weights (TransferClassifier's), turned off
# when rebuilding from a checkpoint whose state dict holds the trained weights anyway.
NO_PRETRAINED: dict[str, Any] = {"pretrained": False, "weights": None, "weights_path": None}


def load_classifier(
    path: str | Path,
    *,
    image_size: int | None = None,
    device: str | torch.device = "cpu",
    trust_class: Sequence[str] = (),
) -> tuple[ImageClassifier, InferenceSpec]:
    """Rebuild a trained classifier and its preprocessing from the checkpoint alone.

    The checkpoint is untrusted data (``lit_vision.checkpoints``): it is loaded without
    unpickling, its class paths must be on the allow-list, and the model is rebuilt by calling
    the allow-listed class (``checkpoint["lit_vision"]["model_class"]``, or the ``_class_path``
    LightningCLI stores) with the saved plain hyperparameters, then loading the state dict.

    Args:
        path: Checkpoint file (``.ckpt``).
        image_size: Input side for checkpoints that do not record one.
        device: Where to put the model.
        trust_class: Import paths of your own classes (an ``ImageClassifier`` subclass) that
            the checkpoint may name besides lit_vision's; you vouch for that code.

    Returns:
        The model in eval mode and its ``InferenceSpec``.

    Raises:
        CheckpointError: Missing or unreadable file, a refused class path, weights that do
            not fit the model, or no recorded input size.
    """
    ckpt = read_checkpoint(path, trust_class)
    meta = ckpt.get(CHECKPOINT_KEY) or {}
    hparams = ckpt.get("hyper_parameters") or {}
    cls = model_class(ckpt, path, ImageClassifier, trust_class)
    if not hparams:
        raise CheckpointError(
            f"{path}: no hyperparameters saved (call save_hyperparameters in {cls.__name__})"
        )
    model = _rebuild(cls, hparams, ckpt["state_dict"], path)
    if meta.get("mean") and meta.get("std"):
        # mean/std buffers are not in the state dict; the recorded values are the contract.
        model.mean.copy_(torch.tensor(meta["mean"]).view_as(model.mean))
        model.std.copy_(torch.tensor(meta["std"]).view_as(model.std))
    model.eval().to(device)
    spec = InferenceSpec.from_checkpoint(
        meta, model, f"{cls.__module__}.{cls.__qualname__}", image_size=image_size
    )
    if not spec.image_size:
        raise CheckpointError(f"{path} records no image size; pass --image_size")
    return model, spec


def _rebuild(
    cls: type[ImageClassifier],
    hparams: dict[str, Any],
    state_dict: dict[str, Any],
    path: str | Path,
) -> ImageClassifier:
    """Call ``cls`` with the saved plain hyperparameters and load the state dict (strict).

    Checkpoints written before ``pooling: catavgmax`` existed say ``avgmax`` for the
    concatenation (timm's ``avgmax`` is the mean): when ``avgmax`` weights do not fit, the
    model is rebuilt once with ``catavgmax``.

    Raises:
        CheckpointError: The class refuses the hyperparameters or the weights do not fit.
    """
    # The state dict overwrites every weight: skip fetching pretrained ones while rebuilding.
    attempts = [hparams]
    if hparams.get("pooling") == "avgmax":
        attempts.append({**hparams, "pooling": "catavgmax"})
    errors: list[Exception] = []
    for kwargs in attempts:
        try:
            model = cls(**model_kwargs(cls, kwargs, **NO_PRETRAINED))
            model.load_state_dict(state_dict, strict=True)
            return model
        except (TypeError, ValueError, RuntimeError, KeyError) as err:
            errors.append(err)
    err = errors[0]  # the checkpoint's own hyperparameters give the telling reason
    reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    raise CheckpointError(
        f"checkpoint {path} does not rebuild a {cls.__name__}: {reason}"
    ) from None


def _chunks(items: Sequence[InputFile], n: int) -> Iterator[Sequence[InputFile]]:
    """Consecutive slices of ``items`` of at most ``n`` each."""
    for i in range(0, len(items), n):
        yield items[i : i + n]


def resolve_device(device: str) -> torch.device:
    """``auto``: the GPU when there is one, else the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_tta(tta: TTA, spec: InferenceSpec) -> str:
    """``auto`` averages horizontal flips only for models trained with them (flip-invariant)."""
    if tta == "auto":
        return "hflip" if spec.train_flips.get("hflip") else "none"
    return tta


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """The forward pass's precision: ``32`` (float32), ``bf16`` or ``16`` (autocast).

    Raises:
        ConfigError: Any other value (one line naming ``--precision``).
    """
    if precision not in PRECISIONS:
        raise ConfigError(
            f"--precision {precision!r}: choose one of {', '.join(sorted(PRECISIONS))}"
        )
    dtype = PRECISIONS[precision]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


@torch.inference_mode()
def predict_probs(
    model: ImageClassifier,
    batch: torch.Tensor,
    tta: str = "none",
    *,
    temperature: float = 1.0,
    precision: str = "32",
) -> torch.Tensor:
    """Class probabilities ``softmax(logits / temperature)`` for a uint8 NCHW batch.

    Args:
        model: The classifier (eval mode).
        batch: uint8 RGB images.
        tta: ``hflip`` averages the probabilities of the image and its mirror.
        temperature: The checkpoint's calibration temperature (1.0: plain softmax).
        precision: ``32``, ``bf16`` or ``16`` (see :func:`autocast`).
    """
    with autocast(batch.device, precision):
        logits = model(batch).float()
        mirrored = model(batch.flip(-1)).float() if tta == "hflip" else None
    probs = (logits / temperature).softmax(dim=1)
    if mirrored is not None:
        probs = (probs + (mirrored / temperature).softmax(dim=1)) / 2
    return probs


def predict_files(
    model: ImageClassifier,
    spec: InferenceSpec,
    files: Sequence[InputFile],
    *,
    batch_size: int = 64,
    tta: str = "none",
    workers: int | None = None,
    precision: str = "32",
    show_progress: bool = False,
    explain: OverlayWriter | None = None,
) -> PredictResult:
    """Decode and classify files in batches; unreadable files become rows with the reason.

    Decoding runs one batch ahead of the model (:func:`decoded_batches`). Probabilities use
    the spec's calibration temperature.

    Args:
        model: The classifier (eval mode).
        spec: Its inference contract (input size, eval transform, class names, temperature).
        files: The files to classify.
        batch_size: Images per forward pass.
        tta: ``none`` or ``hflip`` (see ``predict_probs``).
        workers: Decode threads; default ``min(8, cpu count)``.
        precision: ``32``, ``bf16`` or ``16``.
        show_progress: A progress bar on stderr (only on a terminal, for long inputs).
        explain: Writes a Grad-CAM overlay of the predicted class per readable file.

    Returns:
        One row per file, in order.
    """
    device = next(model.parameters()).device
    rows: list[Prediction] = []
    mode = (tta, spec.temperature, precision)
    with progress_bar(len(files), "predicting", enabled=show_progress) as bar:
        for chunk, decoded in decoded_batches(spec, files, batch_size, workers):
            rows += _classify_chunk(model, chunk, decoded, device, mode, explain, len(rows))
            bar.update(len(chunk))
    return PredictResult(rows, list(spec.class_names), tta)


Decoded = list[tuple[np.ndarray | None, str | None]]


def decoded_batches(
    spec: InferenceSpec, files: Sequence[InputFile], batch_size: int, workers: int | None = None
) -> Iterator[tuple[Sequence[InputFile], Decoded]]:
    """``files`` in consecutive chunks with each file's decoded image or the reason it has none.

    Decoding runs in a thread pool one chunk ahead of the consumer (PIL releases the GIL).

    Args:
        spec: The inference contract (decode size and eval transform).
        files: The files, in order.
        batch_size: Files per chunk.
        workers: Decode threads; default ``min(8, cpu count)``.
    """
    with ThreadPoolExecutor(workers or min(8, os.cpu_count() or 1)) as pool:

        def submit(chunk: Sequence[InputFile]) -> list[Future]:
            return [
                pool.submit(decode_file, f.path, spec.image_size, spec.transform) for f in chunk
            ]

        chunks = list(_chunks(files, batch_size))
        pending = submit(chunks[0]) if chunks else []
        for i, chunk in enumerate(chunks):
            decoded = [fut.result() for fut in pending]
            pending = submit(chunks[i + 1]) if i + 1 < len(chunks) else []
            yield chunk, decoded


def _classify_chunk(
    model: ImageClassifier,
    chunk: Sequence[InputFile],
    decoded: Decoded,
    device: torch.device,
    mode: tuple[str, float, str],
    explain: OverlayWriter | None,
    first_row: int,
) -> list[Prediction]:
    """Rows for one chunk: probabilities for the decoded files, the reason for the others."""
    tta, temperature, precision = mode
    ok = [j for j, (img, _) in enumerate(decoded) if img is not None]
    probs = None
    if ok:
        batch = torch.from_numpy(np.stack([decoded[j][0] for j in ok])).permute(0, 3, 1, 2)
        batch = batch.to(device)
        probs = predict_probs(model, batch, tta, temperature=temperature, precision=precision)
        probs = probs.cpu().numpy()
        if explain is not None:
            paths = [chunk[j].path for j in ok]
            explain.write(model, [first_row + j for j in ok], paths, batch, probs.argmax(1))
    where = {j: k for k, j in enumerate(ok)}
    rows = []
    for j, f in enumerate(chunk):
        if j in where:
            rows.append(Prediction(f.path, f.label, probs=probs[where[j]]))
        else:
            rows.append(Prediction(f.path, f.label, error=decoded[j][1]))
    return rows


def run_predict(
    ckpt: str | Path,
    inputs: Sequence[str | Path],
    output: str | Path = "predictions.csv",
    *,
    topk: int = 3,
    tta: TTA = "none",
    batch_size: int = 64,
    device: str = "auto",
    image_size: int | None = None,
    overwrite: bool = False,
    trust_class: Sequence[str] = (),
    quiet: bool = False,
    min_confidence: float = 0.0,
    explain: str | Path | None = None,
    precision: str = "32",
    progress: bool = True,
    group_regex: str = "auto",
) -> PredictResult:
    """Predict every file under ``inputs`` with the checkpoint and write the CSV.

    Args:
        ckpt: Checkpoint written by ``fit`` (self-contained: no config or data needed).
        inputs: Folders (searched at any depth) and/or files.
        output: CSV to write (one row per input file).
        topk: Number of top classes per row.
        tta: ``none``; ``hflip`` averages the image and its mirror; ``auto`` flips only
            for models trained with horizontal flips.
        batch_size: Images per forward pass.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        image_size: Override for checkpoints that record no input size.
        overwrite: Replace an existing ``output`` (otherwise refused before any work), and
            write into a non-empty ``explain`` folder.
        trust_class: Your own model classes the checkpoint may name (see ``load_classifier``).
        quiet: Print nothing.
        min_confidence: Rows whose (calibrated) top probability is below this say ``unknown``.
        explain: Folder for one Grad-CAM overlay PNG per readable image (``ROW_STEM.png``).
        precision: ``32``, ``bf16`` or ``16`` for the forward pass.
        progress: A progress bar on stderr for long inputs (only on a terminal).
        group_regex: How labelled images group (a ``split --group_regex``), for an accuracy
            interval over groups; ``auto``: what ``split`` recorded beside the input folders;
            ``none``: independent images.

    Returns:
        The predictions; ``accuracy`` is set when inputs sit in ``CLASS/`` folders.

    Raises:
        OutputExistsError: ``output`` is a folder, or exists and ``overwrite`` is false; or
            ``explain`` is a file or a non-empty folder without ``overwrite``.
        ConfigError: ``min_confidence`` outside [0, 1], an unknown ``precision`` or an
            invalid ``group_regex``.
    """
    # Fail fast: a taken output path is known before the model loads or any image decodes.
    check_output(output, overwrite)
    if not 0.0 <= min_confidence <= 1.0:
        raise ConfigError(f"--min_confidence {min_confidence} must be between 0 and 1")
    groups = resolve_group_regex(group_regex, inputs)
    writer = OverlayWriter(explain, overwrite) if explain else None
    model, spec = load_classifier(
        ckpt, image_size=image_size, device=resolve_device(device), trust_class=trust_class
    )
    autocast(resolve_device(device), precision)  # an unknown precision fails before decoding
    if writer is not None:
        writer.check_model(model)
    files, notes = collect_inputs(inputs, spec.class_names)
    mode = resolve_tta(tta, spec)
    if mode == "hflip" and not spec.train_flips.get("hflip") and not quiet:
        print(
            "note: --tta hflip on a model trained without horizontal flips may lower accuracy",
            file=sys.stderr,
        )
    start = time.perf_counter()
    result = predict_files(
        model,
        spec,
        files,
        batch_size=batch_size,
        tta=mode,
        precision=precision,
        show_progress=progress and not quiet,
        explain=writer,
    )
    result.min_confidence = min_confidence
    seconds = time.perf_counter() - start
    path = write_csv(result, output, topk, overwrite=overwrite)
    if not quiet:
        for note in notes:
            print(f"note: {note}", file=sys.stderr)
        print_summary(
            result, seconds, path, f"tta {mode}, {spec.image_size}px", spec.temperature, groups
        )
        if writer is not None:
            print(f"{writer.written} Grad-CAM overlay(s) -> {writer.folder}")
    return result
