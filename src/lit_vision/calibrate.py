"""``calibrate``: fit a checkpoint's softmax temperature on ROOT/val and write a new checkpoint.

The input checkpoint is untrusted data: it is read without unpickling (``read_checkpoint``),
never rewritten in place unless asked (``overwrite``), and the new file holds the same plain
data plus ``lit_vision.temperature`` and ``lit_vision.calibration``.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lit_vision.calibration import calibrate_logits, checkpoint_entry
from lit_vision.checkpoints import read_checkpoint
from lit_vision.errors import DataError, OutputExistsError
from lit_vision.inputs import InputFile, collect_inputs
from lit_vision.models import ImageClassifier
from lit_vision.predict import autocast, decoded_batches, load_classifier, resolve_device
from lit_vision.spec import CHECKPOINT_KEY, InferenceSpec


def default_output(ckpt: str | Path) -> Path:
    """``NAME.calibrated.ckpt`` beside ``NAME.ckpt``."""
    ckpt = Path(ckpt)
    return ckpt.with_name(f"{ckpt.stem}.calibrated.ckpt")


def check_destination(ckpt: str | Path, output: str | Path, overwrite: bool) -> Path:
    """Refuse, before any work, an output that exists (the input included) without ``overwrite``.

    Raises:
        OutputExistsError: One line naming the path.
    """
    output = Path(output)
    if output.is_dir():
        raise OutputExistsError(f"--output {output} is a folder; give the checkpoint file to write")
    if os.path.lexists(output) and not overwrite:
        same = output.resolve() == Path(ckpt).resolve()
        what = "is the input checkpoint" if same else "already exists"
        raise OutputExistsError(f"--output {output} {what}; pass --overwrite true to replace it")
    return output


@torch.inference_mode()
def logits_of(
    model: ImageClassifier,
    spec: InferenceSpec,
    files: Sequence[InputFile],
    *,
    batch_size: int = 64,
    precision: str = "32",
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Float32 logits and class indices of the labelled readable ``files``, and the unreadable count.

    Args:
        model: The classifier (eval mode).
        spec: Its inference contract (decode size and transform, class names).
        files: Labelled files.
        batch_size: Images per forward pass.
        precision: ``32``, ``bf16`` or ``16``.
    """
    device = next(model.parameters()).device
    index = {c: i for i, c in enumerate(spec.class_names)}
    logits, targets, unreadable = [], [], 0
    for chunk, decoded in decoded_batches(spec, files, batch_size):
        ok = [(f, img) for f, (img, _) in zip(chunk, decoded, strict=True) if img is not None]
        unreadable += len(chunk) - len(ok)
        if not ok:
            continue
        batch = torch.from_numpy(np.stack([img for _, img in ok])).permute(0, 3, 1, 2)
        with autocast(device, precision):
            logits.append(model(batch.to(device)).float().cpu())
        targets.append(torch.tensor([index[f.label] for f, _ in ok]))
    if not logits:
        return torch.zeros(0, len(index)), torch.zeros(0, dtype=torch.long), unreadable
    return torch.cat(logits), torch.cat(targets), unreadable


def save_checkpoint(ckpt: dict[str, Any], output: Path, overwrite: bool) -> None:
    """Write ``ckpt`` to a hidden file beside ``output``, then rename it there (atomic)."""
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=output.parent, prefix=f".{output.name}.", suffix=".tmp")
    except OSError as err:  # e.g. a read-only folder beside a shared checkpoint
        raise OutputExistsError(
            f"--output {output}: cannot write there ({err.strerror}); give another --output"
        ) from None
    os.close(fd)
    try:
        torch.save(ckpt, tmp)
        if not overwrite and os.path.lexists(output):
            raise OutputExistsError(f"--output {output} appeared meanwhile; nothing replaced")
        os.replace(tmp, output)
    finally:
        Path(tmp).unlink(missing_ok=True)


def run_calibrate(
    ckpt: str | Path,
    root: str | Path,
    output: str | Path | None = None,
    *,
    overwrite: bool = False,
    split: str = "val",
    batch_size: int = 64,
    device: str = "auto",
    precision: str = "32",
    trust_class: Sequence[str] = (),
    quiet: bool = False,
) -> dict[str, Any]:
    """Fit the temperature of ``ckpt`` on ``ROOT/SPLIT`` and write a calibrated checkpoint.

    Args:
        ckpt: Checkpoint written by ``fit``.
        root: The split layout (``ROOT/val/CLASS/*``).
        output: The new checkpoint (default ``NAME.calibrated.ckpt`` beside ``ckpt``).
        overwrite: Replace an existing ``output`` (also the input itself).
        split: The held-out split to fit on (never the training split).
        batch_size: Images per forward pass.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        precision: ``32``, ``bf16`` or ``16`` for the forward pass.
        trust_class: Your own model classes the checkpoint may name.
        quiet: Print nothing.

    Returns:
        The calibration summary (``lit_vision.calibration.calibrate_logits``) with ``output``.

    Raises:
        OutputExistsError: ``output`` exists and ``overwrite`` is false.
        DataError: ``ROOT/SPLIT`` is missing or holds no labelled readable image.
    """
    out = check_destination(ckpt, output or default_output(ckpt), overwrite)
    folder = Path(root) / split
    if not folder.is_dir():
        raise DataError(f"--data.root {root}: no {split}/ folder to calibrate on ({folder})")
    model, spec = load_classifier(ckpt, device=resolve_device(device), trust_class=trust_class)
    files = [f for f in collect_inputs([folder], spec.class_names)[0] if f.label is not None]
    z, y, unreadable = logits_of(model, spec, files, batch_size=batch_size, precision=precision)
    if len(z) == 0:
        raise DataError(f"{folder}: no readable image in folders named like the model's classes")
    summary = calibrate_logits(z, y)
    data = read_checkpoint(ckpt, trust_class)
    meta = data.get(CHECKPOINT_KEY) or spec.to_checkpoint()
    meta["temperature"] = summary["temperature"]
    meta["calibration"] = checkpoint_entry(summary, split)
    data[CHECKPOINT_KEY] = meta
    save_checkpoint(data, out, overwrite)
    summary["output"] = str(out)
    if not quiet:
        if unreadable:
            print(f"note: {unreadable} unreadable file(s) in {folder} skipped", file=sys.stderr)
        print(
            f"temperature {summary['temperature']:.4f} fitted on {summary['images']} images of "
            f"{folder}: ECE {summary['ece_before']:.4f} -> {summary['ece_after']:.4f}, "
            f"NLL {summary['nll_before']:.4f} -> {summary['nll_after']:.4f} "
            f"(accuracy {summary['accuracy']:.4f}, unchanged) -> {out}"
        )
    return summary
