"""The files to predict: folders and files in, labelled where they sit in class folders, decoded."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import albumentations as A
import numpy as np

from lit_vision.augment import apply
from lit_vision.images import ImageDecodeError, is_image_file, load_image


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

    Args:
        inputs: Folders (searched at any depth) and/or files.
        class_names: The model's classes; sub-folders with these names label their files.

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
        note = _unknown_subfolders_note(p, known)
        if note:
            notes.append(note)
        files += _folder_files(p, known)
    return files, notes


def _unknown_subfolders_note(folder: Path, known: set[str]) -> str | None:
    """A note when some, but not all, sub-folders of ``folder`` are classes of the model."""
    subdirs = sorted(d.name for d in folder.iterdir() if d.is_dir())
    labelled = [d for d in subdirs if d in known]
    if labelled and len(labelled) < len(subdirs):
        unknown = [d for d in subdirs if d not in known]
        return (
            f"{folder}: sub-folder(s) {', '.join(unknown[:5])} are not classes of the model "
            "(unlabelled)"
        )
    return None


def _folder_files(folder: Path, known: set[str]) -> list[InputFile]:
    """Every file under ``folder`` (sorted), labelled by its top-level class folder if scored."""
    files = []
    for f in sorted(x for x in folder.rglob("*") if x.is_file()):
        parts = f.relative_to(folder).parts
        # Score exactly the files `test` would: image extensions, no hidden folder or file.
        scored = len(parts) > 1 and is_image_file(f) and not any(q.startswith(".") for q in parts)
        files.append(InputFile(str(f), parts[0] if scored and parts[0] in known else None))
    return files


def decode_file(path: str, size: int, transform: A.Compose) -> tuple[np.ndarray | None, str | None]:
    """Decode, resize and eval-transform one file; ``(None, reason)`` when it cannot be read.

    Args:
        path: The file.
        size: Side the decoder resizes to.
        transform: The eval transform (``InferenceSpec.transform``).

    Returns:
        ``(HWC uint8 pixels, None)``, or ``(None, why it could not be read)``.
    """
    try:
        return apply(transform, load_image(path, size)), None
    except ImageDecodeError as err:
        return None, err.reason
    except Exception as err:  # noqa: BLE001 - one bad file must never stop the run
        return None, f"{type(err).__name__}: {err}"
