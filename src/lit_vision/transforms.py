"""Albumentations presets: one train and one eval pipeline, on uint8 HWC images already at size."""

from __future__ import annotations

import albumentations as A
import numpy as np


def train_transforms(
    *,
    hflip: bool = False,
    vflip: bool = False,
    rotate: float = 10.0,
    scale: tuple[float, float] = (0.9, 1.1),
    translate: float = 0.1,
    shear: float = 0.0,
    color_jitter: float = 0.2,
) -> A.Compose:
    """Build the training augmentation pipeline.

    Images arrive decoded and resized to the model's input size (uint8, HWC, RGB), so the
    pipeline only perturbs geometry and colour; normalisation happens on the batch inside
    the model, which keeps per-sample work small and the exported model self-contained.

    Args:
        hflip: Random horizontal flips. Off by default: they change the meaning of many
            traffic signs (left/right turn) and of text.
        vflip: Random vertical flips (aerial images, micrographs, cracks).
        rotate: Maximum rotation in degrees (0 disables).
        scale: Zoom range for the random affine.
        translate: Maximum shift as a fraction of the image side.
        shear: Maximum shear in degrees.
        color_jitter: Strength of brightness/contrast/saturation jitter (0 disables).

    Returns:
        An albumentations ``Compose`` taking and returning ``image`` as uint8 HWC.
    """
    ops: list[A.BasicTransform] = []
    if hflip:
        ops.append(A.HorizontalFlip(p=0.5))
    if vflip:
        ops.append(A.VerticalFlip(p=0.5))
    if rotate or translate or shear or scale != (1.0, 1.0):
        ops.append(
            A.Affine(
                scale=scale,
                translate_percent=(-translate, translate),
                rotate=(-rotate, rotate),
                shear=(-shear, shear),
                border_mode=0,  # cv2.BORDER_CONSTANT: black fill, no mirrored artefacts
                p=0.9,
            )
        )
    if color_jitter:
        ops.append(
            A.ColorJitter(
                brightness=color_jitter,
                contrast=color_jitter,
                saturation=color_jitter,
                hue=0.0,
                p=0.8,
            )
        )
    return A.Compose(ops)


def eval_transforms() -> A.Compose:
    """Build the evaluation pipeline: the identity, since decoding already resized the image."""
    return A.Compose([])


def apply(transform: A.Compose | None, image: np.ndarray) -> np.ndarray:
    """Run an albumentations pipeline on one uint8 HWC image (a no-op for empty pipelines)."""
    if transform is None or not transform.transforms:
        return image
    return transform(image=image)["image"]
