"""Decoding image files of any mode and size into RGB uint8 arrays at a fixed size."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from lit_vision.errors import LitVisionError

# Refuse truncated files instead of silently padding them with grey.
ImageFile.LOAD_TRUNCATED_IMAGES = False

IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".png", ".ppm", ".pgm", ".pbm", ".pnm", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
)


class ImageDecodeError(LitVisionError):
    """An image file that cannot be read; the message names the file and the reason."""

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"cannot read image {self.path}: {reason}")


def is_hidden(path: str | Path, root: str | Path | None = None) -> bool:
    """Whether any component of ``path`` below ``root`` (or its name alone) starts with ``.``.

    Hidden files and folders (``.ipynb_checkpoints/``, ``.DS_Store``, ``._x.jpg``, our own
    ``.lit_vision_cache/``) are never data: ``split``, ``check``, the DataModule and ``predict``
    all leave them out, and ``check``/``split`` list the images they leave out that way.
    """
    p = Path(path)
    parts = p.relative_to(root).parts if root is not None else (p.name,)
    return any(q.startswith(".") for q in parts)


def is_image_file(path: str | Path, root: str | Path | None = None) -> bool:
    """The one rule for what counts as an image file, shared by every command.

    An image extension (case-insensitive) and nothing hidden: neither the file nor, when
    ``root`` is given, any folder between ``root`` and the file starts with ``.``.

    Args:
        path: The file.
        root: The folder the file was found under (a split or class folder); ``None``
            checks the file name only.
    """
    return not is_hidden(path, root) and Path(path).suffix.lower() in IMAGE_EXTENSIONS


def _to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL mode (1, L, LA, P, RGBA, CMYK, I;16, I, F, ...) to 8-bit RGB."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        if img.mode.startswith("I;16") or (img.mode == "I" and arr.max(initial=0) > 255):
            arr = arr / 257.0  # 16-bit range onto 8-bit
        elif img.mode == "F" and arr.max(initial=0) <= 1.0:
            arr = arr * 255.0
        img = Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), mode="L")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        # Composite on white: transparent pixels have arbitrary colour values underneath.
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    return img.convert("RGB") if img.mode != "RGB" else img


def load_image(path: str | Path, size: int | tuple[int, int] | None = None) -> np.ndarray:
    """Decode one image file to an RGB uint8 array, optionally resized.

    EXIF orientation is applied; large JPEGs are decoded at reduced scale (``draft``) when
    that still leaves at least ``size`` pixels, which is several times faster.

    Args:
        path: Image file.
        size: Output side (square) or ``(height, width)``; ``None`` keeps the original size.

    Returns:
        An ``(H, W, 3)`` uint8 array.

    Raises:
        ImageDecodeError: The file is missing, truncated, corrupt or not an image.
    """
    hw = (size, size) if isinstance(size, int) else size
    try:
        with warnings.catch_warnings():
            # Decompression-bomb and palette warnings become errors we can name.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                if hw is not None and img.format == "JPEG":
                    img.draft("RGB", (hw[1], hw[0]))
                img.load()
                img = ImageOps.exif_transpose(img) or img
                img = _to_rgb(img)
                if hw is not None and img.size != (hw[1], hw[0]):
                    img = img.resize((hw[1], hw[0]), Image.BILINEAR)
                arr = np.array(img, dtype=np.uint8)  # a writable copy, safe for torch
    except FileNotFoundError:
        raise ImageDecodeError(path, "file not found") from None
    except UnidentifiedImageError:
        raise ImageDecodeError(path, "not a recognised image format") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError, Warning) as err:
        raise ImageDecodeError(path, str(err) or type(err).__name__) from None
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ImageDecodeError(path, f"unexpected decoded shape {arr.shape}")
    return arr
