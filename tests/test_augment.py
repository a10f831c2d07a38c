"""One AugmentSettings, two backends: albumentations and BatchAugment draw the same augmentations.

The statistical tests run many samples of each backend on a synthetic image and compare the
distributions of what a user would see: where a marker lands (flips, rotation, zoom, shift,
shear) and how much brighter the image gets (colour jitter).
"""

from __future__ import annotations

import albumentations as A
import numpy as np
import pytest
import torch

from lit_vision.augment import AugmentSettings, BatchAugment, seed_pipeline, train_transforms
from lit_vision.data import ImageFolderDataModule

N = 600  # samples per backend: standard errors of ~4% on a spread, ~2% on a rate
SIZE = 48


def _albumentations(settings: AugmentSettings, image: np.ndarray) -> np.ndarray:
    """``N`` augmentations of ``image`` by the albumentations backend, ``(N, H, W, 3)`` float 0-255."""
    pipeline = settings.albumentations()
    out = []
    for seed in np.random.default_rng(0).integers(0, 2**31 - 1, N).tolist():
        seed_pipeline(pipeline, seed)  # as the training loader does, one seed per sample
        out.append(pipeline(image=image)["image"])
    return np.stack(out).astype(np.float64)


def _batched(settings: AugmentSettings, image: np.ndarray) -> np.ndarray:
    """``N`` augmentations of ``image`` by BatchAugment, ``(N, H, W, 3)`` float 0-255."""
    torch.manual_seed(0)
    batch = torch.from_numpy(image).permute(2, 0, 1)[None].repeat(N, 1, 1, 1)
    out = BatchAugment(settings)(batch) * 255.0
    return out.permute(0, 2, 3, 1).double().numpy()


def _marker_image(x: int, y: int) -> np.ndarray:
    """A black image with a 4x4 white marker whose top-left corner is at ``(x, y)``."""
    image = np.zeros((SIZE, SIZE, 3), dtype=np.uint8)
    image[y : y + 4, x : x + 4] = 255
    return image


def _centroids(images: np.ndarray) -> np.ndarray:
    """Intensity-weighted ``(x, y)`` centre of each image's bright pixels, ``(N, 2)``."""
    weight = images.mean(-1)
    total = weight.sum((1, 2))
    ys, xs = np.mgrid[0:SIZE, 0:SIZE]
    return np.stack([(weight * xs).sum((1, 2)) / total, (weight * ys).sum((1, 2)) / total], 1)


def test_both_backends_are_built_from_the_same_ranges() -> None:
    s = AugmentSettings(
        hflip=True,
        vflip=True,
        rotate=15,
        scale=(0.8, 1.2),
        translate=0.1,
        shear=7,
        color_jitter=0.3,
    )
    ops = {type(t).__name__: t for t in s.albumentations().transforms}
    assert ops["HorizontalFlip"].p == ops["VerticalFlip"].p == s.FLIP_P
    affine = ops["Affine"]
    assert affine.p == s.AFFINE_P and affine.keep_ratio and affine.border_mode == 0
    assert affine.rotate == (-15, 15) and affine.scale == {"x": (0.8, 1.2), "y": (0.8, 1.2)}
    assert affine.translate_percent == {"x": (-0.1, 0.1), "y": (-0.1, 0.1)}
    assert affine.shear == {"x": (-7, 7), "y": (0, 0)}  # horizontal only, as BatchAugment
    jitter = ops["ColorJitter"]
    assert jitter.p == s.JITTER_P and jitter.hue == (0, 0)
    assert jitter.brightness == jitter.contrast == jitter.saturation == pytest.approx((0.7, 1.3))
    assert BatchAugment(s).settings is s and s.batch_augment().settings == s
    # The keyword helpers build the same objects.
    assert A.to_dict(train_transforms(hflip=True, shear=7)) == A.to_dict(
        AugmentSettings(hflip=True, shear=7).albumentations()
    )
    assert BatchAugment(hflip=True).settings == AugmentSettings(hflip=True)
    # The DataModule's argument defaults are the settings' defaults (one declaration).
    assert AugmentSettings() == AugmentSettings.from_mapping(
        {
            k: p.default
            for k, p in __import__("inspect").signature(ImageFolderDataModule).parameters.items()
        }
    )


