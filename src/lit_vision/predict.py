"""Predict with a checkpoint: folders or files of images -> a CSV, with accuracy on labelled folders."""

from __future__ import annotations

import csv
import math
import os
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import albumentations as A
import numpy as np
import torch

from lit_vision.augment import apply
from lit_vision.checkpoints import CheckpointError, model_class, model_kwargs, read_checkpoint
from lit_vision.errors import OutputExistsError
from lit_vision.images import ImageDecodeError, is_image_file, load_image
from lit_vision.models import ImageClassifier
from lit_vision.spec import CHECKPOINT_KEY, InferenceSpec

TTA = Literal["none", "hflip", "auto"]


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
    cls: type[ImageClassifier], hparams: dict[str, Any], state_dict: dict[str, Any], path: str | Path
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
    raise CheckpointError(f"checkpoint {path} does not rebuild a {cls.__name__}: {reason}") from None


@dataclass
class InputFile:
    """One file to predict, with its true class when it sits in a labelled folder."""

    path: str
    label: str | None = None


def collect_inputs(
    inputs: Sequence[str | Path], class_names: Sequence[str]
) -> tuple[list[InputFile], list[str]]:
    """Every file under the given folders (any depth) and every file given directly.

    Nothing is filtered by extension: a file that is not an image gets a CSV row saying so.
    An image file (by extension, not hidden) under ``FOLDER/CLASS/...`` where ``CLASS`` is one
    of ``class_names`` is labelled, so accuracy counts the same files as ``test`` does.

    Returns:
        The files in order (folders sorted) and notes about unlabelled class-like folders.

    Raises:
        FileNotFoundError: An input path does not exist.
    """
    known = set(class_names)
    files: list[InputFile] = []
    notes: list[str] = []
    for item in inputs:
        p = Path(item)
        if p.is_file():
            files.append(InputFile(str(p)))
            continue
        if not p.is_dir():
            raise FileNotFoundError(f"input {p} does not exist")
        subdirs = sorted(d.name for d in p.iterdir() if d.is_dir())
        labelled = [d for d in subdirs if d in known]
        if labelled and len(labelled) < len(subdirs):
            unknown = [d for d in subdirs if d not in known]
            notes.append(
                f"{p}: sub-folder(s) {', '.join(unknown[:5])} are not classes of the model (unlabelled)"
            )
        for f in sorted(x for x in p.rglob("*") if x.is_file()):
            parts = f.relative_to(p).parts
            # Score exactly the files `test` would: image extensions, no hidden folder or file.
            scored = (
                len(parts) > 1 and is_image_file(f) and not any(q.startswith(".") for q in parts)
            )
            files.append(InputFile(str(f), parts[0] if scored and parts[0] in known else None))
    return files, notes


@dataclass
class Prediction:
    """One CSV row: the prediction for a file, or why it could not be read."""

    path: str
    label: str | None
    probs: np.ndarray | None = None
    error: str | None = None


@dataclass
class PredictResult:
    """Predictions for every input file, and accuracy over the labelled readable ones."""

    rows: list[Prediction]
    class_names: list[str]
    tta: str

    @property
    def n_unreadable(self) -> int:
        """Files that could not be decoded."""
        return sum(r.error is not None for r in self.rows)

    @property
    def labelled(self) -> list[Prediction]:
        """Readable files with a known true class."""
        return [r for r in self.rows if r.label is not None and r.probs is not None]

    @property
    def accuracy(self) -> float | None:
        """Top-1 accuracy over labelled readable files (``None`` when there are none)."""
        rows = self.labelled
        if not rows:
            return None
        index = {c: i for i, c in enumerate(self.class_names)}
        return float(np.mean([int(np.argmax(r.probs)) == index[r.label] for r in rows]))


def decode_file(path: str, size: int, transform: A.Compose) -> tuple[np.ndarray | None, str | None]:
    """Decode, resize and eval-transform one file; ``(None, reason)`` when it cannot be read."""
    try:
        return apply(transform, load_image(path, size)), None
    except ImageDecodeError as err:
        return None, err.reason
    except Exception as err:  # noqa: BLE001 - one bad file must never stop the run
        return None, f"{type(err).__name__}: {err}"


