"""In-graph contrast normalisation against OpenCV (lit_vision.contrast)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from lit_vision.contrast import clahe, clahe_channel, lab_to_rgb, rgb_to_lab


def photos(n: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    """Smooth colour images with a dark and a bright region and some noise (uint8 NHWC)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    out = []
    for _ in range(n):
        base = rng.uniform(0.05, 0.6) + rng.uniform(-0.4, 0.4) * xx + rng.uniform(-0.3, 0.3) * yy
        colour = rng.uniform(0.5, 1.0, 3)
        img = base[..., None] * colour + rng.normal(0, 0.03, (h, w, 3))
        out.append((np.clip(img, 0, 1) * 255).astype(np.uint8))
    return np.stack(out)


@pytest.mark.parametrize(("h", "w", "grid"), [(32, 32, 4), (30, 27, 4), (64, 48, 8)])
def test_clahe_channel_matches_opencv(h: int, w: int, grid: int) -> None:
    gray = photos(6, h, w)[..., 1]
    # Without clipping, CLAHE is tile-wise equalisation blended between tile centres: OpenCV's
    # result to its rounding of the tables, on padded and unpadded sizes alike.
    op = cv2.createCLAHE(clipLimit=1000.0, tileGridSize=(grid, grid))
    expected = np.stack([op.apply(g) for g in gray]).astype(np.float64)
    got = clahe_channel(torch.from_numpy(gray).double(), grid, 1000.0).numpy()
    assert np.abs(got - expected).max() < 1.0
    assert not np.array_equal(expected, gray)  # CLAHE did change the images
    # With clipping, OpenCV hands the excess out in whole counts, front-loaded on the low levels;
    # we spread it evenly (continuous), which moves the tables by a count or so.
    op = cv2.createCLAHE(clipLimit=2.0, tileGridSize=(grid, grid))
    expected = np.stack([op.apply(g) for g in gray]).astype(np.float64)
    diff = np.abs(clahe_channel(torch.from_numpy(gray).double(), grid, 2.0).numpy() - expected)
    assert diff.mean() < 6 and np.percentile(diff, 99) < 16, (diff.mean(), diff.max())


def test_clahe_is_continuous_in_the_pixel_values() -> None:
    # A pixel on either side of a level boundary (as two runtimes' last bits may put it) moves
    # the output by about as much, never by a level: the export's parity rests on this.
    base = torch.from_numpy(photos(4, 32, 32, seed=3)[..., 1]).double() + 0.5
    below, above = clahe_channel(base - 1e-4), clahe_channel(base + 1e-4)
    assert (below - above).abs().max() < 0.05
    x = torch.from_numpy(photos(4, 32, 32, seed=4)).permute(0, 3, 1, 2).float() / 255
    moved = (x + torch.randn(x.shape, generator=torch.Generator().manual_seed(0)) * 1e-6).clamp(
        0, 1
    )
    assert (clahe(moved) - clahe(x)).abs().max() < 1e-3


def test_clahe_of_rgb_follows_opencvs_lab_recipe() -> None:
    images = photos(8, 32, 32, seed=1)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    # OpenCV's 8-bit Lab is fixed point: its L differs from the exact one by a level on some
    # pixels, and CLAHE amplifies such steps in flat tiles. So OpenCV equalises our L here.
    lightness = torch.round(rgb_to_lab(x)[:, 0] * 2.55).clamp(0, 255).numpy().astype(np.uint8)
    op = cv2.createCLAHE(clipLimit=2.0, tileGridSize=(4, 4))
    expected = []
    for img, lum in zip(images, lightness, strict=True):
        lab = cv2.cvtColor(img, cv2.COLOR_RGB2LAB)
        lab[..., 0] = op.apply(lum)
        expected.append(cv2.cvtColor(lab, cv2.COLOR_LAB2RGB))
    got = (clahe(x) * 255).permute(0, 2, 3, 1).numpy()
    diff = np.abs(got - np.stack(expected))
    assert diff.mean() < 6 and np.percentile(diff, 99) < 20, (diff.mean(), diff.max())
    assert np.abs(got - images).mean() > 5 * diff.mean()  # equalised, far more than it differs
    assert 0 <= got.min() <= got.max() <= 255


def test_lab_round_trip_and_lightness() -> None:
    x = torch.from_numpy(photos(4, 16, 16, seed=2)).permute(0, 3, 1, 2).float() / 255
    torch.testing.assert_close(lab_to_rgb(rgb_to_lab(x)), x, atol=1e-4, rtol=0)
    lab = rgb_to_lab(x)
    expected = np.stack(
        [cv2.cvtColor(img, cv2.COLOR_RGB2LAB)[..., 0] for img in photos(4, 16, 16, seed=2)]
    )
    assert np.abs(lab[:, 0].numpy() * 2.55 - expected).max() <= 1.5  # fixed point in OpenCV
    white = rgb_to_lab(torch.ones(1, 3, 2, 2))
    torch.testing.assert_close(white[:, 0], torch.full((1, 2, 2), 100.0), atol=1e-3, rtol=0)