def test_disabled_settings_build_empty_pipelines() -> None:
    off = AugmentSettings(rotate=0, scale=(1, 1), translate=0, color_jitter=0)
    assert not off.affine and off.albumentations().transforms == []
    x = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
    assert torch.equal(BatchAugment(off)(x), x.float() / 255)


@pytest.mark.parametrize(
    "bad", [{"scale": (1.2, 0.8)}, {"rotate": -1}, {"color_jitter": 1.5}, {"scale": (0.0, 1.0)}]
)
def test_settings_out_of_range_are_refused(bad: dict) -> None:
    with pytest.raises(ValueError, match=next(iter(bad))):
        AugmentSettings(**bad)


def test_flip_rates_agree() -> None:
    s = AugmentSettings(hflip=True, vflip=True, rotate=0, scale=(1, 1), translate=0, color_jitter=0)
    image = _marker_image(6, 10)  # upper left quadrant
    for out in (_albumentations(s, image), _batched(s, image)):
        c = _centroids(out)
        right, bottom = (c[:, 0] > SIZE / 2).mean(), (c[:, 1] > SIZE / 2).mean()
        assert abs(right - 0.5) < 0.07 and abs(bottom - 0.5) < 0.07, (right, bottom)
        both = ((c[:, 0] > SIZE / 2) & (c[:, 1] > SIZE / 2)).mean()
        assert abs(both - 0.25) < 0.06  # the two flips are independent


@pytest.mark.parametrize(
    ("settings", "marker"),
    [
        (AugmentSettings(rotate=20, scale=(0.8, 1.2), translate=0.1, color_jitter=0), (32, 10)),
        (AugmentSettings(rotate=0, scale=(1, 1), translate=0, shear=25, color_jitter=0), (22, 8)),
    ],
    ids=["rotate-zoom-shift", "shear"],
)
def test_marker_displacement_agrees(settings: AugmentSettings, marker: tuple[int, int]) -> None:
    image = _marker_image(*marker)
    start = _centroids(image[None].astype(np.float64))[0]
    moved_a = _centroids(_albumentations(settings, image)) - start
    moved_b = _centroids(_batched(settings, image)) - start
    # Unchanged images: the affine is skipped with probability 1 - AFFINE_P.
    still_a, still_b = (
        (np.abs(moved_a).max(1) < 1e-3).mean(),
        (np.abs(moved_b).max(1) < 1e-3).mean(),
    )
    assert abs(still_a - still_b) < 0.05 and abs(still_a - (1 - settings.AFFINE_P)) < 0.05
    for axis in (0, 1):
        a, b = moved_a[:, axis], moved_b[:, axis]
        assert abs(a.mean() - b.mean()) < 0.5, (axis, a.mean(), b.mean())
        assert abs(a.std() - b.std()) < 0.12 * max(a.std(), b.std()) + 0.15, (
            axis,
            a.std(),
            b.std(),
        )
        qa, qb = np.quantile(a, [0.1, 0.5, 0.9]), np.quantile(b, [0.1, 0.5, 0.9])
        assert np.abs(qa - qb).max() < 0.15 * max(a.std(), b.std()) + 0.6, (axis, qa, qb)


def test_colour_jitter_brightness_agrees() -> None:
    s = AugmentSettings(rotate=0, scale=(1, 1), translate=0, color_jitter=0.3)
    image = np.full((SIZE, SIZE, 3), (150, 120, 90), dtype=np.uint8)
    ratios = []
    for out in (_albumentations(s, image), _batched(s, image)):
        ratios.append(out.mean((1, 2, 3)) / image.mean())
    a, b = ratios
    still_a, still_b = (np.abs(a - 1) < 2e-3).mean(), (np.abs(b - 1) < 2e-3).mean()
    assert abs(still_a - still_b) < 0.06 and abs(still_a - (1 - s.JITTER_P)) < 0.06
    assert abs(a.mean() - b.mean()) < 0.02 and abs(a.std() - b.std()) < 0.12 * b.std()
    assert abs(a.min() - b.min()) < 0.05 and abs(a.max() - b.max()) < 0.05
