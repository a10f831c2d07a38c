"""The embedded default dataset: scikit-learn's 1,797 handwritten digits as a split image tree."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from lit_vision.data import ImageFolderDataModule
from lit_vision.distributed import file_lock
from lit_vision.split import split_dataset


def materialize_digits(root: str | Path, *, size: int = 32, seed: int = 0) -> Path:
    """Write the digits as ``size``-px PNGs into ``root/{train,val,test}/0..9/`` (70/15/15).

    The 8x8 scans (16 grey levels, from UCI's optical recognition set, shipped inside
    scikit-learn) are upscaled bicubically. Nothing is downloaded. A complete tree already
    at ``root`` is reused.

    Args:
        root: Where the split tree is written.
        size: Side of the written images.
        seed: Seed of the 70/15/15 split.

    Returns:
        ``root``.
    """
    from sklearn.datasets import load_digits  # scikit-learn: heavy, needed only here

    root = Path(root).expanduser()
    if (root / "split_manifest.csv").is_file():
        return root
    # Every DDP process builds the DataModule (torchrun/srun start them together): the first
    # writes the tree, the others wait on the lock and then find it complete.
    with file_lock(root):
        if (root / "split_manifest.csv").is_file():
            return root
        return _write_digits(root, size, seed, load_digits())


def _write_digits(root: Path, size: int, seed: int, digits: Any) -> Path:
    """Write the digit images into ``root`` via a staging folder (caller holds the lock).

    Args:
        root: The final folder; it appears complete or not at all.
        size: Side of the written images.
        seed: Seed of the split.
        digits: scikit-learn's ``load_digits()`` bunch (``images``, ``target``).

    Returns:
        ``root``.
    """
    with tempfile.TemporaryDirectory(prefix="digits_raw_") as raw:
        raw = Path(raw)
        for i, (image, label) in enumerate(zip(digits.images, digits.target, strict=True)):
            pixels = np.clip(np.rint(image * (255.0 / 16.0)), 0, 255).astype(np.uint8)
            out = raw / str(label) / f"{i:04d}.png"
            out.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels, mode="L").resize((size, size), Image.BICUBIC).save(out)
        staging = root.with_name(f".{root.name}.partial")
        if staging.exists():
            shutil.rmtree(staging)
        split_dataset(raw, staging, val=0.15, test=0.15, seed=seed, quiet=True)
        root.parent.mkdir(parents=True, exist_ok=True)
        staging.rename(root)  # appears complete or not at all
    return root


class DigitsDataModule(ImageFolderDataModule):
    """``ImageFolderDataModule`` on the embedded digits, materialised into ``root`` on first use.

    Args:
        root: Where the digit images are written (created if missing).
        **kwargs: Any ``ImageFolderDataModule`` argument.
    """

    def __init__(self, root: str | Path = "data/digits", **kwargs: Any) -> None:
        materialize_digits(root)
        super().__init__(root, **kwargs)
