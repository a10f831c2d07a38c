"""``predict --explain DIR``: one Grad-CAM overlay PNG per predicted image, named by CSV row."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from lit_vision.errors import OutputExistsError
from lit_vision.gradcam import heatmaps, overlay, target_layer


def overlay_name(row: int, path: str) -> str:
    """``ROW_STEM.png``: the CSV row number (from 0, zero-padded) and the input's file stem."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(path).stem)[:80] or "image"
    return f"{row:06d}_{stem}.png"


class OverlayWriter:
    """Writes Grad-CAM overlays of the predicted class into a folder.

    The folder is checked before any work: it must be new or empty, unless ``overwrite``
    (then files of the same names are replaced and nothing else is touched).

    Args:
        folder: Where the PNGs go (created).
        overwrite: Accept a folder that already holds files.

    Raises:
        OutputExistsError: ``folder`` is a file, or a non-empty folder without ``overwrite``.
    """

    def __init__(self, folder: str | Path, overwrite: bool = False) -> None:
        self.folder = Path(folder)
        if self.folder.exists() and not self.folder.is_dir():
            raise OutputExistsError(f"--explain {self.folder} is a file; give a folder")
        if self.folder.is_dir() and any(self.folder.iterdir()) and not overwrite:
            raise OutputExistsError(
                f"--explain {self.folder} is not empty; pass --overwrite true to write into it"
            )
        self.written = 0

    def check_model(self, model: torch.nn.Module) -> None:
        """Fail before predicting when Grad-CAM has no layer to use in ``model``."""
        target_layer(model)

    def write(
        self,
        model: torch.nn.Module,
        rows: Sequence[int],
        paths: Sequence[str],
        batch: torch.Tensor,
        classes: Sequence[int],
    ) -> None:
        """Write one overlay per image of a uint8 NCHW ``batch``, explaining ``classes``.

        Args:
            model: The classifier (eval mode).
            rows: Each image's CSV row number.
            paths: Each image's input path.
            batch: The images as the model saw them (decoded, resized, uint8 NCHW).
            classes: The class to explain per image (the predicted one).
        """
        self.folder.mkdir(parents=True, exist_ok=True)
        cams = heatmaps(model, batch, classes)
        images = batch.detach().cpu().numpy()
        for row, path, img, cam in zip(rows, paths, images, cams, strict=True):
            out = overlay(np.ascontiguousarray(img), cam)
            Image.fromarray(out).save(self.folder / overlay_name(row, path))
            self.written += 1
