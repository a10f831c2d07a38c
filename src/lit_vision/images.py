"""Decoding image files of any mode and size into RGB uint8 arrays at a fixed size."""

from __future__ import annotations

import hashlib
import re
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

from lit_vision.errors import LitVisionError

# Refuse truncated files instead of silently padding them with grey.
ImageFile.LOAD_TRUNCATED_IMAGES = False

IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {
        ".jpg",
        ".jpeg",
        ".png",
        ".ppm",
        ".pgm",
        ".pbm",
        ".pnm",
        ".bmp",
        ".gif",
        ".tif",
        ".tiff",
        ".webp",
    }
)
# Largest image decoded, in pixels actually decoded (after a JPEG's reduced-scale draft).
# A decode holds the whole image at full size (PIL cannot stream PNG rows), so this bounds
# the memory one decode needs: ~4 bytes a pixel for most modes. ``load_image``'s
# ``max_megapixels`` overrides it per call; setting this changes every command's default.
DEFAULT_MAX_MEGAPIXELS: float = 100.0
# The filter every resize uses; part of the disk-cache key, since it changes pixels.
RESIZE_FILTER = Image.Resampling.BILINEAR
_ORIENTATION = 0x0112
# EXIF orientation -> the transpose that shows the image upright (as ImageOps.exif_transpose).
_UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
# Modes PIL resamples correctly as they are; the rest (palette, 1-bit, HSV, ...) are converted
# first, since resampling palette indices or hues would mix unrelated colours.
_RESAMPLE_AS_IS = frozenset(
    {"L", "LA", "La", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "I", "F"}
    | {"I;16", "I;16L", "I;16B", "I;16N"}
)
_MESSAGE = re.compile(r"cannot read image (.*?): (.*)$")


class ImageDecodeError(LitVisionError):
    """An image file that cannot be read; the message names the file and the reason.

    Built from ``(path, reason)``, or from one message: torch's DataLoader re-raises a
    worker's exception as ``type(message)`` with the worker's traceback around the message,
    and unpickling passes ``args``; either way the error stays this type and one line.
    """

    def __init__(self, path: str | Path, reason: str | None = None) -> None:
        if reason is None:
            lines = [line.strip() for line in str(path).splitlines() if line.strip()]
            found = next((m for m in map(_MESSAGE.search, reversed(lines)) if m), None)
            path, reason = found.groups() if found else ("", lines[-1] if lines else "")
        self.path = str(path)
        self.reason = reason
        super().__init__(f"cannot read image {self.path}: {reason}" if self.path else reason)


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


def is_hidden_image(path: str | Path, root: str | Path) -> bool:
    """An image file left out only because it is hidden (``CLASS/.sub/x.jpg``, ``.x.png``).

    macOS resource forks (``._x.jpg``) are metadata, not images, and do not count.
    """
    p = Path(path)
    return (
        is_hidden(p, root) and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith("._")
    )


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes, read in blocks (never the whole file in memory)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _to_8bit(img: Image.Image, high: float) -> Image.Image:
    """16/32-bit integer or float grey to 8-bit ``L``, without a float64 copy.

    Integer images scale 16-bit range onto 8-bit (``round(v / 257)``) when ``high`` (the
    maximum of the full image, taken before resizing) is above 255; floats scale ``[0, 1]``
    onto 0-255 when ``high <= 1``.
    """
    arr = np.asarray(img)
    if img.mode == "F":
        arr = arr.astype(np.float32, copy=False) * np.float32(255.0 if high <= 1.0 else 1.0)
        return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), mode="L")
    wide = np.clip(arr, 0, 65535).astype(np.uint32)
    if img.mode.startswith("I;16") or high > 255:
        wide = (wide + 128) // 257  # round(v / 257) in integers: 65535 -> 255
    return Image.fromarray(np.minimum(wide, 255).astype(np.uint8), mode="L")


def _resample_ready(img: Image.Image) -> Image.Image:
    """Convert modes that cannot be resampled as they are (see ``_RESAMPLE_AS_IS``)."""
    if img.mode in _RESAMPLE_AS_IS:
        return img
    if img.mode == "1":
        return img.convert("L")
    if img.mode == "PA" or (img.mode == "P" and "transparency" in img.info):
        return img.convert("RGBA")
    return img.convert("RGB")