def _chunks(items: Sequence[InputFile], n: int) -> Iterator[Sequence[InputFile]]:
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


@torch.inference_mode()
def predict_probs(model: ImageClassifier, batch: torch.Tensor, tta: str = "none") -> torch.Tensor:
    """Class probabilities for a uint8 NCHW batch, optionally averaged over horizontal flips."""
    probs = model(batch).float().softmax(dim=1)
    if tta == "hflip":
        probs = (probs + model(batch.flip(-1)).float().softmax(dim=1)) / 2
    return probs


def predict_files(
    model: ImageClassifier,
    spec: InferenceSpec,
    files: Sequence[InputFile],
    *,
    batch_size: int = 64,
    tta: str = "none",
    workers: int | None = None,
) -> PredictResult:
    """Decode and classify files in batches; unreadable files become rows with the reason.

    Decoding runs in a thread pool one batch ahead of the model (PIL releases the GIL).
    """
    device = next(model.parameters()).device
    rows: list[Prediction] = []
    workers = workers or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(workers) as pool:

        def submit(chunk: Sequence[InputFile]) -> list[Future]:
            return [
                pool.submit(decode_file, f.path, spec.image_size, spec.transform) for f in chunk
            ]

        chunks = list(_chunks(files, batch_size))
        pending = submit(chunks[0]) if chunks else []
        for i, chunk in enumerate(chunks):
            decoded = [fut.result() for fut in pending]
            pending = submit(chunks[i + 1]) if i + 1 < len(chunks) else []
            ok = [j for j, (img, _) in enumerate(decoded) if img is not None]
            probs = None
            if ok:
                batch = torch.from_numpy(np.stack([decoded[j][0] for j in ok])).permute(0, 3, 1, 2)
                probs = predict_probs(model, batch.to(device), tta).cpu().numpy()
            where = {j: k for k, j in enumerate(ok)}
            for j, f in enumerate(chunk):
                if j in where:
                    rows.append(Prediction(f.path, f.label, probs=probs[where[j]]))
                else:
                    rows.append(Prediction(f.path, f.label, error=decoded[j][1]))
    return PredictResult(rows, list(spec.class_names), tta)


def check_output(output: str | Path, overwrite: bool = False) -> Path:
    """Refuse an output path that is a folder, sits under a file, or exists (unless ``overwrite``).

    Called before any work so a wrong ``--output`` fails in a second, not after predicting.

    Raises:
        OutputExistsError: One line naming the path (and ``--overwrite true`` when it applies).
    """
    output = Path(output)
    if output.is_dir():
        raise OutputExistsError(f"--output {output} is a folder; give the CSV file to write")
    for parent in output.parents:
        if parent.is_symlink() or parent.exists():
            if not parent.is_dir():
                raise OutputExistsError(f"--output {output}: {parent} is a file, not a folder")
            break
    # lexists: a dangling symlink is taken too (writing through it would create its target).
    if os.path.lexists(output) and not overwrite:
        raise OutputExistsError(
            f"--output {output} already exists; pass --overwrite true to replace it"
        )
    return output


def _new_file_mode() -> int:
    """The mode ``open`` would give a new file (mkstemp's files are 0600 whatever the umask)."""
    # Reading the umask means setting it; briefly, and only after the decode threads are done.
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


def write_csv(
    result: PredictResult, output: str | Path, topk: int = 3, *, overwrite: bool = False
) -> Path:
    """Write one row per input file.

    Columns: ``path, status`` (``ok``/``error``), ``pred, prob`` (top class and its
    probability), ``true, correct`` (empty outside labelled folders), ``top1, top1_prob ...
    topK, topK_prob`` and ``error`` (why an unreadable file could not be read).

    The rows go to a uniquely named hidden file in the same folder, renamed onto ``output``
    only when complete: a reader never sees half a CSV and no user file is clobbered.

    Args:
        result: The predictions.
        output: CSV path.
        topk: Number of top classes per row.
        overwrite: Replace an existing ``output``; without it an existing file is an error.

    Raises:
        OutputExistsError: ``output`` is a folder, or exists and ``overwrite`` is false.
    """
    output = check_output(output, overwrite)
    output.parent.mkdir(parents=True, exist_ok=True)
    k = max(1, min(topk, len(result.class_names)))
    names = result.class_names
    header = ["path", "status", "pred", "prob", "true", "correct"]
    for i in range(1, k + 1):
        header += [f"top{i}", f"top{i}_prob"]
    header.append("error")
    fd, tmp_name = tempfile.mkstemp(dir=output.parent, prefix=f".{output.name}.", suffix=".tmp")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(header)
            for r in result.rows:
                true = r.label or ""
                if r.probs is None:
                    writer.writerow([r.path, "error", "", "", true, ""] + ["", ""] * k + [r.error])
                    continue
                order = np.argsort(-r.probs, kind="stable")[:k]
                pred = names[order[0]]
                correct = "" if r.label is None else int(pred == r.label)
                tops: list[Any] = []
                for j in order:
                    tops += [names[j], f"{r.probs[j]:.6f}"]
                writer.writerow(
                    [r.path, "ok", pred, f"{r.probs[order[0]]:.6f}", true, correct] + tops + [""]
                )
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, _new_file_mode())
        if overwrite:
            os.replace(tmp, output)
        else:
            _link_new(tmp, output)
    finally:
        # Gone after a successful rename; after any failure this removes the partial file.
        tmp.unlink(missing_ok=True)
    return output


def _link_new(tmp: Path, output: Path) -> None:
    """Put ``tmp`` at ``output`` only if nothing appeared there meanwhile (no overwrite)."""
    try:
        # link() fails when the target exists: no window between the check and the rename.
        os.link(tmp, output)
    except FileExistsError:
        raise OutputExistsError(
            f"--output {output} appeared while predicting; pass --overwrite true to replace it"
        ) from None
    except OSError:
        # Filesystems without hard links: re-check, then rename (a tiny race remains).
        check_output(output, overwrite=False)
        os.replace(tmp, output)


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
        overwrite: Replace an existing ``output`` (otherwise refused before any work).
        trust_class: Your own model classes the checkpoint may name (see ``load_classifier``).
        quiet: Print nothing.

    Returns:
        The predictions; ``accuracy`` is set when inputs sit in ``CLASS/`` folders.

    Raises:
        OutputExistsError: ``output`` is a folder, or exists and ``overwrite`` is false.
    """
    # Fail fast: a taken output path is known before the model loads or any image decodes.
    check_output(output, overwrite)
    model, spec = load_classifier(
        ckpt, image_size=image_size, device=resolve_device(device), trust_class=trust_class
    )
    files, notes = collect_inputs(inputs, spec.class_names)
    mode = resolve_tta(tta, spec)
    if mode == "hflip" and not spec.train_flips.get("hflip") and not quiet:
        print(
            "note: --tta hflip on a model trained without horizontal flips may lower accuracy",
            file=sys.stderr,
        )
    start = time.perf_counter()
    result = predict_files(model, spec, files, batch_size=batch_size, tta=mode)
    seconds = time.perf_counter() - start
    path = write_csv(result, output, topk, overwrite=overwrite)
    if not quiet:
        for note in notes:
            print(f"note: {note}", file=sys.stderr)
        n = len(result.rows)
        print(
            f"predicted {n - result.n_unreadable}/{n} files in {seconds:.1f} s "
            f"({n / max(seconds, 1e-9):.0f} files/s) -> {path} (tta {mode}, {spec.image_size}px)"
        )
        if result.n_unreadable:
            print(
                f"{result.n_unreadable} unreadable file(s), listed with status=error and the reason"
            )
        if result.accuracy is not None:
            m = len(result.labelled)
            se = math.sqrt(result.accuracy * (1 - result.accuracy) / m)
            print(f"accuracy {result.accuracy:.4f} (+/- {se:.4f}) on {m} labelled images")
    return result