def _to_rgb(img: Image.Image, high: float = 0.0) -> Image.Image:
    """Convert any PIL mode (1, L, LA, P, RGBA, CMYK, I;16, I, F, ...) to 8-bit RGB."""
    if img.mode.startswith("I;16") or img.mode in ("I", "F"):
        img = _to_8bit(img, high)
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        # Composite on white: transparent pixels have arbitrary colour values underneath.
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    return img.convert("RGB") if img.mode != "RGB" else img


def _decode(img: Image.Image, hw: tuple[int, int] | None) -> np.ndarray:
    """The opened, size-checked image to RGB uint8, resized before any full-size conversion.

    Resizing first keeps the full-size image in its decoded mode (2 bytes a pixel for 16-bit
    grey) instead of converting it at full size; the rotation from EXIF is applied to the
    small result.
    """
    img.load()
    upright = _UPRIGHT.get(img.getexif().get(_ORIENTATION, 1))
    img = _resample_ready(img)
    # The 16-bit scaling rule depends on the full image's maximum, not the resized one's.
    high = float(img.getextrema()[1]) if img.mode in ("I", "F") else 0.0
    if hw is not None:
        swap = upright in (
            Image.Transpose.TRANSPOSE,
            Image.Transpose.TRANSVERSE,
            Image.Transpose.ROTATE_90,
            Image.Transpose.ROTATE_270,
        )
        target = (hw[0], hw[1]) if swap else (hw[1], hw[0])
        if img.size != target:
            img = img.resize(target, RESIZE_FILTER)
    if upright is not None:
        img = img.transpose(upright)
    return np.array(_to_rgb(img, high), dtype=np.uint8)  # a writable copy, safe for torch


def load_image(
    path: str | Path,
    size: int | tuple[int, int] | None = None,
    *,
    max_megapixels: float | None = None,
) -> np.ndarray:
    """Decode one image file to an RGB uint8 array, optionally resized.

    EXIF orientation is applied; large JPEGs are decoded at reduced scale (``draft``) when
    that still leaves at least ``size`` pixels, which is several times faster. Other formats
    are resized in their decoded mode before conversion, so a 16-bit 9000x9000 PNG needs its
    decoded 160 MB, not gigabytes of float copies.

    Args:
        path: Image file (or a binary file object).
        size: Output side (square) or ``(height, width)``; ``None`` keeps the original size.
        max_megapixels: Refuse images with more pixels to decode than this; ``None`` takes
            :data:`DEFAULT_MAX_MEGAPIXELS`.

    Returns:
        An ``(H, W, 3)`` uint8 array.

    Raises:
        ImageDecodeError: The file is missing, truncated, corrupt, not an image, or over
            the megapixel limit.
    """
    hw = (size, size) if isinstance(size, int) else size
    limit = DEFAULT_MAX_MEGAPIXELS if max_megapixels is None else float(max_megapixels)
    try:
        with warnings.catch_warnings():
            # Our megapixel limit replaces PIL's decompression-bomb warning (PIL still refuses
            # images over twice its own limit, which ends up below as an ImageDecodeError).
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                if hw is not None and img.format == "JPEG":
                    img.draft("RGB", (max(hw), max(hw)))  # either orientation keeps >= size
                w, h = img.size
                if w * h > limit * 1e6:
                    mp = f"{w}x{h} is {w * h / 1e6:.0f} megapixels"
                    raise ImageDecodeError(
                        path, f"{mp}, over the limit of {limit:g} (max_megapixels)"
                    )
                arr = _decode(img, hw)
    except ImageDecodeError:
        raise
    except FileNotFoundError:
        raise ImageDecodeError(path, "file not found") from None
    except UnidentifiedImageError:
        raise ImageDecodeError(path, "not a recognised image format") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError, Warning) as err:
        raise ImageDecodeError(path, str(err) or type(err).__name__) from None
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ImageDecodeError(path, f"unexpected decoded shape {arr.shape}")
    return arr
